//! The per-crash input and the dimensions it is counted by.

use serde::{Deserialize, Serialize};

/// One symbolicated, fingerprinted crash, as the aggregation layer sees it.
///
/// Borrowed so that adding a crash to a [`Partial`](crate::Partial) costs no
/// allocation for values already present. Dimension values are counted
/// verbatim (no trimming or case folding); callers should map a missing
/// value to a fixed placeholder such as `"unknown"` before building the
/// record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CrashRecord<'a> {
    /// Unix second the crash is accounted to (the caller picks which clock:
    /// receive time on the pod is the intended one). [`Partial::add`]
    /// ignores it — a partial is one second already — while
    /// [`Window::add`](crate::Window::add) uses it to pick the slice.
    ///
    /// [`Partial::add`]: crate::Partial::add
    pub second: u64,
    /// Application version, e.g. `"3.14.1 (5021)"`.
    pub app_version: &'a str,
    /// Platform, e.g. `"ios"`, `"android"`, `"macos"`.
    pub platform: &'a str,
    /// Operating system version, e.g. `"17.4.1"`.
    pub os_version: &'a str,
    /// Device model, e.g. `"iPhone15,2"`.
    pub device_model: &'a str,
    /// Exception type, e.g. `"EXC_BAD_ACCESS"` or `"SIGSEGV"`.
    pub exception_type: &'a str,
    /// Crash-group id: the hex fingerprint of the crash.
    pub group_id: &'a str,
    /// Human-readable group title, e.g. `"SIGSEGV: foo::bar"`.
    pub group_title: &'a str,
    /// Stable user identifier, if the report carried one. Only feeds the
    /// distinct-user sketch.
    pub user_id: Option<&'a str>,
    /// Time spent symbolicating this crash, in microseconds.
    pub symbolication_us: u64,
}

/// A dimension crashes are counted by exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    /// [`CrashRecord::app_version`].
    AppVersion,
    /// [`CrashRecord::platform`].
    Platform,
    /// [`CrashRecord::os_version`].
    OsVersion,
    /// [`CrashRecord::device_model`].
    DeviceModel,
    /// [`CrashRecord::exception_type`].
    ExceptionType,
}

impl Dimension {
    /// All dimensions, in the order they appear in serialized forms.
    pub const ALL: [Dimension; 5] = [
        Dimension::AppVersion,
        Dimension::Platform,
        Dimension::OsVersion,
        Dimension::DeviceModel,
        Dimension::ExceptionType,
    ];

    /// The snake_case name used as a JSON field name.
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::AppVersion => "app_version",
            Dimension::Platform => "platform",
            Dimension::OsVersion => "os_version",
            Dimension::DeviceModel => "device_model",
            Dimension::ExceptionType => "exception_type",
        }
    }

    /// The record's value for this dimension.
    pub fn value_of<'a>(self, record: &CrashRecord<'a>) -> &'a str {
        match self {
            Dimension::AppVersion => record.app_version,
            Dimension::Platform => record.platform,
            Dimension::OsVersion => record.os_version,
            Dimension::DeviceModel => record.device_model,
            Dimension::ExceptionType => record.exception_type,
        }
    }
}

impl std::fmt::Display for Dimension {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
