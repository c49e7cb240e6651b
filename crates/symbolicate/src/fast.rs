//! The typed fast path for parsing events: `serde` straight into borrowed structs, then the
//! same rules as the field-by-field validation in `event.rs`. It answers `None` for anything it
//! does not accept outright; the caller then runs the authoritative validation, which produces
//! the field-naming error. So a rule may be checked here more strictly than there, never less
//! (`tests/symbolicate/events.rs` checks both paths agree on every rejection case).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use symbolic::common::DebugId;

use crate::event::{
    debug_id_from_code_id, limits, parse_hex, parse_rfc3339, seconds_to_ms, AddrMode, App,
    CrashEvent, Exception, Frame, Module, Os, Thread,
};

/// An address: hex string or non-negative integer.
struct Addr(Option<u64>);

impl<'de> Deserialize<'de> for Addr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Addr;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Addr, E> {
                Ok(Addr(Some(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Addr, E> {
                Ok(Addr(u64::try_from(v).ok()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Addr, E> {
                Ok(Addr(None))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Addr, E> {
                Ok(Addr(parse_hex(v).ok()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A timestamp: Unix seconds or RFC 3339.
struct Timestamp(Option<i64>);

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a timestamp")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Timestamp, E> {
                Ok(Timestamp(seconds_to_ms(v as f64)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Ok(Timestamp(seconds_to_ms(v as f64)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Timestamp, E> {
                Ok(Timestamp(seconds_to_ms(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Timestamp, E> {
                Ok(Timestamp(parse_rfc3339(v)))
            }
        }
        d.deserialize_any(V)
    }
}

type Str<'a> = Cow<'a, str>;

#[derive(Deserialize)]
struct RawApp<'a> {
    #[serde(borrow)]
    id: Str<'a>,
    #[serde(borrow)]
    version: Str<'a>,
    #[serde(borrow)]
    build: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct RawOs<'a> {
    #[serde(borrow)]
    name: Str<'a>,
    #[serde(borrow)]
    version: Str<'a>,
}

#[derive(Deserialize)]
struct RawDevice<'a> {
    #[serde(borrow)]
    model: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct RawUser<'a> {
    #[serde(borrow)]
    id: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct RawException<'a> {
    #[serde(rename = "type", borrow)]
    ty: Str<'a>,
    #[serde(borrow)]
    value: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct RawModule<'a> {
    #[serde(rename = "type", borrow)]
    ty: Str<'a>,
    #[serde(borrow)]
    code_file: Option<Str<'a>>,
    #[serde(borrow)]
    debug_file: Option<Str<'a>>,
    #[serde(borrow)]
    debug_id: Option<Str<'a>>,
    #[serde(borrow)]
    code_id: Option<Str<'a>>,
    image_addr: Addr,
    image_size: Option<Addr>,
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    instruction_addr: Addr,
    #[serde(borrow)]
    addr_mode: Option<Str<'a>>,
}

#[derive(Deserialize)]
struct RawThread<'a> {
    id: Option<u64>,
    #[serde(borrow)]
    name: Option<Str<'a>>,
    crashed: Option<bool>,
    #[serde(borrow)]
    frames: Vec<RawFrame<'a>>,
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow)]
    event_id: Str<'a>,
    timestamp: Timestamp,
    #[serde(borrow)]
    app: RawApp<'a>,
    #[serde(borrow)]
    platform: Str<'a>,
    #[serde(borrow)]
    os: RawOs<'a>,
    #[serde(borrow)]
    device: Option<RawDevice<'a>>,
    #[serde(borrow)]
    user: Option<RawUser<'a>>,
    #[serde(borrow)]
    exception: RawException<'a>,
    #[serde(borrow)]
    modules: Vec<RawModule<'a>>,
    #[serde(borrow)]
    threads: Vec<RawThread<'a>>,
}

fn s(v: Str<'_>) -> Option<String> {
    (!v.is_empty() && v.len() <= limits::MAX_STRING).then(|| v.into_owned())
}

fn opt(v: Option<Str<'_>>) -> Option<Option<String>> {
    match v {
        None => Some(None),
        Some(v) => s(v).map(Some),
    }
}

fn convert(raw: RawEvent<'_>) -> Option<CrashEvent> {
    let event_id = s(raw.event_id).filter(|id| id.len() <= 128)?;
    let timestamp_ms = raw.timestamp.0?;
    let app = App {
        id: s(raw.app.id)?,
        version: s(raw.app.version)?,
        build: opt(raw.app.build)?,
    };
    let platform = s(raw.platform)?;
    let os = Os {
        name: s(raw.os.name)?,
        version: s(raw.os.version)?,
    };
    let device_model = match raw.device {
        Some(d) => opt(d.model)?,
        None => None,
    };
    let user_id = match raw.user {
        Some(u) => opt(u.id)?,
        None => None,
    };
    let exception = Exception {
        ty: s(raw.exception.ty)?,
        value: opt(raw.exception.value)?,
    };
    if raw.modules.len() > limits::MAX_MODULES || raw.threads.len() > limits::MAX_THREADS {
        return None;
    }
    let mut modules = Vec::with_capacity(raw.modules.len());
    for m in raw.modules {
        let debug_id = match opt(m.debug_id)? {
            Some(id) => Some(id.parse::<DebugId>().ok()?),
            None => None,
        };
        let code_id = opt(m.code_id)?;
        if code_id
            .as_ref()
            .is_some_and(|c| !c.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return None;
        }
        let image_size = match m.image_size {
            Some(a) => Some(a.0?),
            None => None,
        };
        let ty = s(m.ty)?;
        let code_id = code_id.map(|c| c.to_ascii_lowercase());
        modules.push(Module {
            debug_id: debug_id.or_else(|| debug_id_from_code_id(&ty, code_id.as_deref()?)),
            ty,
            code_file: opt(m.code_file)?,
            debug_file: opt(m.debug_file)?,
            code_id,
            image_addr: m.image_addr.0?,
            image_size,
        });
    }
    let mut threads = Vec::with_capacity(raw.threads.len());
    for t in raw.threads {
        if t.frames.len() > limits::MAX_FRAMES {
            return None;
        }
        let mut frames = Vec::with_capacity(t.frames.len());
        for f in t.frames {
            let instruction_addr = f.instruction_addr.0?;
            let addr_mode = match opt(f.addr_mode)?.as_deref() {
                None | Some("abs") => AddrMode::Abs,
                Some(mode) => {
                    let n = mode.strip_prefix("rel:")?.parse::<usize>().ok()?;
                    // An unknown module or an overflowing address: the slow path says which.
                    modules.get(n)?.image_addr.checked_add(instruction_addr)?;
                    AddrMode::Rel(n)
                }
            };
            frames.push(Frame {
                instruction_addr,
                addr_mode,
            });
        }
        threads.push(Thread {
            id: t.id,
            name: opt(t.name)?,
            crashed: t.crashed.unwrap_or(false),
            frames,
        });
    }
    Some(CrashEvent {
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

/// One event, if it is valid.
pub(crate) fn event(text: &[u8]) -> Option<CrashEvent> {
    convert(serde_json::from_slice::<RawEvent<'_>>(text).ok()?)
}

/// A non-empty array of valid events, or a single valid event.
pub(crate) fn batch(text: &[u8]) -> Option<Vec<CrashEvent>> {
    let first = text.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first == b'[' {
        let raws = serde_json::from_slice::<Vec<RawEvent<'_>>>(text).ok()?;
        if raws.is_empty() {
            return None;
        }
        raws.into_iter().map(convert).collect()
    } else {
        event(text).map(|e| vec![e])
    }
}
