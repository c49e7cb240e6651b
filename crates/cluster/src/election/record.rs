//! The lease record as stored, its version, and wall-clock timestamps for humans.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// The content of a lease: the fields of Kubernetes' `coordination.k8s.io/v1` `LeaseSpec`
/// that client-go's leader election uses, with the same meaning.
///
/// Serialized with Kubernetes' camelCase names (`holderIdentity`, `leaseDurationSeconds`,
/// `acquireTime`, `renewTime`, `leaseTransitions`), which is also the on-disk format of
/// [`FileLease`](crate::FileLease).
///
/// The timestamps are written for humans (`kubectl get lease -o yaml`, the lease file) and are
/// **never** used to judge expiry: a candidate measures how long a record stayed unchanged on
/// its own monotonic clock (see [`Elector`](crate::Elector)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaseRecord {
    /// Identity of the current holder; `None` (or an empty string, as Kubernetes may store it)
    /// means the lease was released and may be taken at once.
    #[serde(default)]
    pub holder_identity: Option<String>,
    /// How long, in whole seconds, others must see this record unchanged before taking the
    /// lease over. Written by the holder from its configuration (rounded up).
    #[serde(default)]
    pub lease_duration_seconds: u32,
    /// Wall-clock time at which the current holder acquired the lease (informational).
    #[serde(default)]
    pub acquire_time: Option<MicroTime>,
    /// Wall-clock time of the holder's last renewal (informational).
    #[serde(default)]
    pub renew_time: Option<MicroTime>,
    /// Number of times the lease changed hands. It is the fencing epoch of the holder.
    #[serde(default)]
    pub lease_transitions: u64,
}

impl LeaseRecord {
    /// The holder, treating an empty identity like no holder (a released lease).
    pub fn holder(&self) -> Option<&str> {
        self.holder_identity.as_deref().filter(|h| !h.is_empty())
    }
}

/// The opaque version of a stored lease, like Kubernetes' `metadata.resourceVersion`.
///
/// Backends guarantee that every successful write yields a version different from all versions
/// the same lease had before; callers only compare versions for equality.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Version(String);

impl Version {
    /// Wraps a backend's version string.
    pub fn new(version: impl Into<String>) -> Self {
        Version(version.into())
    }

    /// The version string as the backend produced it.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A wall-clock timestamp as stored in a lease: RFC 3339 in UTC with microseconds, the format
/// of Kubernetes' `MicroTime` (`2024-05-01T12:00:00.123456Z`).
///
/// Kept as the stored string; it is never parsed back, because nothing decides on it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MicroTime(String);

impl MicroTime {
    /// Formats a wall-clock time (before 1970 too) as RFC 3339 UTC with microseconds.
    pub fn from_system_time(time: SystemTime) -> Self {
        let (secs, micros) = match time.duration_since(UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_micros()),
            Err(before) => {
                let d = before.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut micros = d.subsec_micros();
                if micros > 0 {
                    secs -= 1;
                    micros = 1_000_000 - micros;
                }
                (secs, micros)
            }
        };
        let days = secs.div_euclid(86_400);
        let second_of_day = secs.rem_euclid(86_400);
        let (year, month, day) = civil_from_days(days);
        MicroTime(format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            second_of_day / 3600,
            second_of_day % 3600 / 60,
            second_of_day % 60
        ))
    }

    /// Wraps a timestamp string read from a store, unchecked (backends store what they get).
    pub fn from_string(stored: impl Into<String>) -> Self {
        MicroTime(stored.into())
    }

    /// The stored string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MicroTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn at(secs: i64, micros: u32) -> SystemTime {
        let base = if secs >= 0 {
            UNIX_EPOCH + Duration::from_secs(secs as u64)
        } else {
            UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
        };
        base + Duration::from_micros(micros.into())
    }

    #[test]
    fn micro_time_formats_known_instants() {
        let cases = [
            (0, 0, "1970-01-01T00:00:00.000000Z"),
            (951_782_400, 5, "2000-02-29T00:00:00.000005Z"),
            (1_700_000_000, 123_456, "2023-11-14T22:13:20.123456Z"),
            (-1, 500_000, "1969-12-31T23:59:59.500000Z"),
            (-86_400 * 365, 0, "1969-01-01T00:00:00.000000Z"),
            (10_413_792_000, 0, "2300-01-01T00:00:00.000000Z"),
        ];
        for (secs, micros, want) in cases {
            assert_eq!(MicroTime::from_system_time(at(secs, micros)).as_str(), want);
        }
    }

    #[test]
    fn record_uses_kubernetes_field_names_and_round_trips() {
        let record = LeaseRecord {
            holder_identity: Some("pod-a".into()),
            lease_duration_seconds: 15,
            acquire_time: Some(MicroTime::from_string("2024-01-01T00:00:00.000000Z")),
            renew_time: None,
            lease_transitions: 3,
        };
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(json["holderIdentity"], "pod-a");
        assert_eq!(json["leaseDurationSeconds"], 15);
        assert_eq!(json["acquireTime"], "2024-01-01T00:00:00.000000Z");
        assert_eq!(json["leaseTransitions"], 3);
        let back: LeaseRecord = serde_json::from_value(json).unwrap();
        assert_eq!(back, record);
    }

    #[test]
    fn empty_holder_counts_as_released() {
        let mut record: LeaseRecord = serde_json::from_str("{}").unwrap();
        assert_eq!(record.holder(), None);
        record.holder_identity = Some(String::new());
        assert_eq!(record.holder(), None);
        record.holder_identity = Some("x".into());
        assert_eq!(record.holder(), Some("x"));
    }
}
