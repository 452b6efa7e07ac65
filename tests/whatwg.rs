//! WHATWG "Interpreting an event stream" edge cases, one named test each, through the public API.

mod framing;

use bytes::Bytes;
use framing::{frame_chunks, frame_whole, reference_parse, MAX};
use sse_gateway::sse::{Event, FrameError, Framer, RawEvent};

/// (event type, data, id) of an event, owned.
type View = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);

fn views(framed: &[Bytes]) -> Vec<View> {
    framed
        .iter()
        .map(|bytes| {
            let view = Event::new(bytes);
            (
                view.event_type().map(<[u8]>::to_vec),
                view.data().map(std::borrow::Cow::into_owned),
                view.id().map(<[u8]>::to_vec),
            )
        })
        .collect()
}

fn one(input: &[u8]) -> RawEvent {
    let mut framer = Framer::new(MAX);
    framer.push(Bytes::copy_from_slice(input));
    let event = framer.next_event().expect("not oversize");
    event.expect("one complete event")
}

#[test]
fn cr_only_stream() {
    let framed = frame_whole(b"event: a\rdata: 1\r\rdata: 2\rdata: 3\r\r");
    assert_eq!(
        framed.events,
        vec![&b"event: a\rdata: 1\r\r"[..], &b"data: 2\rdata: 3\r\r"[..]]
    );
    let got = views(&framed.events);
    assert_eq!(got[0], (Some(b"a".to_vec()), Some(b"1".to_vec()), None));
    assert_eq!(got[1], (None, Some(b"2\n3".to_vec()), None));
}

#[test]
fn crlf_split_across_reads() {
    // The CR ends one read, its LF starts the next: one line end, not a blank line.
    let framed = frame_chunks([&b"data: a\r"[..], b"\ndata: b\r", b"\n\r", b"\n"], MAX);
    assert_eq!(framed.events, vec![&b"data: a\r\ndata: b\r\n\r"[..]]);
    assert_eq!(views(&framed.events)[0].1, Some(b"a\nb".to_vec()));
}

#[test]
fn crlf_blank_line_is_emitted_without_waiting_for_its_lf() {
    let mut framer = Framer::new(MAX);
    framer.push(Bytes::from_static(b"data: a\r\n\r"));
    let event = framer
        .next_event()
        .expect("not oversize")
        .expect("complete at the CR");
    assert_eq!(event.as_bytes(), &b"data: a\r\n\r"[..]);
    framer.push(Bytes::from_static(b"\ndata: b\r\n\r\n"));
    let event = framer
        .next_event()
        .expect("not oversize")
        .expect("next event");
    assert_eq!(event.as_bytes(), &b"data: b\r\n\r"[..]);
    assert_eq!(framer.next_event(), Ok(None));
    assert_eq!(framer.finish(), None);
}

#[test]
fn bom_after_empty_first_read() {
    let framed = frame_chunks([&b""[..], b"\xEF\xBB\xBF", b"data: x\n\n"], MAX);
    assert_eq!(framed.events, vec![&b"data: x\n\n"[..]]);
}

#[test]
fn bom_split_across_reads() {
    let framed = frame_chunks([&b"\xEF"[..], b"", b"\xBB", b"\xBFdata: x\n\n"], MAX);
    assert_eq!(framed.events, vec![&b"data: x\n\n"[..]]);
}

#[test]
fn only_one_leading_bom_is_removed() {
    let framed = frame_whole(b"\xEF\xBB\xBF\xEF\xBB\xBFdata: x\n\n");
    assert_eq!(framed.events, vec![&b"\xEF\xBB\xBFdata: x\n\n"[..]]);
    assert!(!Event::new(&framed.events[0]).has_data());
}

#[test]
fn bom_later_in_the_stream_is_content() {
    let framed = frame_whole(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n");
    assert_eq!(framed.events[1], &b"\xEF\xBB\xBFdata: b\n\n"[..]);
}

#[test]
fn data_without_colon_is_an_empty_data_line() {
    let event = one(b"data\n\n");
    assert!(event.has_data());
    assert_eq!(event.view().data().as_deref(), Some(&b""[..]));
    // A client dispatches it with empty data.
    assert_eq!(reference_parse(b"data\n\n", false)[0].data, b"");
}

#[test]
fn data_with_space_after_colon() {
    assert_eq!(
        one(b"data: x\n\n").view().data().as_deref(),
        Some(&b"x"[..])
    );
    // Only one space is removed.
    assert_eq!(
        one(b"data:  x\n\n").view().data().as_deref(),
        Some(&b" x"[..])
    );
}

#[test]
fn data_without_space_after_colon() {
    assert_eq!(one(b"data:x\n\n").view().data().as_deref(), Some(&b"x"[..]));
}

#[test]
fn multi_line_data_is_joined_with_lf() {
    let event = one(b"data: a\ndata:\ndata: c\n\n");
    assert_eq!(event.view().data().as_deref(), Some(&b"a\n\nc"[..]));
}

#[test]
fn comments_are_not_fields() {
    let event = one(b": data: not data\n:\n\n");
    assert!(!event.has_data());
    assert_eq!(event.view().fields().count(), 0);
    assert_eq!(event.view().lines().count(), 2);
}

#[test]
fn field_names_are_case_sensitive() {
    let event = one(b"Data: x\nEVENT: y\n\n");
    assert!(!event.has_data());
    assert_eq!(event.view().event_type(), None);
}

#[test]
fn id_with_nul_is_ignored() {
    assert_eq!(one(b"id: a\0b\ndata\n\n").view().id(), None);
    assert_eq!(
        one(b"id: 1\nid: 2\0\ndata\n\n").view().id(),
        Some(&b"1"[..])
    );
    assert_eq!(one(b"id\ndata\n\n").view().id(), Some(&b""[..]));
}

#[test]
fn bad_retry_is_ignored() {
    assert_eq!(one(b"retry: 10s\n\n").view().retry(), None);
    assert_eq!(one(b"retry: -1\n\n").view().retry(), None);
    assert_eq!(
        one(b"retry: 250\nretry: soon\n\n").view().retry(),
        Some(250)
    );
    assert_eq!(one(b"retry:250\n\n").view().retry(), Some(250));
}

#[test]
fn final_event_without_blank_line_at_eof() {
    let framed = frame_whole(b"data: a\n\ndata: b");
    assert_eq!(
        framed.events,
        vec![&b"data: a\n\n"[..], &b"data: b\n\n"[..]]
    );
    let framed = frame_whole(b"data: a\n\ndata: b\n");
    assert_eq!(framed.events[1], &b"data: b\n\n"[..]);
    let framed = frame_whole(b"data: a\n\ndata: b\r");
    assert_eq!(framed.events[1], &b"data: b\r\n\n"[..]);
    assert_eq!(views(&framed.events)[1].1, Some(b"b".to_vec()));
}

#[test]
fn trailing_blank_lines_are_no_tail() {
    assert_eq!(frame_whole(b"data: a\n\n\n\r\n\r").events.len(), 1);
    assert!(frame_whole(b"").events.is_empty());
}

#[test]
fn blank_lines_between_events_are_skipped() {
    let framed = frame_whole(b"\n\r\n\rdata: a\n\n\n\ndata: b\n\n");
    assert_eq!(
        framed.events,
        vec![&b"data: a\n\n"[..], &b"data: b\n\n"[..]]
    );
}

#[test]
fn oversize_event() {
    let event = b"data: 0123456789\n\n"; // 18 bytes
    assert_eq!(frame_chunks([&event[..]], 18).error, None);
    let whole = frame_chunks([&event[..]], 17);
    assert_eq!(whole.error, Some(FrameError::Oversize { limit: 17 }));
    let split = frame_chunks(event.chunks(3), 17);
    assert_eq!(split.error, Some(FrameError::Oversize { limit: 17 }));
    // An incomplete event is refused as soon as it is too long, before its end arrives.
    let endless = frame_chunks([&b"data: "[..], &[b'x'; 64]], 32);
    assert_eq!(endless.error, Some(FrameError::Oversize { limit: 32 }));
}

#[test]
fn events_before_an_oversize_event_are_delivered() {
    let framed = frame_chunks(
        [&b"data: ok\n\ndata: far too long for the limit\n\n"[..]],
        16,
    );
    assert_eq!(framed.events, vec![&b"data: ok\n\n"[..]]);
    assert_eq!(framed.error, Some(FrameError::Oversize { limit: 16 }));
}

#[test]
fn is_lf_only_tells_line_ends() {
    assert!(one(b"data: a\n\n").is_lf_only());
    assert!(!one(b"data: a\r\n\r\n").is_lf_only());
    assert!(!one(b"data: a\r\r").is_lf_only());
}
