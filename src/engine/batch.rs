//! Batching: the events that are ready after one upstream read leave as one frame, so
//! hyper writes one chunk header and one `writev` entry per read instead of per event.
//!
//! Joining must not copy: an event no rule changed is a slice of the upstream chunk it
//! arrived in, and consecutive such events are adjacent in that chunk, so their run is
//! itself one slice of the chunk. Anything else (a rewritten event, an event that
//! straddled two reads, a gap left by a dropped event) starts a new frame instead.

use bytes::Bytes;

/// The output of one drain of the session, collected into one frame.
#[derive(Debug, Default)]
pub(super) struct Batch {
    /// The upstream chunk most recently handed to the framer, while events may still be
    /// sliced from it. Released once the framer needs more, so an idle stream does not
    /// keep a read buffer alive.
    chunk: Option<Bytes>,
    run: Option<Run>,
    /// With [`Batch::track_ends`]: where each event of a run of the chunk ends, from
    /// the run's start. Those events are the framer's, untouched: LF line ends, one
    /// blank line, at their end.
    ends: Vec<u32>,
    /// The ends of the frame [`Batch::take`] returned last.
    taken_ends: Vec<u32>,
    track_ends: bool,
}

#[derive(Debug)]
enum Run {
    /// `chunk[start..end]`.
    InChunk { start: usize, end: usize },
    /// One piece that is not a slice of `chunk`.
    Piece(Bytes),
}

impl Batch {
    /// Keep where each event of a frame ends, for [`Batch::taken_ends`]: a reader that
    /// needs the events of a frame then does not search for them again.
    pub(super) fn track_ends(&mut self) {
        self.track_ends = true;
    }

    /// Where the events of the frame [`Batch::take`] returned last end (exclusive
    /// offsets into it, in order); empty unless [`Batch::track_ends`] was called and
    /// the frame was a run of the chunk.
    pub(super) fn taken_ends(&self) -> &[u32] {
        &self.taken_ends
    }

    /// The frame taken last was sent on: its ends no longer describe anything.
    pub(super) fn forget_taken_ends(&mut self) {
        self.taken_ends.clear();
    }

    /// Events sliced from `chunk` may now join a run.
    pub(super) fn set_chunk(&mut self, chunk: &Bytes) {
        self.chunk = Some(chunk.clone());
    }

    /// Every event of the last chunk has been taken: let the chunk go.
    pub(super) fn release_chunk(&mut self) {
        if let (Some(chunk), Some(Run::InChunk { start, end })) = (self.chunk.take(), &self.run) {
            self.run = Some(Run::Piece(chunk.slice(*start..*end)));
        }
    }

    /// Appends `piece` when that needs no copy; otherwise hands it back, and the caller
    /// sends it after [`take`](Batch::take)'s frame.
    pub(super) fn push(&mut self, piece: Bytes) -> Result<(), Bytes> {
        let at = self.offset_in_chunk(&piece);
        let len = piece.len();
        let run_len = match (&mut self.run, at) {
            (None, Some(start)) => {
                self.run = Some(Run::InChunk {
                    start,
                    end: start + len,
                });
                len
            }
            // A piece a rule wrote may hold anything: no end is vouched for, and the
            // frame's reader finds its events itself.
            (None, None) => {
                self.run = Some(Run::Piece(piece));
                return Ok(());
            }
            (Some(Run::InChunk { start, end }), Some(at)) if at == *end => {
                *end += len;
                *end - *start
            }
            (Some(_), _) => return Err(piece),
        };
        if self.track_ends {
            self.ends.push(u32::try_from(run_len).unwrap_or(u32::MAX));
        }
        Ok(())
    }

    /// The collected frame, if anything was pushed; the batch is empty afterwards.
    pub(super) fn take(&mut self) -> Option<Bytes> {
        let frame = match self.run.take()? {
            Run::Piece(piece) => Some(piece),
            // `release_chunk` turns a run into a piece, so the chunk is here.
            Run::InChunk { start, end } => self.chunk.as_ref().map(|c| c.slice(start..end)),
        };
        if self.track_ends {
            // The ends go with the frame, or with nothing.
            std::mem::swap(&mut self.ends, &mut self.taken_ends);
            self.ends.clear();
            if frame.is_none() {
                self.taken_ends.clear();
            }
        }
        frame
    }

    /// Where `piece` starts inside `chunk`, if it lies wholly inside it. Bytes are
    /// immutable, so equal addresses mean equal contents: slicing `chunk` there gives
    /// exactly `piece`, whichever way `piece` was made.
    fn offset_in_chunk(&self, piece: &Bytes) -> Option<usize> {
        let chunk = self.chunk.as_ref()?;
        let base = chunk.as_ptr() as usize;
        let start = (piece.as_ptr() as usize).checked_sub(base)?;
        (!piece.is_empty() && start + piece.len() <= chunk.len()).then_some(start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk() -> Bytes {
        Bytes::from_static(b"data: a\n\ndata: b\n\n: ping\n\ndata: c\n\n")
    }

    #[test]
    fn adjacent_slices_of_the_chunk_join_into_one_slice() {
        let chunk = chunk();
        let mut batch = Batch::default();
        batch.set_chunk(&chunk);
        assert_eq!(batch.push(chunk.slice(0..9)), Ok(()));
        assert_eq!(batch.push(chunk.slice(9..18)), Ok(()));
        let frame = batch.take().expect("a frame");
        assert_eq!(frame, Bytes::from_static(b"data: a\n\ndata: b\n\n"));
        // The frame is the chunk's own memory, not a copy.
        assert_eq!(frame.as_ptr(), chunk.as_ptr());
        assert_eq!(batch.take(), None);
    }

    #[test]
    fn a_gap_or_a_foreign_piece_ends_the_run() {
        let chunk = chunk();
        let mut batch = Batch::default();
        batch.set_chunk(&chunk);
        batch.push(chunk.slice(0..9)).expect("first piece");
        // The ping (18..26) was dropped: "data: c" is not adjacent.
        let c = chunk.slice(26..35);
        assert_eq!(batch.push(c.clone()), Err(c));
        let rewritten = Bytes::from_static(b"data:x\n\n");
        assert_eq!(batch.push(rewritten.clone()), Err(rewritten.clone()));
        assert_eq!(batch.take(), Some(chunk.slice(0..9)));
        // A foreign piece can open a batch, but nothing joins it.
        batch.push(rewritten.clone()).expect("opens an empty batch");
        assert!(batch.push(chunk.slice(9..18)).is_err());
        assert_eq!(batch.take(), Some(rewritten));
    }

    #[test]
    fn tracked_ends_say_where_each_event_of_the_taken_frame_ends() {
        let chunk = chunk();
        let mut batch = Batch::default();
        batch.track_ends();
        batch.set_chunk(&chunk);
        batch.push(chunk.slice(0..9)).expect("first event");
        batch.push(chunk.slice(9..18)).expect("adjacent event");
        assert_eq!(batch.take(), Some(chunk.slice(0..18)));
        assert_eq!(batch.taken_ends(), [9, 18]);
        let rewritten = Bytes::from_static(b"data:x\n\n");
        batch.push(rewritten.clone()).expect("opens the batch");
        assert_eq!(batch.take(), Some(rewritten));
        assert!(
            batch.taken_ends().is_empty(),
            "a rule's piece is not vouched for"
        );
    }

    #[test]
    fn without_a_chunk_every_piece_stands_alone() {
        let chunk = chunk();
        let mut batch = Batch::default();
        batch.push(chunk.slice(0..9)).expect("opens the batch");
        assert!(batch.push(chunk.slice(9..18)).is_err());
        assert_eq!(batch.take(), Some(chunk.slice(0..9)));
    }

    #[test]
    fn releasing_the_chunk_keeps_the_run() {
        let chunk = chunk();
        let mut batch = Batch::default();
        batch.set_chunk(&chunk);
        batch.push(chunk.slice(0..9)).expect("first piece");
        batch.push(chunk.slice(9..18)).expect("adjacent piece");
        batch.release_chunk();
        assert_eq!(batch.take(), Some(chunk.slice(0..18)));
        // Nothing joins after the release.
        batch.push(chunk.slice(18..26)).expect("opens the batch");
        assert!(batch.push(chunk.slice(26..35)).is_err());
    }
}
