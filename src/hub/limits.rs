//! Per-connection message rate limit: a token bucket.

use std::time::Instant;

/// `rate` messages per second on average, up to `burst` at once. Refusals in a
/// row are counted so a client that keeps flooding can be closed.
#[derive(Debug, Clone, Copy)]
pub struct RateBucket {
    tokens: f32,
    at: Instant,
    refused_in_a_row: u32,
}

/// What to do with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Within the limit: handle it.
    Allow,
    /// Over the limit: answer `rate_limited`, do not handle it.
    Refuse,
    /// Over the limit for too long: close the connection (4102).
    Close,
}

impl RateBucket {
    /// A full bucket.
    pub fn new(now: Instant) -> RateBucket {
        RateBucket {
            tokens: f32::INFINITY,
            at: now,
            refused_in_a_row: 0,
        }
    }

    /// Spend one token. `rate <= 0` means no limit.
    pub fn take(&mut self, now: Instant, rate: f32, burst: f32, close_after: u32) -> RateDecision {
        if rate <= 0.0 {
            return RateDecision::Allow;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f32();
        self.at = now;
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            self.refused_in_a_row = 0;
            RateDecision::Allow
        } else {
            self.refused_in_a_row += 1;
            if self.refused_in_a_row > close_after {
                RateDecision::Close
            } else {
                RateDecision::Refuse
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn burst_then_rate_then_close() {
        let t0 = Instant::now();
        let mut b = RateBucket::new(t0);
        for _ in 0..10 {
            assert_eq!(b.take(t0, 5.0, 10.0, 3), RateDecision::Allow);
        }
        for _ in 0..3 {
            assert_eq!(b.take(t0, 5.0, 10.0, 3), RateDecision::Refuse);
        }
        assert_eq!(b.take(t0, 5.0, 10.0, 3), RateDecision::Close);
        // A second later five tokens are back, and the refusal streak resets.
        let t1 = t0 + Duration::from_secs(1);
        for _ in 0..5 {
            assert_eq!(b.take(t1, 5.0, 10.0, 3), RateDecision::Allow);
        }
        assert_eq!(b.take(t1, 5.0, 10.0, 3), RateDecision::Refuse);
        assert_eq!(
            b.take(t1, 0.0, 10.0, 3),
            RateDecision::Allow,
            "0 = unlimited"
        );
    }
}
