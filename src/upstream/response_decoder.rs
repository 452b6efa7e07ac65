//! An HTTP/1.1 response read from bytes: the head, then the body's framing (chunked,
//! `Content-Length` or read to the connection's close), with no I/O of its own.
//!
//! Why not hyper's client here: an event stream that waits for its next token holds
//! hyper's per-connection read and write buffers and its dispatch channel the whole
//! time, several pages per open stream. This decoder keeps nothing between reads but
//! a few counters: the caller owns the bytes, each body piece is split off them with
//! no copy (the chunks of one read joined in place into one piece), and once a read is
//! decoded the caller's buffer can be empty and freed.
//!
//! The head is parsed by `httparse`, the parser hyper itself uses (chunk sizes too), so
//! what this module decides is only what RFC 9112 section 6 says a response's body is.

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Version};

/// The most header fields a response head may have.
const MAX_HEADERS: usize = 100;

/// The largest response head (status line and header fields) read; hyper's default
/// limit is the same order.
pub const MAX_HEAD_SIZE: usize = 64 * 1024;

/// The largest chunk-size line or trailer section read, so a peer cannot grow the
/// buffer without sending body bytes.
const MAX_LINE: usize = 4 * 1024;

/// A response's status line and header fields.
#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
}

/// What [`ResponseDecoder::decode`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// Body bytes, framing removed; never empty.
    Data(Bytes),
    /// The body is complete; nothing more will be decoded.
    End,
}

/// Why the bytes are no HTTP/1.1 response the gateway can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("invalid response head: {0}")]
    Head(&'static str),
    #[error("response head larger than {MAX_HEAD_SIZE} bytes")]
    HeadTooLarge,
    #[error("invalid Content-Length")]
    ContentLength,
    #[error("invalid chunk size line")]
    ChunkSize,
    #[error("missing CRLF after a chunk's data")]
    ChunkEnd,
    #[error("chunk-size line or trailers longer than {MAX_LINE} bytes")]
    LineTooLong,
    /// The connection closed before the body's framing said it was complete.
    #[error("the connection closed {0}")]
    Incomplete(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Head,
    /// `Content-Length`: bytes still to come.
    Length(u64),
    /// Chunked: before a chunk-size line.
    ChunkSize,
    /// Chunked: data bytes of the current chunk still to come.
    ChunkData(u64),
    /// Chunked: the CRLF after a chunk's data.
    ChunkDataEnd,
    /// Chunked: after the last chunk, until the empty line that ends the trailers;
    /// the trailer bytes read so far, bounded as a line is (a peer could send trailer
    /// fields without end).
    Trailers(usize),
    /// Read until the connection closes.
    UntilClose,
    Done,
}

/// One response's decoding, from its first byte to the end of its body.
#[derive(Debug)]
pub struct ResponseDecoder {
    state: State,
    /// The request was `HEAD`: a response to it has no body, whatever its headers say.
    head_request: bool,
}

impl ResponseDecoder {
    /// A decoder for the response to a request; `head_request` when it was `HEAD`.
    pub fn new(head_request: bool) -> ResponseDecoder {
        ResponseDecoder {
            state: State::Head,
            head_request,
        }
    }

    /// The final response's head, once `buf` holds all of it (the head's bytes are
    /// taken from `buf`, and interim `1xx` heads before it, `100 Continue`,
    /// `102 Processing`, `103 Early Hints` and any other, are skipped); `Ok(None)` when
    /// more bytes are needed. A `101` is returned as the head, for the caller to
    /// refuse.
    pub fn decode_head(&mut self, buf: &mut BytesMut) -> Result<Option<Head>, DecodeError> {
        debug_assert_eq!(self.state, State::Head, "one head per response");
        loop {
            let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
            let mut response = httparse::Response::new(&mut fields);
            let parsed = response.parse(buf).map_err(|error| match error {
                httparse::Error::TooManyHeaders => DecodeError::Head("too many header fields"),
                httparse::Error::Status => DecodeError::Head("invalid status code"),
                httparse::Error::Version => DecodeError::Head("not HTTP/1.x"),
                _ => DecodeError::Head("malformed status line or header field"),
            })?;
            let len = match parsed {
                httparse::Status::Complete(len) => len,
                httparse::Status::Partial if buf.len() > MAX_HEAD_SIZE => {
                    return Err(DecodeError::HeadTooLarge)
                }
                httparse::Status::Partial => return Ok(None),
            };
            if len > MAX_HEAD_SIZE {
                return Err(DecodeError::HeadTooLarge);
            }
            let code = response.code.unwrap_or_default();
            let status =
                StatusCode::from_u16(code).map_err(|_| DecodeError::Head("invalid status code"))?;
            let version = match response.version {
                Some(0) => Version::HTTP_10,
                _ => Version::HTTP_11,
            };
            let mut headers = HeaderMap::with_capacity(response.headers.len());
            for field in response.headers.iter() {
                let name = HeaderName::from_bytes(field.name.as_bytes())
                    .map_err(|_| DecodeError::Head("invalid header name"))?;
                let value = HeaderValue::from_bytes(field.value)
                    .map_err(|_| DecodeError::Head("invalid header value"))?;
                headers.append(name, value);
            }
            buf.advance(len);
            if (100..200).contains(&code) && code != 101 {
                // Interim answers (100, 102, 103, and any other the client must skip,
                // RFC 9110 section 15.2); the final one follows on the same
                // connection. A 101 switches protocols: it is final.
                continue;
            }
            self.state = self.body_state(status, version, &headers)?;
            return Ok(Some(Head {
                status,
                version,
                headers,
            }));
        }
    }

    /// What RFC 9112 section 6.3 says the body of this response is.
    fn body_state(
        &self,
        status: StatusCode,
        version: Version,
        headers: &HeaderMap,
    ) -> Result<State, DecodeError> {
        if self.head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED
        {
            return Ok(State::Done);
        }
        if headers.contains_key(TRANSFER_ENCODING) && version == Version::HTTP_11 {
            // Transfer-Encoding wins over Content-Length; the body is chunked only if
            // chunked is the final coding, and then read to the close otherwise.
            let last = crate::header_list::items(headers, TRANSFER_ENCODING).last();
            return Ok(match last {
                Some(coding) if coding.eq_ignore_ascii_case("chunked") => State::ChunkSize,
                _ => State::UntilClose,
            });
        }
        let mut length = None;
        for value in headers.get_all(CONTENT_LENGTH) {
            for item in value.as_bytes().split(|b| *b == b',') {
                let item = item.trim_ascii();
                if item.is_empty() || !item.iter().all(u8::is_ascii_digit) {
                    return Err(DecodeError::ContentLength);
                }
                let n: u64 = std::str::from_utf8(item)
                    .ok()
                    .and_then(|digits| digits.parse().ok())
                    .ok_or(DecodeError::ContentLength)?;
                if length.is_some_and(|seen| seen != n) {
                    return Err(DecodeError::ContentLength);
                }
                length = Some(n);
            }
        }
        Ok(match length {
            Some(0) => State::Done,
            Some(n) => State::Length(n),
            None => State::UntilClose,
        })
    }

    /// The next piece of the body from `buf` (taken from it); `Ok(None)` when more
    /// bytes are needed. Call after [`ResponseDecoder::decode_head`] returned the head.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Decoded>, DecodeError> {
        loop {
            match self.state {
                State::Head => return Ok(None),
                State::Done => return Ok(Some(Decoded::End)),
                State::UntilClose => {
                    return Ok((!buf.is_empty()).then(|| Decoded::Data(buf.split().freeze())));
                }
                State::Length(remaining) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = take_len(remaining, buf.len());
                    self.state = match remaining - take as u64 {
                        0 => State::Done,
                        left => State::Length(left),
                    };
                    return Ok(Some(Decoded::Data(buf.split_to(take).freeze())));
                }
                // A token stream's read ends where its chunk does: the next size line
                // is still to come, and asking the parser about no bytes costs as much
                // as a parse.
                State::ChunkSize if buf.is_empty() => return Ok(None),
                State::ChunkSize => match httparse::parse_chunk_size(buf) {
                    Ok(httparse::Status::Complete((len, 0))) => {
                        buf.advance(len);
                        self.state = State::Trailers(0);
                    }
                    Ok(httparse::Status::Complete((len, size))) => {
                        buf.advance(len);
                        self.state = State::ChunkData(size);
                    }
                    Ok(httparse::Status::Partial) if buf.len() > MAX_LINE => {
                        return Err(DecodeError::LineTooLong)
                    }
                    Ok(httparse::Status::Partial) => return Ok(None),
                    Err(_) => return Err(DecodeError::ChunkSize),
                },
                State::ChunkData(remaining) => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = take_len(remaining, buf.len());
                    self.state = after_chunk_data(remaining, take);
                    let (len, read) = self.join_chunks(buf, take);
                    let data = buf.split_to(len).freeze();
                    buf.advance(read - len);
                    return Ok(Some(Decoded::Data(data)));
                }
                State::ChunkDataEnd => match buf.first() {
                    None => return Ok(None),
                    Some(b'\r') if buf.len() < 2 => return Ok(None),
                    Some(b'\r') if buf[1] == b'\n' => {
                        buf.advance(2);
                        self.state = State::ChunkSize;
                    }
                    _ => return Err(DecodeError::ChunkEnd),
                },
                State::Trailers(read) => {
                    // Trailer fields are read past and dropped: an event stream has no
                    // use for them. The section ends at an empty line.
                    let Some(end) = line_end(buf) else {
                        if read + buf.len() > MAX_LINE {
                            return Err(DecodeError::LineTooLong);
                        }
                        return Ok(None);
                    };
                    buf.advance(end + 2);
                    let read = read + end + 2;
                    if end == 0 {
                        self.state = State::Done;
                    } else if read > MAX_LINE {
                        return Err(DecodeError::LineTooLong);
                    } else {
                        self.state = State::Trailers(read);
                    }
                }
            }
        }
    }

    /// Joins the chunks that follow the `len` data bytes at the start of `buf`, as far
    /// as their framing is whole in `buf`, by moving their data back over the framing:
    /// a read that holds several chunks (a token stream writes one per event) becomes
    /// one body piece, and its events leave as one frame with one chunk header instead
    /// of one each. The bytes move within the read; nothing is allocated.
    ///
    /// Returns how long the joined data is and how much of `buf` it used up. A chunk
    /// is joined only with at least one of its data bytes; anything else (the last
    /// chunk, a cut or malformed size line or CRLF) is left to the next [`decode`]
    /// call, which reports it after this piece.
    ///
    /// [`decode`]: ResponseDecoder::decode
    fn join_chunks(&mut self, buf: &mut [u8], mut len: usize) -> (usize, usize) {
        let mut read = len;
        while self.state == State::ChunkDataEnd {
            let Some(after_crlf) = buf[read..]
                .strip_prefix(b"\r\n")
                .filter(|rest| !rest.is_empty())
            else {
                break;
            };
            let Ok(httparse::Status::Complete((line, size))) =
                httparse::parse_chunk_size(after_crlf)
            else {
                break;
            };
            let data_at = read + 2 + line;
            if size == 0 || data_at == buf.len() {
                break;
            }
            let take = take_len(size, buf.len() - data_at);
            buf.copy_within(data_at..data_at + take, len);
            len += take;
            read = data_at + take;
            self.state = after_chunk_data(size, take);
        }
        (len, read)
    }

    /// The connection closed: the end of a body read to the close, or an error for a
    /// body whose framing still expected bytes.
    pub fn decode_eof(&mut self) -> Result<Decoded, DecodeError> {
        match self.state {
            State::UntilClose | State::Done => {
                self.state = State::Done;
                Ok(Decoded::End)
            }
            State::Head => Err(DecodeError::Incomplete("before the response head")),
            State::Length(_) => Err(DecodeError::Incomplete(
                "before the Content-Length was read",
            )),
            State::ChunkSize | State::ChunkData(_) | State::ChunkDataEnd | State::Trailers(_) => {
                Err(DecodeError::Incomplete("before the last chunk"))
            }
        }
    }

    /// The body bytes still to come, when its length is known.
    pub fn remaining_length(&self) -> Option<u64> {
        match self.state {
            State::Length(remaining) => Some(remaining),
            State::Done => Some(0),
            _ => None,
        }
    }

    /// The body is complete: the connection holds nothing more of this response.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

/// The state once `take` of a chunk's `remaining` data bytes are read.
fn after_chunk_data(remaining: u64, take: usize) -> State {
    match remaining - take as u64 {
        0 => State::ChunkDataEnd,
        left => State::ChunkData(left),
    }
}

/// How many of `available` bytes belong to a body part with `remaining` bytes left.
fn take_len(remaining: u64, available: usize) -> usize {
    usize::try_from(remaining).map_or(available, |remaining| remaining.min(available))
}

/// Where the first CRLF in `buf` starts.
fn line_end(buf: &[u8]) -> Option<usize> {
    memchr::memmem::find(buf, b"\r\n")
}
