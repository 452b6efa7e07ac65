//! The clock both processes share: CLOCK_MONOTONIC in nanoseconds. `std::time::Instant`
//! reads the same clock on Linux but cannot be written into an event and read back by
//! another process, so the value is read with `clock_gettime` directly.

/// Nanoseconds of CLOCK_MONOTONIC (comparable between processes on this machine).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Clock ticks per second of `/proc/PID/stat`'s utime and stime.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100
    }
}
