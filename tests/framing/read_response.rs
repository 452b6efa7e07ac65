//! Reading one whole upstream response with the streaming leg's decoder, in reads of
//! given sizes, then the connection's close: what a caller sees. Shared by the decoder's
//! tests and its fuzz target, so both check the decoder as the gateway drives it.

use bytes::BytesMut;
use sse_gateway::upstream::response_decoder::{DecodeError, Decoded, ResponseDecoder};

/// The status of the final head, the body, and how the read ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Read {
    pub status: Option<u16>,
    pub body: Vec<u8>,
    pub end: Result<(), DecodeError>,
}

/// Feeds `wire` in reads of the sizes `sizes` gives (all the rest once it runs out),
/// then the close. Checks on the way: body pieces are never empty, never add up to
/// more than the input, and nothing is decoded after the end.
pub fn read(wire: &[u8], head_request: bool, sizes: &mut dyn Iterator<Item = usize>) -> Read {
    let mut decoder = ResponseDecoder::new(head_request);
    let mut buf = BytesMut::new();
    let mut rest = wire;
    let mut read = Read {
        status: None,
        body: Vec::new(),
        end: Ok(()),
    };
    loop {
        let decoded = if read.status.is_none() {
            match decoder.decode_head(&mut buf) {
                Ok(Some(head)) => {
                    read.status = Some(head.status.as_u16());
                    continue;
                }
                Ok(None) => Ok(None),
                Err(error) => Err(error),
            }
        } else {
            decoder.decode(&mut buf)
        };
        match decoded {
            Ok(Some(Decoded::Data(data))) => {
                assert!(!data.is_empty(), "an empty body piece");
                read.body.extend_from_slice(&data);
                assert!(read.body.len() <= wire.len(), "more body than input");
            }
            Ok(Some(Decoded::End)) => {
                assert!(decoder.is_done());
                assert_eq!(
                    decoder.decode(&mut buf),
                    Ok(Some(Decoded::End)),
                    "after the end"
                );
                return read;
            }
            Ok(None) if rest.is_empty() => {
                read.end = decoder.decode_eof().map(|_| ());
                return read;
            }
            Ok(None) => {
                let n = sizes.next().unwrap_or(rest.len()).clamp(1, rest.len());
                buf.extend_from_slice(&rest[..n]);
                rest = &rest[n..];
            }
            Err(error) => {
                read.end = Err(error);
                return read;
            }
        }
    }
}
