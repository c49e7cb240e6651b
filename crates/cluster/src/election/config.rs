//! Election timing.

use std::time::Duration;

use super::error::LeaseError;

/// Upper bound of the random factor applied to a candidate's retry period: a candidate waits
/// `retry_period × U[1, JITTER_FACTOR)` between polls, so candidates started together do not
/// stay in lock-step (client-go's `JitterFactor`).
pub const JITTER_FACTOR: f64 = 1.2;

/// The three durations of client-go leader election (same names, same defaults).
///
/// Invariant (checked by [`validate`](Self::validate), as client-go does):
/// `lease_duration > renew_deadline > retry_period × JITTER_FACTOR > 0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ElectionConfig {
    /// How long a candidate must see a held lease *unchanged*, measured on its own monotonic
    /// clock from the moment it first observed that version, before taking it over.
    ///
    /// Default 15 s: the worst-case failover time after a leader crashes without releasing.
    /// It must exceed `renew_deadline`; the difference (5 s by default) is the safety margin
    /// that absorbs request latency and clock *rate* differences between pods (not offsets:
    /// offsets do not matter, each pod only ever compares its own instants).
    pub lease_duration: Duration,
    /// How long a leader keeps acting as leader after its last successful renewal (counted
    /// from when it *sent* that renewal). When it cannot renew within this time it steps down,
    /// which happens before any candidate can take over (`renew_deadline < lease_duration`).
    ///
    /// Default 10 s: room for about five renewal attempts at the default retry period, so a
    /// few slow or failed requests do not cost leadership.
    pub renew_deadline: Duration,
    /// The leader renews every `retry_period`; candidates poll the lease every
    /// `retry_period × U[1, 1.2)`. It is also the delay with which a standby notices a
    /// released lease.
    ///
    /// Default 2 s: one write per 2 s per lease keeps the API server load negligible while a
    /// graceful hand-over (release on shutdown) still completes within about 2.4 s.
    pub retry_period: Duration,
}

impl Default for ElectionConfig {
    fn default() -> Self {
        ElectionConfig {
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

impl ElectionConfig {
    /// Checks `lease_duration > renew_deadline > retry_period × JITTER_FACTOR` and that all are
    /// non-zero, like client-go's `NewLeaderElector`.
    pub fn validate(&self) -> Result<(), LeaseError> {
        let invalid = |why: String| Err(LeaseError::InvalidConfig(why));
        if self.retry_period.is_zero() {
            return invalid("retry_period must be greater than zero".into());
        }
        if self.lease_duration <= self.renew_deadline {
            return invalid(format!(
                "lease_duration ({:?}) must be greater than renew_deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        // retry_period × 1.2 in exact integer arithmetic (no float rounding at the boundary).
        let jittered = self.retry_period * 6 / 5;
        if self.renew_deadline <= jittered {
            return invalid(format!(
                "renew_deadline ({:?}) must be greater than retry_period × {JITTER_FACTOR} ({:?})",
                self.renew_deadline, jittered
            ));
        }
        if u32::try_from(self.lease_duration.as_secs()).is_err() {
            return invalid("lease_duration does not fit a lease record".into());
        }
        Ok(())
    }

    /// `lease_duration` in whole seconds for the record, rounded up so that others never wait
    /// less than this holder assumes.
    pub(crate) fn lease_duration_seconds(&self) -> u32 {
        let d = self.lease_duration;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        u32::try_from(secs).unwrap_or(u32::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(ld: u64, rd: u64, rp: u64) -> ElectionConfig {
        ElectionConfig {
            lease_duration: Duration::from_millis(ld),
            renew_deadline: Duration::from_millis(rd),
            retry_period: Duration::from_millis(rp),
        }
    }

    #[test]
    fn default_is_client_go_default_and_valid() {
        let c = ElectionConfig::default();
        assert_eq!(c, cfg(15_000, 10_000, 2_000));
        c.validate().unwrap();
        assert_eq!(c.lease_duration_seconds(), 15);
    }

    #[test]
    fn validate_rejects_what_client_go_rejects() {
        // client-go: "leaseDuration must be greater than renewDeadline"
        assert!(cfg(10_000, 10_000, 2_000).validate().is_err());
        // client-go: "renewDeadline must be greater than retryPeriod*JitterFactor"
        assert!(cfg(15_000, 2_400, 2_000).validate().is_err());
        assert!(cfg(15_000, 2_401, 2_000).validate().is_ok());
        // client-go: "retryPeriod must be greater than zero"
        assert!(cfg(15_000, 10_000, 0).validate().is_err());
        assert!(cfg(300, 200, 50).validate().is_ok());
    }

    #[test]
    fn record_duration_rounds_up() {
        assert_eq!(cfg(300, 200, 50).lease_duration_seconds(), 1);
        assert_eq!(cfg(15_001, 200, 50).lease_duration_seconds(), 16);
    }
}
