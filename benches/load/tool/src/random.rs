//! Cheap, well-spread random numbers for pacing and churn (no crate needed): splitmix64
//! over a process-wide counter. Not for anything but spreading streams apart in time.

use std::sync::atomic::{AtomicU64, Ordering};

/// A number in [0, 1), different on every call.
pub fn unit() -> f64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut z = COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// A number between `mean / 2` and `3 * mean / 2`: the mean is kept, and streams that
/// start together drift apart instead of ending in the same second.
pub fn around(mean: f64) -> f64 {
    mean * (0.5 + unit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_range_and_spread() {
        let values: Vec<f64> = (0..10_000).map(|_| around(10.0)).collect();
        assert!(values.iter().all(|v| (5.0..15.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((mean - 10.0).abs() < 0.2, "mean {mean}");
        assert!(values.iter().any(|v| *v < 6.0) && values.iter().any(|v| *v > 14.0));
    }
}
