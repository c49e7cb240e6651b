//! [`KubeLease`]: the [`LeaseBackend`] on a `coordination.k8s.io/v1` Lease.

use std::sync::Mutex;

use ::k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use ::k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime as KubeMicroTime, ObjectMeta};
use ::k8s_openapi::jiff::Timestamp;
use ::kube::api::{Api, PostParams};
use ::kube::Client;

use super::describe;
use crate::{BoxFuture, LeaseBackend, LeaseError, LeaseRecord, MicroTime, Version};

/// A lease stored in a Kubernetes `Lease` object; see the docs of `src/kube/mod.rs` for the
/// requests, the mapping and the RBAC it needs.
///
/// Each `KubeLease` is one client: it remembers the metadata of the last object it read or
/// wrote, so its updates carry that object's uid and labels.
pub struct KubeLease {
    api: Api<Lease>,
    namespace: String,
    name: String,
    /// Metadata of the latest version this client read or wrote.
    seen: Mutex<Option<ObjectMeta>>,
}

impl std::fmt::Debug for KubeLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeLease")
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl KubeLease {
    /// The Lease `name` in `namespace`, through a client built from `config` with kube's
    /// retry layer turned off (`default_retry = false`); the preferred constructor.
    ///
    /// kube-rs's default client retries 429/503/504 answers by replaying the request (up to 15
    /// times, backing off to minutes). For a lease that is wrong twice over: a call can hang
    /// far past the elector's renew deadline, and a PUT replayed after a 504 whose first try
    /// was applied comes back 409, which would be reported as a definitive `Conflict` although
    /// the write took effect. The elector has its own retry cadence and reads back after
    /// ambiguous failures, so every failure is passed to it at once instead.
    pub fn from_config(
        mut config: ::kube::Config,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Result<Self, LeaseError> {
        config.default_retry = false;
        let client = Client::try_from(config).map_err(|e| LeaseError::Backend(Box::new(e)))?;
        Ok(KubeLease::new(client, namespace, name))
    }

    /// The Lease `name` in `namespace`, through `client` (the Lease need not exist yet).
    ///
    /// Prefer [`KubeLease::from_config`], or build `client` with `default_retry = false`: see
    /// there why kube's retry layer does not belong under a lease.
    pub fn new(client: Client, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        let namespace = namespace.into();
        KubeLease {
            api: Api::namespaced(client, &namespace),
            namespace,
            name: name.into(),
            seen: Mutex::new(None),
        }
    }

    /// The Lease's namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Lease's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn remember(&self, meta: Option<ObjectMeta>) {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = meta;
    }

    /// Metadata of `version` if it is the version this client saw last.
    fn seen_at(&self, version: &Version) -> Option<ObjectMeta> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .filter(|m| m.resource_version.as_deref() == Some(version.as_str()))
            .cloned()
    }

    /// Reads the lease, remembering its metadata.
    async fn read(&self) -> Result<Option<(LeaseRecord, Version)>, LeaseError> {
        match self.api.get_opt(&self.name).await {
            Ok(Some(lease)) => {
                let result = from_lease(&lease)?;
                self.remember(Some(lease.metadata));
                Ok(Some(result))
            }
            Ok(None) => {
                self.remember(None);
                Ok(None)
            }
            Err(e) => Err(unavailable("get", &self.name, &e)),
        }
    }

    async fn replace(
        &self,
        record: LeaseRecord,
        expected: &Version,
    ) -> Result<Version, LeaseError> {
        let spec = to_spec(&record)?;
        let meta = match self.seen_at(expected) {
            Some(meta) => meta,
            None => match self.read().await? {
                None => return Err(LeaseError::NotFound),
                Some((_, current)) if current != *expected => {
                    return Err(LeaseError::Conflict {
                        expected: expected.clone(),
                    })
                }
                Some(_) => self.seen_at(expected).ok_or_else(|| {
                    LeaseError::Corrupt("the lease read back has no metadata".into())
                })?,
            },
        };
        // The whole metadata of the version we expect to replace: resourceVersion is the
        // compare-and-swap, uid the precondition that keeps the PUT from creating a Lease.
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                resource_version: Some(expected.as_str().to_string()),
                ..meta
            },
            spec: Some(spec),
        };
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(stored) => {
                let version = version_of(&stored)?;
                self.remember(Some(stored.metadata));
                Ok(version)
            }
            Err(::kube::Error::Api(status)) if status.code == 409 => Err(LeaseError::Conflict {
                expected: expected.clone(),
            }),
            Err(::kube::Error::Api(status)) if status.code == 404 => Err(LeaseError::NotFound),
            Err(e) => Err(unavailable("update", &self.name, &e)),
        }
    }

    async fn create_lease(&self, record: LeaseRecord) -> Result<Version, LeaseError> {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(to_spec(&record)?),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(stored) => {
                let version = version_of(&stored)?;
                self.remember(Some(stored.metadata));
                Ok(version)
            }
            Err(::kube::Error::Api(status)) if status.code == 409 => Err(LeaseError::AlreadyExists),
            Err(e) => Err(unavailable("create", &self.name, &e)),
        }
    }
}

impl LeaseBackend for KubeLease {
    fn get(&self) -> BoxFuture<'_, Result<Option<(LeaseRecord, Version)>, LeaseError>> {
        Box::pin(self.read())
    }

    fn create(&self, record: LeaseRecord) -> BoxFuture<'_, Result<Version, LeaseError>> {
        Box::pin(self.create_lease(record))
    }

    fn update<'a>(
        &'a self,
        record: LeaseRecord,
        expected: &'a Version,
    ) -> BoxFuture<'a, Result<Version, LeaseError>> {
        Box::pin(self.replace(record, expected))
    }
}

fn unavailable(verb: &str, name: &str, error: &::kube::Error) -> LeaseError {
    LeaseError::Unavailable(format!("{verb} lease {name}: {}", describe(error)))
}

fn version_of(lease: &Lease) -> Result<Version, LeaseError> {
    lease
        .metadata
        .resource_version
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(Version::new)
        .ok_or_else(|| LeaseError::Corrupt("the Lease has no metadata.resourceVersion".into()))
}

/// The record and version of a stored Lease; a Lease without spec is an empty record.
fn from_lease(lease: &Lease) -> Result<(LeaseRecord, Version), LeaseError> {
    let version = version_of(lease)?;
    let spec = lease.spec.clone().unwrap_or_default();
    let non_negative = |field: &str, value: Option<i32>| {
        u32::try_from(value.unwrap_or(0))
            .map_err(|_| LeaseError::Corrupt(format!("the Lease's {field} is negative")))
    };
    let record = LeaseRecord {
        holder_identity: spec.holder_identity,
        lease_duration_seconds: non_negative("leaseDurationSeconds", spec.lease_duration_seconds)?,
        acquire_time: spec
            .acquire_time
            .map(|t| format_micro_time(&t))
            .transpose()?,
        renew_time: spec.renew_time.map(|t| format_micro_time(&t)).transpose()?,
        lease_transitions: non_negative("leaseTransitions", spec.lease_transitions)?.into(),
    };
    Ok((record, version))
}

fn to_spec(record: &LeaseRecord) -> Result<LeaseSpec, LeaseError> {
    let int = |field: &str, value: u64| {
        i32::try_from(value).map_err(|_| {
            LeaseError::Corrupt(format!(
                "{field} {value} does not fit a Kubernetes Lease (int32)"
            ))
        })
    };
    Ok(LeaseSpec {
        holder_identity: record.holder_identity.clone(),
        lease_duration_seconds: Some(int(
            "leaseDurationSeconds",
            record.lease_duration_seconds.into(),
        )?),
        acquire_time: record
            .acquire_time
            .as_ref()
            .map(parse_micro_time)
            .transpose()?,
        renew_time: record
            .renew_time
            .as_ref()
            .map(parse_micro_time)
            .transpose()?,
        lease_transitions: Some(int("leaseTransitions", record.lease_transitions)?),
        ..LeaseSpec::default()
    })
}

/// `MicroTime` as the API writes it: RFC 3339, UTC, exactly six fractional digits.
fn format_micro_time(time: &KubeMicroTime) -> Result<MicroTime, LeaseError> {
    ::k8s_openapi::jiff::fmt::strtime::format("%Y-%m-%dT%H:%M:%S%.6fZ", time.0)
        .map(MicroTime::from_string)
        .map_err(|e| LeaseError::Corrupt(format!("unprintable Lease timestamp: {e}")))
}

fn parse_micro_time(time: &MicroTime) -> Result<KubeMicroTime, LeaseError> {
    time.as_str()
        .parse::<Timestamp>()
        .map(KubeMicroTime)
        .map_err(|e| LeaseError::Corrupt(format!("timestamp {time} is not RFC 3339: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    fn record(t: SystemTime) -> LeaseRecord {
        LeaseRecord {
            holder_identity: Some("pod-a".into()),
            lease_duration_seconds: 15,
            acquire_time: Some(MicroTime::from_system_time(t)),
            renew_time: Some(MicroTime::from_system_time(t + Duration::from_micros(7))),
            lease_transitions: 3,
        }
    }

    #[test]
    fn record_round_trips_through_the_lease_spec_with_microseconds() {
        for t in [
            SystemTime::now(),
            UNIX_EPOCH + Duration::from_secs(10_413_792_000),
            UNIX_EPOCH + Duration::from_secs(365 * 86_400),
        ] {
            let record = record(t);
            let lease = Lease {
                metadata: ObjectMeta {
                    resource_version: Some("42".into()),
                    ..ObjectMeta::default()
                },
                spec: Some(to_spec(&record).unwrap()),
            };
            let json = serde_json::to_value(&lease).unwrap();
            assert_eq!(json["spec"]["holderIdentity"], "pod-a");
            assert_eq!(json["spec"]["leaseTransitions"], 3);
            assert_eq!(json["spec"]["leaseDurationSeconds"], 15);
            assert_eq!(
                json["spec"]["renewTime"].as_str(),
                Some(record.renew_time.as_ref().unwrap().as_str())
            );
            let back: Lease = serde_json::from_value(json).unwrap();
            assert_eq!(from_lease(&back).unwrap(), (record, Version::new("42")));
        }
    }

    #[test]
    fn released_and_empty_leases_map_to_empty_records() {
        let mut r = record(SystemTime::now());
        r.holder_identity = None;
        let spec = to_spec(&r).unwrap();
        assert_eq!(spec.holder_identity, None);
        let lease = Lease {
            metadata: ObjectMeta {
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            },
            spec: None,
        };
        let (empty, _) = from_lease(&lease).unwrap();
        assert_eq!(empty.holder(), None);
        assert_eq!(empty.lease_transitions, 0);
    }

    #[test]
    fn out_of_range_values_are_rejected_not_truncated() {
        let mut r = record(SystemTime::now());
        r.lease_transitions = u64::from(u32::MAX);
        assert!(matches!(to_spec(&r), Err(LeaseError::Corrupt(_))));
        let mut r = record(SystemTime::now());
        r.renew_time = Some(MicroTime::from_string("yesterday"));
        assert!(matches!(to_spec(&r), Err(LeaseError::Corrupt(_))));
        let lease = Lease {
            metadata: ObjectMeta {
                resource_version: Some("1".into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                lease_transitions: Some(-1),
                ..LeaseSpec::default()
            }),
        };
        assert!(matches!(from_lease(&lease), Err(LeaseError::Corrupt(_))));
    }
}
