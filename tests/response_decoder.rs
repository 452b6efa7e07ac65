//! The streaming upstream leg's HTTP/1.1 response decoder on whole responses fed in
//! every split, and on each malformed case.

mod framing;

use bytes::BytesMut;
use framing::read_response::{read, Read};
use sse_gateway::upstream::response_decoder::{
    DecodeError, Decoded, ResponseDecoder, MAX_HEAD_SIZE,
};

/// The same read whatever the split: one byte at a time up to all at once.
fn read_every_split(wire: &[u8]) -> Read {
    let whole = read(wire, false, &mut std::iter::empty());
    for step in 1..wire.len() {
        let cut = read(wire, false, &mut std::iter::repeat(step));
        assert_eq!(cut, whole, "split every {step} bytes");
    }
    whole
}

fn ok(status: u16, body: &str) -> Read {
    Read {
        status: Some(status),
        body: body.as_bytes().to_vec(),
        end: Ok(()),
    }
}

#[test]
fn chunked_with_extensions_and_trailers() {
    let wire =
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n\
        7\r\ndata: a\r\n2;ext=1\r\n\n\n\r\n0\r\nX-Trailer: t\r\n\r\n";
    assert_eq!(read_every_split(wire), ok(200, "data: a\n\n"));
}

#[test]
fn content_length_and_bytes_after_it_are_not_the_body() {
    let wire = b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
    assert_eq!(read_every_split(wire), ok(500, "hello"));
    let repeated = b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nhi";
    assert_eq!(read_every_split(repeated), ok(200, "hi"));
}

#[test]
fn a_body_without_framing_is_read_to_the_close() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\ndata: x\n\n";
    assert_eq!(read_every_split(wire), ok(200, "data: x\n\n"));
    // A coding other than chunked last: read to the close, too.
    let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nzz";
    assert_eq!(read_every_split(gzip), ok(200, "zz"));
}

#[test]
fn transfer_encoding_wins_over_content_length() {
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
    assert_eq!(read_every_split(wire), ok(200, "hi"));
}

#[test]
fn interim_heads_are_skipped_and_bodiless_answers_end_at_once() {
    let wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert_eq!(read_every_split(wire), ok(200, "ok"));
    let no_content = b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n";
    assert_eq!(read_every_split(no_content), ok(204, ""));
    let to_head = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
    assert_eq!(read(to_head, true, &mut std::iter::empty()), ok(200, ""));
    // A 101 is returned for the caller to refuse; it has no body.
    let switching = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n";
    assert_eq!(read_every_split(switching), ok(101, ""));
}

#[test]
fn a_close_before_the_framing_is_complete_is_an_error() {
    let cases: [(&[u8], &str); 4] = [
        (b"HTTP/1.1 200 OK\r\nContent-Le", "before the response head"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort",
            "before the Content-Length was read",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nda",
            "before the last chunk",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n",
            "before the last chunk",
        ),
    ];
    for (wire, when) in cases {
        let read = read_every_split(wire);
        assert_eq!(read.end, Err(DecodeError::Incomplete(when)), "{read:?}");
    }
}

#[test]
fn malformed_responses_are_named() {
    let cases: [(&[u8], DecodeError); 7] = [
        (
            b"SSH-2.0-OpenSSH\r\n\r\n",
            DecodeError::Head("not HTTP/1.x"),
        ),
        (
            b"HTTP/1.1 2000 OK\r\n\r\n",
            DecodeError::Head("invalid status code"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
            DecodeError::Head("malformed status line or header field"),
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx",
            DecodeError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\nx",
            DecodeError::ContentLength,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            DecodeError::ChunkSize,
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhiX\r\n",
            DecodeError::ChunkEnd,
        ),
    ];
    for (wire, error) in cases {
        assert_eq!(
            read_every_split(wire).end,
            Err(error),
            "{}",
            String::from_utf8_lossy(wire)
        );
    }
}

#[test]
fn unbounded_heads_and_lines_are_refused() {
    let mut head = b"HTTP/1.1 200 OK\r\nX-Padding: ".to_vec();
    head.resize(MAX_HEAD_SIZE + 10, b'x');
    assert_eq!(
        read(&head, false, &mut std::iter::repeat(4096)).end,
        Err(DecodeError::HeadTooLarge)
    );
    let mut size_line = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1;".to_vec();
    size_line.resize(size_line.len() + 5000, b'x');
    assert_eq!(
        read(&size_line, false, &mut std::iter::repeat(1024)).end,
        Err(DecodeError::LineTooLong)
    );
    // Trailer fields each short, but without end: the section is bounded as a line.
    let mut trailers =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n".to_vec();
    for _ in 0..1000 {
        trailers.extend_from_slice(b"X-T: t\r\n");
    }
    let read_trailers = read(&trailers, false, &mut std::iter::repeat(512));
    assert_eq!(read_trailers.body, b"hi");
    assert_eq!(read_trailers.end, Err(DecodeError::LineTooLong));
}

#[test]
fn data_is_split_off_the_read_with_no_copy() {
    let mut decoder = ResponseDecoder::new(false);
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nabcd"[..]);
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    decoder.decode_head(&mut buf).unwrap().unwrap();
    let Some(Decoded::Data(data)) = decoder.decode(&mut buf).unwrap() else {
        panic!("data")
    };
    let at = data.as_ptr() as usize;
    assert!(at >= start && at + data.len() <= end, "a slice of the read");
    assert_eq!(decoder.decode(&mut buf).unwrap(), Some(Decoded::End));
    assert!(decoder.is_done() && buf.is_empty());
}

/// The data piece `decoder` gives next from `buf`.
fn next_piece(decoder: &mut ResponseDecoder, buf: &mut BytesMut) -> bytes::Bytes {
    match decoder.decode(buf) {
        Ok(Some(Decoded::Data(data))) => data,
        other => panic!("expected data, got {other:?}"),
    }
}

#[test]
fn the_chunks_of_one_read_leave_as_one_piece_of_that_read() {
    let mut decoder = ResponseDecoder::new(false);
    let mut buf = BytesMut::from(
        &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
        9\r\ndata: a\n\n\r\n9;ext=1\r\ndata: b\n\n\r\n9\r\ndata: c"[..],
    );
    let start = buf.as_ptr() as usize;
    let end = start + buf.len();
    decoder.decode_head(&mut buf).unwrap().unwrap();
    // Two whole chunks and the start of a third: one piece, in the read's own memory.
    let data = next_piece(&mut decoder, &mut buf);
    assert_eq!(&data[..], b"data: a\n\ndata: b\n\ndata: c");
    let at = data.as_ptr() as usize;
    assert!(at >= start && at + data.len() <= end, "a slice of the read");
    assert!(buf.is_empty());
    // The third chunk's rest, then the next chunk, joined again; the last chunk ends.
    buf.extend_from_slice(b"\n\n\r\n3\r\nx\n\n\r\n0\r\n\r\n");
    assert_eq!(&next_piece(&mut decoder, &mut buf)[..], b"\n\nx\n\n");
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Decoded::End)));
}

#[test]
fn a_joined_piece_stops_before_what_is_cut_or_malformed() {
    let head = &b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"[..];
    // A size line cut in the read: the piece stops before it, and it is read whole
    // from the next read.
    let mut decoder = ResponseDecoder::new(false);
    let mut buf = BytesMut::from(&[head, b"2\r\nab\r\n2\r\ncd\r\n1"].concat()[..]);
    decoder.decode_head(&mut buf).unwrap().unwrap();
    assert_eq!(&next_piece(&mut decoder, &mut buf)[..], b"abcd");
    assert_eq!(decoder.decode(&mut buf), Ok(None));
    buf.extend_from_slice(b"0\r\n0123456789abcdef\r\n0\r\n\r\n");
    assert_eq!(&next_piece(&mut decoder, &mut buf)[..], b"0123456789abcdef");
    assert_eq!(decoder.decode(&mut buf), Ok(Some(Decoded::End)));
    // A chunk with no CRLF after its data: what came before is delivered, then the error.
    let mut decoder = ResponseDecoder::new(false);
    let mut buf = BytesMut::from(&[head, b"2\r\nab\r\n2\r\ncdXX2\r\nef\r\n"].concat()[..]);
    decoder.decode_head(&mut buf).unwrap().unwrap();
    assert_eq!(&next_piece(&mut decoder, &mut buf)[..], b"abcd");
    assert_eq!(decoder.decode(&mut buf), Err(DecodeError::ChunkEnd));
    // A malformed size line after a chunk: the same.
    let mut decoder = ResponseDecoder::new(false);
    let mut buf = BytesMut::from(&[head, b"2\r\nab\r\nzz\r\ncd\r\n"].concat()[..]);
    decoder.decode_head(&mut buf).unwrap().unwrap();
    assert_eq!(&next_piece(&mut decoder, &mut buf)[..], b"ab");
    assert_eq!(decoder.decode(&mut buf), Err(DecodeError::ChunkSize));
}
