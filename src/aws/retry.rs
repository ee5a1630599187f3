//! The one back-off policy of everything aws-jit retries by itself (on top of the AWS
//! SDK's own retries): the queue consumers' receive errors and messages
//! ([`crate::aws::consumer`]), the relay's Slack calls, Socket Mode's reconnects, and
//! the trust-policy worker's read-backs of a write IAM does not show yet. `backon`'s exponential
//! back-off with jitter: the first delay is `min`, each next one doubles up to `max`,
//! and every delay gets up to as much again at random (so `d ..< 2d`), which keeps
//! replicas and messages that failed together from coming back together.
//!
//! When the other side says how long to wait (AWS throttling, Slack's `Retry-After`),
//! that is a floor: the delay is the longer of the two.
use std::future::Future;
use std::time::Duration;

use backon::BackoffBuilder;
use tracing::warn;

/// How long to wait at least after AWS said it throttles: the SDK has already backed
/// off and retried by then, so the next try should not come soon.
pub const THROTTLED_FLOOR: Duration = Duration::from_secs(5);

/// A back-off policy: `min` doubling to `max`, with jitter (each delay `d ..< 2d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// `min` doubling to `max` (`max` is raised to `min` if below it).
    pub const fn new(min: Duration, max: Duration) -> Backoff {
        let max = if max.as_nanos() < min.as_nanos() {
            min
        } else {
            max
        };
        Backoff { min, max }
    }

    pub fn min(&self) -> Duration {
        self.min
    }

    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delays of one run of failures, for as long as they last.
    pub fn delays(&self) -> Delays {
        Delays {
            inner: backon::ExponentialBuilder::default()
                .with_min_delay(self.min)
                .with_max_delay(self.max)
                .with_jitter()
                .without_max_times()
                .build(),
            max: self.max,
        }
    }

    /// The delays of one run of failures, ending before they would add up to more
    /// than `total` (zero: none at all).
    pub fn delays_within(&self, total: Duration) -> impl Iterator<Item = Duration> + use<> {
        backon::ExponentialBuilder::default()
            .with_min_delay(self.min)
            .with_max_delay(self.max)
            .with_jitter()
            .without_max_times()
            .with_total_delay(Some(total))
            .build()
    }

    /// The delay after the `failures`-th failure in a row (1 for the first), e.g. of a
    /// message that failed on its `failures`-th receive.
    pub fn after(&self, failures: u32) -> Duration {
        let mut delays = self.delays();
        let n = usize::try_from(failures.max(1))
            .unwrap_or(usize::MAX)
            .min(64);
        let mut delay = self.min;
        for _ in 0..n {
            delay = delays.next_delay(None);
        }
        delay
    }
}

/// The delays of one run of failures.
pub struct Delays {
    inner: backon::ExponentialBackoff,
    max: Duration,
}

impl Delays {
    /// The next delay, at least `floor` (what the other side asked for, if it did).
    pub fn next_delay(&mut self, floor: Option<Duration>) -> Duration {
        // The builder has no limit on tries: `None` never comes, `max` stands in.
        let delay = self.inner.next().unwrap_or(self.max);
        floor.map_or(delay, |floor| delay.max(floor))
    }
}

/// Without a floor, for as long as it takes (never ends).
impl Iterator for Delays {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay(None))
    }
}

/// [`THROTTLED_FLOOR`] when an AWS error says it throttles.
pub fn throttle_floor(code: Option<&str>) -> Option<Duration> {
    code.filter(|c| is_throttling(c)).map(|_| THROTTLED_FLOOR)
}

/// AWS error codes that mean "too many requests, slow down".
pub fn is_throttling(code: &str) -> bool {
    matches!(
        code,
        "Throttling"
            | "ThrottlingException"
            | "ThrottledException"
            | "RequestThrottled"
            | "RequestThrottledException"
            | "RequestLimitExceeded"
            | "TooManyRequestsException"
            | "SlowDown"
            | "KmsThrottled"
            | "KMS.ThrottlingException"
            | "AWS.SimpleQueueService.RequestThrottled"
    )
}

/// How one try failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failed<E> {
    /// Trying again cannot help.
    Permanent(E),
    /// Try again after a back-off, at least `at_least` if the other side said so.
    Transient {
        error: E,
        at_least: Option<Duration>,
    },
}

/// Tries `f` until it succeeds or fails for good, backing off by `policy` between
/// tries. `what` names the call in the log.
pub async fn retry<T, E, F, Fut>(policy: &Backoff, what: &str, mut f: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failed<E>>>,
{
    let mut delays = policy.delays();
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(Failed::Permanent(e)) => return Err(e),
            Err(Failed::Transient { error, at_least }) => {
                let delay = delays.next_delay(at_least);
                warn!(what, %error, retry_in = ?delay, asked_for = ?at_least, "transient failure; trying again");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn delays_double_up_to_the_max_with_up_to_as_much_again_of_jitter() {
        let policy = Backoff::new(S(1), S(8));
        for _ in 0..50 {
            let mut delays = policy.delays();
            for want in [1, 2, 4, 8, 8, 8] {
                let d = delays.next_delay(None);
                assert!(d >= S(want) && d < S(2 * want), "{d:?} for {want}");
            }
        }
        // Jitter: two runs do not come back in step.
        let runs: std::collections::BTreeSet<Duration> =
            (0..20).map(|_| policy.delays().next_delay(None)).collect();
        assert!(runs.len() > 1, "{runs:?}");
    }

    #[test]
    fn after_counts_failures_from_one() {
        let policy = Backoff::new(S(8), S(64));
        for (failures, want) in [(0, 8), (1, 8), (2, 16), (3, 32), (4, 64), (9, 64)] {
            let d = policy.after(failures);
            assert!(d >= S(want) && d < S(2 * want), "{failures}: {d:?}");
        }
        assert!(policy.after(u32::MAX) < S(128));
        assert_eq!(Backoff::new(S(5), S(1)).max(), S(5));
    }

    #[test]
    fn what_the_other_side_asks_for_is_a_floor() {
        let policy = Backoff::new(Duration::from_millis(10), Duration::from_millis(20));
        let mut delays = policy.delays();
        assert_eq!(delays.next_delay(Some(S(7))), S(7));
        assert!(delays.next_delay(Some(Duration::ZERO)) >= Duration::from_millis(20));
        assert_eq!(
            throttle_floor(Some("ThrottlingException")),
            Some(THROTTLED_FLOOR)
        );
        assert_eq!(
            throttle_floor(Some("AWS.SimpleQueueService.RequestThrottled")),
            Some(THROTTLED_FLOOR)
        );
        assert_eq!(throttle_floor(Some("AccessDenied")), None);
        assert_eq!(throttle_floor(None), None);
    }

    #[tokio::test]
    async fn retry_stops_at_success_or_a_permanent_failure() {
        let ms = Duration::from_millis;
        let policy = Backoff::new(ms(1), ms(2));
        let start = std::time::Instant::now();
        let mut tries = 0;
        let out: Result<u32, String> = retry(&policy, "test", || {
            tries += 1;
            let n = tries;
            async move {
                match n {
                    1 => Err(Failed::Transient {
                        error: "down".to_string(),
                        at_least: Some(ms(50)),
                    }),
                    2 => Err(Failed::Transient {
                        error: "down".to_string(),
                        at_least: None,
                    }),
                    _ => Ok(n),
                }
            }
        })
        .await;
        assert_eq!(out, Ok(3));
        assert!(start.elapsed() >= ms(50), "the floor was honoured");
        let out: Result<(), String> = retry(&policy, "test", || async {
            Err(Failed::Permanent("no".to_string()))
        })
        .await;
        assert_eq!(out, Err("no".to_string()));
    }
}
