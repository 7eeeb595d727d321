//! Capped exponential backoff for loops that can fail (reconnects, failing queries).
//!
//! Every such loop logs why it waits and for how long, then waits [`Backoff::next_delay`];
//! a success resets it, so one blip costs a short pause and an outage a capped one.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    /// The first wait after a failure: short, so a blip heals at once.
    pub const FIRST: Duration = Duration::from_millis(100);
    /// The longest wait: an outage is retried at least this often, so a dependency that
    /// comes back is used again within this (a reconnect attempt costs little).
    pub const CAP: Duration = Duration::from_secs(2);

    /// The backoff of reconnecting loops (the listener, the relay, the runner's reader, the
    /// live feed): [`Backoff::FIRST`] doubling up to [`Backoff::CAP`].
    pub fn reconnecting() -> Self {
        Backoff::new(Self::FIRST, Self::CAP)
    }

    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff {
            first,
            cap,
            next: first,
        }
    }

    /// The delay to wait now; each call doubles the next one, up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    /// After a success: start again from the first delay.
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<u128> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(100));
    }
}
