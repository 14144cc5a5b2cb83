//! Back-off between retries: the one place where a delay doubles.
//!
//! Every retry loop in Berth (watch relists, leader following, joins,
//! replication to an unreachable peer, pods that do not fit, crash loops)
//! waits `initial * 2^failures`, capped at `max`. Delays are jittered by
//! default, taking a random part of up to half of each delay off: after a
//! failover every agent and client retries at once, and without jitter they
//! would keep retrying in lockstep, as a herd. Crash back-off, which users
//! read off `describe`, is kubelet's and has none.

#![forbid(unsafe_code)]

use std::time::Duration;

use rand::Rng;

/// Delays that double from `initial` to `max`, then stay at `max`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    /// The largest fraction of a delay taken off at random, in [0, 1].
    jitter: f64,
    failures: u32,
}

impl Backoff {
    /// Jittered delays from `initial` doubling to `max`.
    pub const fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            jitter: 0.5,
            failures: 0,
        }
    }

    /// The same delays without jitter: for delays users see and expect
    /// exactly (a container's crash back-off), or that one caller alone
    /// waits out.
    pub const fn exact(self) -> Self {
        Self {
            jitter: 0.0,
            ..self
        }
    }

    /// Failures counted so far (since the last `reset`).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The longest delay after `failures` failures in a row, before jitter.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let factor = 1u32.checked_shl(failures.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The delay after `failures` failures in a row, jittered.
    pub fn delay(&self, failures: u32) -> Duration {
        let ceiling = self.ceiling(failures);
        if self.jitter <= 0.0 {
            return ceiling;
        }
        let cut = rand::rng().random_range(0.0..=self.jitter);
        ceiling.mul_f64(1.0 - cut)
    }

    /// Counts a failure and returns the delay to wait before the next try.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.delay(self.failures);
        self.failures = self.failures.saturating_add(1);
        d
    }

    /// Counts a failure and waits its delay.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.next_delay()).await;
    }

    /// After a success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// The delays of consecutive failures, for APIs that take an iterator
/// (openraft's replication back-off).
impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn exact_delays_double_up_to_the_cap_and_stay_there() {
        let b = Backoff::new(10 * MS, 300 * MS).exact();
        let delays: Vec<_> = b.take(8).map(|d| d.as_millis()).collect();
        assert_eq!(delays, [10, 20, 40, 80, 160, 300, 300, 300]);
    }

    #[test]
    fn jittered_delays_stay_between_half_and_the_whole_delay_and_vary() {
        let b = Backoff::new(100 * MS, 5_000 * MS);
        let mut seen = std::collections::HashSet::new();
        for failures in 0..10 {
            let ceiling = b.ceiling(failures);
            for _ in 0..50 {
                let d = b.delay(failures);
                assert!(d <= ceiling && d >= ceiling / 2, "{d:?} vs {ceiling:?}");
                seen.insert(d);
            }
        }
        assert!(
            seen.len() > 100,
            "jitter should spread delays: {}",
            seen.len()
        );
    }

    #[test]
    fn reset_starts_over_and_huge_failure_counts_do_not_overflow() {
        let mut b = Backoff::new(MS, Duration::from_secs(1)).exact();
        for _ in 0..100 {
            b.next_delay();
        }
        assert_eq!(b.failures(), 100);
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(1));
        b.reset();
        assert_eq!(b.next_delay(), MS);
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_the_delay_and_counts_the_failure() {
        let mut b = Backoff::new(Duration::from_secs(2), Duration::from_secs(8)).exact();
        let start = tokio::time::Instant::now();
        b.wait().await;
        b.wait().await;
        assert_eq!(start.elapsed(), Duration::from_secs(6));
        assert_eq!(b.failures(), 2);
    }
}
