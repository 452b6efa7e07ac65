//! Stream supervision: the streaming body that drives framer -> pipeline -> downstream
//! frames, watches the clocks, and records exactly one outcome per stream.

mod outcome;

pub use outcome::Outcome;
