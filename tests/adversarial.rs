//! Attacks and abuse, on real sockets: one test per hardening defect, so each stays
//! fixed. Connection-level abuse (deadlines, the admin listener, reloads under
//! pressure) lives in `connections`; requests and upstreams that try to mislead the
//! gateway (client faults, header games, path confusion) in `requests`; streams that
//! try to outgrow their bounds in `streams`.

mod support;

#[path = "adversarial/connections.rs"]
mod connections;
#[path = "adversarial/requests.rs"]
mod requests;
#[path = "adversarial/streams.rs"]
mod streams;
