//! The crash event format (see `docs/event-format.md` for the field table).
//!
//! Events are parsed from JSON by hand-written validation rather than a bare `serde` derive, so
//! that every rejection names the offending field by its path (`threads[0].frames[3].
//! instruction_addr`) and says what was expected. The same validation serves the HTTP API, the
//! NATS source and the CLI.

use serde::ser::SerializeStruct;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};
use symbolic::common::DebugId;

/// Upper bounds that keep one event's cost bounded. Events beyond them are rejected, not cut.
pub mod limits {
    /// Most modules in one event (a large game loads a few hundred libraries).
    pub const MAX_MODULES: usize = 4096;
    /// Most threads in one event.
    pub const MAX_THREADS: usize = 1024;
    /// Most frames in one thread (deep recursion is truncated by crash reporters long before).
    pub const MAX_FRAMES: usize = 2048;
    /// Longest string field, in bytes.
    pub const MAX_STRING: usize = 4096;
}

/// An event was rejected: `field` names it by path, `problem` says what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid event: `{field}`: {problem}")]
pub struct EventError {
    /// Path of the offending field, e.g. `threads[0].frames[2].instruction_addr`.
    pub field: String,
    /// What is wrong with it.
    pub problem: String,
}

impl EventError {
    /// Whether the text was not JSON at all (as opposed to JSON that is not a valid event).
    pub fn is_syntax(&self) -> bool {
        self.field == "$" && self.problem.starts_with(SYNTAX_PREFIX)
    }

    pub(crate) fn new(field: impl Into<String>, problem: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

const SYNTAX_PREFIX: &str = "not valid JSON";

fn syntax_error(e: serde_json::Error) -> EventError {
    EventError::new("$", format!("{SYNTAX_PREFIX}: {e}"))
}

/// The application that crashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct App {
    /// Bundle or package id, e.g. `com.example.game`.
    pub id: String,
    /// Marketing version, e.g. `2.4.1`.
    pub version: String,
    /// Build number, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<String>,
}

/// The operating system.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Os {
    /// e.g. `Android`, `iOS`.
    pub name: String,
    /// e.g. `14`, `17.2`.
    pub version: String,
}

/// The exception or signal that ended the process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Exception {
    /// e.g. `SIGSEGV`, `EXC_BAD_ACCESS`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Free text, e.g. `Segmentation fault at 0x0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A loaded module (executable or library) of the crashed process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    /// `elf`, `macho`, `pe` (free text; informational).
    #[serde(rename = "type")]
    pub ty: String,
    /// Path of the loaded binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_file: Option<String>,
    /// Name of the debug file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_file: Option<String>,
    /// Debug identifier; without it the module cannot be symbolicated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub debug_id: Option<DebugId>,
    /// Code identifier (e.g. full ELF build-id), hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code_id: Option<String>,
    /// Address the module was loaded at.
    #[serde(with = "hex_u64")]
    pub image_addr: u64,
    /// Size of the loaded image; when absent the module extends to the next module's start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_size: Option<u64>,
}

/// How a frame's address is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrMode {
    /// An absolute address in the crashed process.
    Abs,
    /// An offset relative to `modules[N].image_addr`.
    Rel(usize),
}

/// One stack frame as reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The instruction address (absolute, or relative per `addr_mode`).
    pub instruction_addr: u64,
    /// How to read `instruction_addr`.
    pub addr_mode: AddrMode,
}

impl Serialize for Frame {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let rel = matches!(self.addr_mode, AddrMode::Rel(_));
        let mut st = s.serialize_struct("Frame", 1 + usize::from(rel))?;
        st.serialize_field("instruction_addr", &format!("{:#x}", self.instruction_addr))?;
        if let AddrMode::Rel(n) = self.addr_mode {
            st.serialize_field("addr_mode", &format!("rel:{n}"))?;
        }
        st.end()
    }
}

/// One thread with its stack, innermost frame first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Thread {
    /// Thread id, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// Thread name, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether this thread crashed.
    pub crashed: bool,
    /// Frames, innermost (the crashing or current instruction) first.
    pub frames: Vec<Frame>,
}

/// A crash event. Parse with [`CrashEvent::from_json`] / [`CrashEvent::from_value`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CrashEvent {
    /// Unique id chosen by the client (used to recognise redeliveries).
    pub event_id: String,
    /// When the crash happened, in milliseconds since the Unix epoch.
    #[serde(rename = "timestamp", with = "timestamp_secs")]
    pub timestamp_ms: i64,
    /// The application.
    pub app: App,
    /// `android`, `ios`, `native`, ... (free text).
    pub platform: String,
    /// The operating system.
    pub os: Os,
    /// Device model, e.g. `Pixel 8`; `None` when unknown.
    #[serde(
        rename = "device",
        with = "device_model",
        skip_serializing_if = "Option::is_none"
    )]
    pub device_model: Option<String>,
    /// Affected user id, `None` when unknown.
    #[serde(
        rename = "user",
        with = "user_id",
        skip_serializing_if = "Option::is_none"
    )]
    pub user_id: Option<String>,
    /// The exception.
    pub exception: Exception,
    /// Loaded modules.
    pub modules: Vec<Module>,
    /// Threads; usually exactly one has `crashed: true`.
    pub threads: Vec<Thread>,
}

struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl<'a> Obj<'a> {
    fn of(path: String, v: &'a Value) -> Result<Self, EventError> {
        match v {
            Value::Object(map) => Ok(Self { path, map }),
            other => Err(EventError::new(
                if path.is_empty() { "$".into() } else { path },
                format!("expected an object, found {}", type_name(other)),
            )),
        }
    }

    fn field(&self, key: &str) -> String {
        join(&self.path, key)
    }

    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn req(&self, key: &str) -> Result<&'a Value, EventError> {
        self.get(key)
            .ok_or_else(|| EventError::new(self.field(key), "is required"))
    }

    fn obj(&self, key: &str) -> Result<Obj<'a>, EventError> {
        Obj::of(self.field(key), self.req(key)?)
    }

    fn opt_obj(&self, key: &str) -> Result<Option<Obj<'a>>, EventError> {
        self.get(key)
            .map(|v| Obj::of(self.field(key), v))
            .transpose()
    }

    fn string(&self, key: &str, v: &'a Value) -> Result<String, EventError> {
        let s = v.as_str().ok_or_else(|| {
            EventError::new(
                self.field(key),
                format!("expected a string, found {}", type_name(v)),
            )
        })?;
        if s.is_empty() {
            return Err(EventError::new(self.field(key), "must not be empty"));
        }
        if s.len() > limits::MAX_STRING {
            return Err(EventError::new(
                self.field(key),
                format!("longer than {} bytes", limits::MAX_STRING),
            ));
        }
        Ok(s.to_string())
    }

    fn req_str(&self, key: &str) -> Result<String, EventError> {
        self.string(key, self.req(key)?)
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>, EventError> {
        self.get(key).map(|v| self.string(key, v)).transpose()
    }

    fn array(&self, key: &str, max: usize) -> Result<&'a Vec<Value>, EventError> {
        let v = self.req(key)?;
        let arr = v.as_array().ok_or_else(|| {
            EventError::new(
                self.field(key),
                format!("expected an array, found {}", type_name(v)),
            )
        })?;
        if arr.len() > max {
            return Err(EventError::new(
                self.field(key),
                format!("has {} entries, at most {max} are accepted", arr.len()),
            ));
        }
        Ok(arr)
    }

    fn addr(&self, key: &str, v: &'a Value) -> Result<u64, EventError> {
        parse_addr(v).map_err(|problem| EventError::new(self.field(key), problem))
    }
}

/// Reads an address or size: a `0x`-prefixed hex string, or a non-negative JSON integer.
fn parse_addr(v: &Value) -> Result<u64, String> {
    match v {
        Value::String(s) => parse_hex(s),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{n} is not a non-negative integer")),
        other => Err(format!(
            "expected a hex string like \"0x1a2b\", found {}",
            type_name(other)
        )),
    }
}

/// Reads a `0x`-prefixed hex string.
pub(crate) fn parse_hex(s: &str) -> Result<u64, String> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .ok_or_else(|| format!("expected a hex string like \"0x1a2b\", found {s:?}"))?;
    u64::from_str_radix(hex, 16).map_err(|_| format!("{s:?} is not a 64-bit hexadecimal number"))
}

/// Unix seconds as accepted in `timestamp` (finite, from 1970 to before the year 3000) to ms.
pub(crate) fn seconds_to_ms(secs: f64) -> Option<i64> {
    (secs.is_finite() && (0.0..32_503_680_000.0).contains(&secs))
        .then(|| (secs * 1000.0).round() as i64)
}

/// The debug id of a module that reports only its code id, as Breakpad, Sentry and
/// Symbolicator derive it:
///
/// * `elf`: the build-id's first 16 bytes (zero-padded when shorter) read as a little-endian
///   GUID (the first three fields byte-swapped), age 0: the debug id `dump_syms` and the store
///   give the ELF file. Every mobile and desktop target is little-endian, so this assumes so.
/// * `macho`: the code id is the image's UUID, which is its debug id.
/// * `pe` (and anything else): the code id (timestamp and size) says nothing of the PDB's
///   GUID, so there is none.
pub fn debug_id_from_code_id(ty: &str, code_id: &str) -> Option<DebugId> {
    let hex = code_id.as_bytes();
    if hex.is_empty() || !hex.len().is_multiple_of(2) {
        return None;
    }
    let bytes: Option<Vec<u8>> = hex
        .chunks(2)
        .map(|pair| u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok())
        .collect();
    let bytes = bytes?;
    match ty {
        "elf" => {
            let mut guid = [0u8; 16];
            let n = bytes.len().min(16);
            guid[..n].copy_from_slice(&bytes[..n]);
            DebugId::from_guid_age(&guid, 0).ok()
        }
        "macho" if bytes.len() == 16 => {
            let uuid = symbolic::common::Uuid::from_slice(&bytes).ok()?;
            Some(DebugId::from_uuid(uuid))
        }
        _ => None,
    }
}

/// Parses an RFC 3339 timestamp (`2026-11-25T09:30:00.250Z`, `...+02:00`) to Unix milliseconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let mut rest = &s[19..];
    let mut millis = 0i64;
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let ms: String = frac[..digits]
            .chars()
            .chain("000".chars())
            .take(3)
            .collect();
        millis = ms.parse().ok()?;
        rest = &frac[digits..];
    }
    let offset_min = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && (rest.starts_with('+') || rest.starts_with('-')) => {
            let oh: i64 = rest.get(1..3)?.parse().ok()?;
            let om: i64 = rest.get(4..6)?.parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (oh * 60 + om)
        }
        _ => return None,
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y = if mo <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + mi * 60 + sec - offset_min * 60;
    Some(secs * 1000 + millis)
}

fn parse_timestamp(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_f64()
            .and_then(seconds_to_ms)
            .ok_or_else(|| format!("{n} is not a Unix time in seconds")),
        Value::String(s) => {
            parse_rfc3339(s).ok_or_else(|| format!("{s:?} is not an RFC 3339 timestamp"))
        }
        other => Err(format!(
            "expected Unix seconds or an RFC 3339 string, found {}",
            type_name(other)
        )),
    }
}

impl CrashEvent {
    /// Parses and validates an event from JSON text.
    ///
    /// Valid events take a typed fast path (no intermediate JSON tree); anything the fast path
    /// does not accept outright is parsed again by the field-by-field validation, which is
    /// the authority and names the offending field. Both apply the same rules.
    pub fn from_json(text: &[u8]) -> Result<Self, EventError> {
        if let Some(event) = crate::fast::event(text) {
            return Ok(event);
        }
        let value: Value = serde_json::from_slice(text).map_err(syntax_error)?;
        Self::from_value(&value)
    }

    /// Parses a request body holding one event or a non-empty JSON array of events. Errors in
    /// an array name the event by index (`[3].threads[0]...`). All or nothing.
    pub fn parse_batch(text: &[u8]) -> Result<Vec<Self>, EventError> {
        if let Some(events) = crate::fast::batch(text) {
            return Ok(events);
        }
        let value: Value = serde_json::from_slice(text).map_err(syntax_error)?;
        match &value {
            Value::Array(items) if items.is_empty() => {
                Err(EventError::new("$", "the batch is empty"))
            }
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| Self::from_value_at(v, &format!("[{i}]")))
                .collect(),
            _ => Ok(vec![Self::from_value(&value)?]),
        }
    }

    /// Validates an already parsed JSON value. `path` prefixes field names in errors (e.g.
    /// `[3]` for the fourth event of a batch); pass `""` for a single event.
    pub fn from_value_at(value: &Value, path: &str) -> Result<Self, EventError> {
        let root = Obj::of(path.to_string(), value)?;
        let event_id = root.req_str("event_id")?;
        if event_id.len() > 128 {
            return Err(EventError::new(
                root.field("event_id"),
                "longer than 128 bytes",
            ));
        }
        let timestamp_ms = parse_timestamp(root.req("timestamp")?)
            .map_err(|p| EventError::new(root.field("timestamp"), p))?;
        let app = root.obj("app")?;
        let app = App {
            id: app.req_str("id")?,
            version: app.req_str("version")?,
            build: app.opt_str("build")?,
        };
        let platform = root.req_str("platform")?;
        let os = root.obj("os")?;
        let os = Os {
            name: os.req_str("name")?,
            version: os.req_str("version")?,
        };
        let device_model = match root.opt_obj("device")? {
            Some(d) => d.opt_str("model")?,
            None => None,
        };
        let user_id = match root.opt_obj("user")? {
            Some(u) => u.opt_str("id")?,
            None => None,
        };
        let exc = root.obj("exception")?;
        let exception = Exception {
            ty: exc.req_str("type")?,
            value: exc.opt_str("value")?,
        };

        let mut modules = Vec::new();
        for (i, m) in root
            .array("modules", limits::MAX_MODULES)?
            .iter()
            .enumerate()
        {
            let m = Obj::of(format!("{}[{i}]", root.field("modules")), m)?;
            let debug_id = match m.opt_str("debug_id")? {
                Some(s) => Some(s.parse::<DebugId>().map_err(|_| {
                    EventError::new(m.field("debug_id"), format!("{s:?} is not a debug id"))
                })?),
                None => None,
            };
            let code_id = m.opt_str("code_id")?;
            if let Some(c) = &code_id {
                if !c.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(EventError::new(m.field("code_id"), "must be hexadecimal"));
                }
            }
            let image_size = m
                .get("image_size")
                .map(|v| m.addr("image_size", v))
                .transpose()?;
            let ty = m.req_str("type")?;
            let code_id = code_id.map(|c| c.to_ascii_lowercase());
            modules.push(Module {
                debug_id: debug_id.or_else(|| debug_id_from_code_id(&ty, code_id.as_deref()?)),
                ty,
                code_file: m.opt_str("code_file")?,
                debug_file: m.opt_str("debug_file")?,
                code_id,
                image_addr: m.addr("image_addr", m.req("image_addr")?)?,
                image_size,
            });
        }

        let mut threads = Vec::new();
        for (i, t) in root
            .array("threads", limits::MAX_THREADS)?
            .iter()
            .enumerate()
        {
            let t = Obj::of(format!("{}[{i}]", root.field("threads")), t)?;
            let id = match t.get("id") {
                Some(v) => Some(v.as_u64().ok_or_else(|| {
                    EventError::new(t.field("id"), "expected a non-negative integer")
                })?),
                None => None,
            };
            let crashed = match t.get("crashed") {
                Some(Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(EventError::new(
                        t.field("crashed"),
                        format!("expected a boolean, found {}", type_name(other)),
                    ))
                }
                None => false,
            };
            let mut frames = Vec::new();
            for (j, f) in t.array("frames", limits::MAX_FRAMES)?.iter().enumerate() {
                let f = Obj::of(format!("{}[{j}]", t.field("frames")), f)?;
                let instruction_addr = f.addr("instruction_addr", f.req("instruction_addr")?)?;
                let addr_mode = match f.opt_str("addr_mode")?.as_deref() {
                    None | Some("abs") => AddrMode::Abs,
                    Some(mode) => {
                        let n = mode
                            .strip_prefix("rel:")
                            .and_then(|n| n.parse::<usize>().ok())
                            .ok_or_else(|| {
                                EventError::new(
                                    f.field("addr_mode"),
                                    format!("expected \"abs\" or \"rel:N\", found {mode:?}"),
                                )
                            })?;
                        if n >= modules.len() {
                            return Err(EventError::new(
                                f.field("addr_mode"),
                                format!(
                                    "refers to module {n}, but the event has {} modules",
                                    modules.len()
                                ),
                            ));
                        }
                        // The absolute address is image_addr + offset: it must exist.
                        if modules[n]
                            .image_addr
                            .checked_add(instruction_addr)
                            .is_none()
                        {
                            return Err(EventError::new(
                                f.field("instruction_addr"),
                                format!(
                                    "offset {instruction_addr:#x} past module {n}'s image_addr \
                                     {:#x} overflows a 64-bit address",
                                    modules[n].image_addr
                                ),
                            ));
                        }
                        AddrMode::Rel(n)
                    }
                };
                frames.push(Frame {
                    instruction_addr,
                    addr_mode,
                });
            }
            threads.push(Thread {
                id,
                name: t.opt_str("name")?,
                crashed,
                frames,
            });
        }

        Ok(CrashEvent {
            event_id,
            timestamp_ms,
            app,
            platform,
            os,
            device_model,
            user_id,
            exception,
            modules,
            threads,
        })
    }

    /// Validates an already parsed JSON value.
    pub fn from_value(value: &Value) -> Result<Self, EventError> {
        Self::from_value_at(value, "")
    }

    /// The Unix second the crash happened in.
    pub fn unix_second(&self) -> u64 {
        u64::try_from(self.timestamp_ms.div_euclid(1000)).unwrap_or(0)
    }
}

mod hex_u64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{v:#x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        super::parse_addr(&v).map_err(serde::de::Error::custom)
    }
}

mod timestamp_secs {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(*ms as f64 / 1000.0)
    }
}

mod device_model {
    use serde::ser::SerializeMap;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("model", v)?;
        m.end()
    }
}

mod user_id {
    use serde::ser::SerializeMap;
    use serde::Serializer;

    pub fn serialize<S: Serializer>(v: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(1))?;
        m.serialize_entry("id", v)?;
        m.end()
    }
}
