//! The crate's single error type.

/// Everything that can go wrong in `stats`.
///
/// [`StatsError::TooOld`] and [`StatsError::TooNew`] are routine outcomes of
/// [`Window::merge`](crate::Window::merge) and friends (a late or early
/// partial is ignored, nothing else changes); callers usually count them in
/// a metric. [`StatsError::InvalidData`] is what deserialising a malformed
/// [`Partial`](crate::Partial) from a peer reports (through serde's error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatsError {
    /// A [`WindowConfig`](crate::WindowConfig) field is out of range.
    #[error("invalid window config: `{field}` {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// What is wrong with it, including the accepted range.
        reason: String,
    },
    /// The second has already left the window; the contribution was ignored.
    #[error("second {second} is older than the window (oldest accepted second is {oldest})")]
    TooOld {
        /// The rejected second.
        second: u64,
        /// The oldest second the window accepted at that time.
        oldest: u64,
    },
    /// The second lies further in the future than the window tolerates; the
    /// contribution was ignored.
    #[error("second {second} is too far in the future (newest accepted second is {newest})")]
    TooNew {
        /// The rejected second.
        second: u64,
        /// The newest second the window accepted at that time.
        newest: u64,
    },
    /// Serialized data violates an invariant (e.g. a register index out of
    /// range, or counts that do not add up to the total).
    #[error("invalid {what}: {reason}")]
    InvalidData {
        /// Which structure was malformed.
        what: &'static str,
        /// The violated invariant.
        reason: String,
    },
}

impl StatsError {
    pub(crate) fn invalid_data(what: &'static str, reason: impl Into<String>) -> Self {
        StatsError::InvalidData {
            what,
            reason: reason.into(),
        }
    }
}
