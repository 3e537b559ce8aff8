//! When a failed notification is tried again (SPEC §5): exponential backoff with jitter, never
//! more than the maximum interval apart.
//!
//! Pure Rust. The n-th consecutive failure waits `min * 2^(n-1)`, capped at `max`, scaled by a
//! jitter factor in [0.5, 1.0] so that notifications that failed together spread out instead of
//! hitting a recovering listener at the same instant.

use std::time::Duration;

/// The wait after `failures` consecutive failures (1 for the first), for a uniform random
/// `unit` in [0, 1).
pub fn backoff(failures: u32, min: Duration, max: Duration, unit: f64) -> Duration {
    let doublings = failures.saturating_sub(1);
    let base = if doublings >= 32 {
        max
    } else {
        min.saturating_mul(1 << doublings).min(max)
    };
    base.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0)).min(max)
}

/// A small xorshift generator for jitter: no cryptographic quality needed, no dependency.
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Jitter {
        Jitter(seed | 1)
    }

    /// A uniform value in [0, 1).
    pub fn next_unit(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(10);
    const MAX: Duration = Duration::from_secs(7200);

    #[test]
    fn backoff_doubles_from_the_minimum() {
        assert_eq!(backoff(1, MIN, MAX, 1.0), Duration::from_secs(10));
        assert_eq!(backoff(2, MIN, MAX, 1.0), Duration::from_secs(20));
        assert_eq!(backoff(5, MIN, MAX, 1.0), Duration::from_secs(160));
        assert_eq!(backoff(1, MIN, MAX, 0.0), Duration::from_secs(5));
    }

    #[test]
    fn backoff_never_exceeds_the_maximum() {
        for failures in [10, 11, 31, 32, 100, u32::MAX] {
            for unit in [0.0, 0.5, 0.999, 7.0] {
                assert!(backoff(failures, MIN, MAX, unit) <= MAX);
            }
        }
        assert_eq!(backoff(100, MIN, MAX, 1.0), MAX);
        assert!(backoff(100, MIN, MAX, 0.0) >= MAX / 2);
    }

    #[test]
    fn jitter_is_uniform_enough_and_in_range() {
        let mut jitter = Jitter::new(42);
        let values: Vec<f64> = (0..10_000).map(|_| jitter.next_unit()).collect();
        assert!(values.iter().all(|v| (0.0..1.0).contains(v)));
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }
}
