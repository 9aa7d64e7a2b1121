//! Exponential backoff with jitter.

use std::time::Duration;

use crate::Error;

/// Exponential backoff with jitter: each delay is the previous one times `multiplier`, capped
/// at `max`, and the delay actually used is drawn uniformly from its upper half so that many
/// clients restarting together spread out.
///
/// # Examples
///
/// ```
/// use msgio::Backoff;
/// use std::time::Duration;
///
/// let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10), 2.0)?;
/// let mut delays = backoff.delays();
/// let first = delays.next_delay();
/// assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
/// let second = delays.next_delay();
/// assert!(second >= Duration::from_millis(100) && second <= Duration::from_millis(200));
/// # Ok::<(), msgio::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    multiplier: f64,
}

impl Backoff {
    /// A backoff starting at `initial`, multiplied by `multiplier` after each delay, never
    /// above `max`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] when `initial` is zero or above `max`, or `multiplier` is
    /// below 1 or not finite.
    pub fn new(initial: Duration, max: Duration, multiplier: f64) -> Result<Self, Error> {
        if initial.is_zero() {
            return Err(Error::invalid_config(
                "backoff.initial",
                "must be above zero",
            ));
        }
        if initial > max {
            return Err(Error::invalid_config(
                "backoff.initial",
                format!("{initial:?} is above the maximum {max:?}"),
            ));
        }
        if !multiplier.is_finite() || multiplier < 1.0 {
            return Err(Error::invalid_config(
                "backoff.multiplier",
                format!("{multiplier} must be a finite number of at least 1"),
            ));
        }
        Ok(Backoff {
            initial,
            max,
            multiplier,
        })
    }

    /// The first delay, before jitter.
    pub fn initial(&self) -> Duration {
        self.initial
    }

    /// The largest delay, before jitter.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The delay before attempt `attempt + 1` after `attempt` failed (attempt 1 gets the
    /// initial step), with jitter: what the `attempt`-th call of a fresh
    /// [`delays`](Backoff::delays) sequence would give, without keeping a sequence.
    ///
    /// ```
    /// use msgio::Backoff;
    /// use std::time::Duration;
    ///
    /// let b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1), 2.0)?;
    /// let third = b.delay_for(3); // step 400 ms, jittered into [200 ms, 400 ms]
    /// assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
    /// assert!(b.delay_for(50) <= Duration::from_secs(1));
    /// # Ok::<(), msgio::Error>(())
    /// ```
    pub fn delay_for(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let step = Duration::try_from_secs_f64(
            self.initial.as_secs_f64() * self.multiplier.powi(exponent),
        )
        .map_or(self.max, |d| d.min(self.max));
        let mut delays = self.delays();
        delays.next = step;
        delays.next_delay()
    }

    /// A fresh sequence of delays.
    pub fn delays(&self) -> Delays {
        Delays {
            backoff: *self,
            next: self.initial,
            rng: crate::random::u64() | 1,
        }
    }
}

impl Default for Backoff {
    /// 100 ms, doubling, up to 30 s.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(30),
            multiplier: 2.0,
        }
    }
}

/// A sequence of delays from a [`Backoff`].
#[derive(Debug, Clone)]
pub struct Delays {
    backoff: Backoff,
    next: Duration,
    rng: u64,
}

impl Delays {
    /// The next delay, with jitter: between half of and the whole of the current step.
    pub fn next_delay(&mut self) -> Duration {
        let step = self.next;
        let max = self.backoff.max;
        self.next = Duration::try_from_secs_f64(step.as_secs_f64() * self.backoff.multiplier)
            .map_or(max, |next| next.min(max));
        let half = step / 2;
        half + half.mul_f64(self.random_unit())
    }

    /// Starts again from the initial delay.
    pub fn reset(&mut self) {
        self.next = self.backoff.initial;
    }

    /// A number in `[0, 1]` (xorshift64*; jitter needs no better).
    fn random_unit(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let n = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        (n >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_the_cap_with_jitter_in_the_upper_half() {
        let b = Backoff::new(Duration::from_millis(10), Duration::from_millis(80), 2.0).unwrap();
        let mut d = b.delays();
        for step in [10u64, 20, 40, 80, 80, 80] {
            let got = d.next_delay();
            let step = Duration::from_millis(step);
            assert!(
                got >= step / 2 && got <= step,
                "{got:?} outside [{:?}, {step:?}]",
                step / 2
            );
        }
        d.reset();
        assert!(d.next_delay() <= Duration::from_millis(10));
    }

    #[test]
    fn jitter_varies() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 1.0).unwrap();
        let mut d = b.delays();
        let first = d.next_delay();
        assert!((0..20).any(|_| d.next_delay() != first));
    }

    #[test]
    fn bad_settings_are_named() {
        let e = Backoff::new(Duration::ZERO, Duration::from_secs(1), 2.0).unwrap_err();
        assert!(e.to_string().contains("backoff.initial"));
        let e = Backoff::new(Duration::from_secs(2), Duration::from_secs(1), 2.0).unwrap_err();
        assert!(e.to_string().contains("above the maximum"));
        let e = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), 0.5).unwrap_err();
        assert!(e.to_string().contains("backoff.multiplier"));
        assert!(Backoff::new(Duration::from_secs(1), Duration::from_secs(1), f64::NAN).is_err());
    }
}
