//! Crash grouping: which crashes are "the same crash".
//!
//! The fingerprint hashes the exception type with the top [`FRAMES`] in-app frames of the
//! crashed thread (the first thread when none is marked crashed), innermost first, inlined
//! frames included. A symbolicated frame contributes its demangled function name — never an
//! address or a line number, so a rebuild that moves code, or a fix two lines away, keeps the
//! group. An unsymbolicated frame falls back to `module+0xoffset` (module-relative, so ASLR does
//! not split groups). When no frame is in-app, all frames are used, so system-only crashes
//! still group. The hash is SipHash-1-3 with fixed keys: every pod computes the same id.

use std::hash::Hasher;

use siphasher::sip::SipHasher13;
use symbolicate::{SymbolicatedCrash, SymbolicatedFrame};

/// How many frames make the signature.
pub const FRAMES: usize = 5;

/// Which modules are the app's own code: patterns on the module's file name (`*` matches any
/// run of characters). An empty list means every module is in-app.
#[derive(Debug, Clone, Default)]
pub struct InApp {
    patterns: Vec<String>,
}

fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

impl InApp {
    /// In-app patterns, e.g. `["libgame*.so", "Game"]`.
    pub fn new(patterns: Vec<String>) -> Self {
        Self { patterns }
    }

    /// Whether a module (by its code file path) is in-app.
    pub fn matches(&self, code_file: Option<&str>) -> bool {
        if self.patterns.is_empty() {
            return true;
        }
        let Some(path) = code_file else { return false };
        let name = path.rsplit(['/', '\\']).next().unwrap_or(path);
        self.patterns.iter().any(|p| glob(p, name))
    }
}

/// A crash group: its id (16 hex digits) and a human title.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Stable id of the group.
    pub id: String,
    /// e.g. `SIGSEGV: game::physics::Body::step(int, double)`.
    pub title: String,
    /// The frames that made the signature, as hashed.
    pub signature: Vec<String>,
}

fn frame_key(crash: &SymbolicatedCrash, frame: &SymbolicatedFrame) -> String {
    match &frame.source {
        Some(source) => source.function.to_string(),
        None => {
            let module = frame
                .module_index
                .and_then(|i| crash.modules.get(i))
                .and_then(|m| m.module.code_file.as_deref())
                .map(|p| p.rsplit(['/', '\\']).next().unwrap_or(p).to_string());
            match (module, frame.module_index.map(|i| &crash.modules[i])) {
                (Some(name), Some(m)) => format!(
                    "{name}+{:#x}",
                    frame.instruction_addr.wrapping_sub(m.module.image_addr)
                ),
                _ => "<unknown>".to_string(),
            }
        }
    }
}

/// Computes the group of a symbolicated crash.
pub fn fingerprint(crash: &SymbolicatedCrash, in_app: &InApp) -> Group {
    let thread = crash
        .threads
        .iter()
        .find(|t| t.crashed)
        .or_else(|| crash.threads.first());
    let frames: Vec<&SymbolicatedFrame> = thread
        .map(|t| t.frames.iter().collect())
        .unwrap_or_default();
    let is_in_app = |f: &&SymbolicatedFrame| {
        f.module_index
            .and_then(|i| crash.modules.get(i))
            .is_some_and(|m| in_app.matches(m.module.code_file.as_deref()))
    };
    let mut chosen: Vec<&SymbolicatedFrame> = frames
        .iter()
        .copied()
        .filter(is_in_app)
        .take(FRAMES)
        .collect();
    if chosen.is_empty() {
        chosen = frames.iter().copied().take(FRAMES).collect();
    }
    let signature: Vec<String> = chosen.iter().map(|f| frame_key(crash, f)).collect();
    let mut hasher = SipHasher13::new_with_keys(0x6372_6173_6867_7269, 0x6467_726f_7570_7331);
    hasher.write(crash.event.exception.ty.as_bytes());
    for key in &signature {
        hasher.write_u8(0);
        hasher.write(key.as_bytes());
    }
    let id = format!("{:016x}", hasher.finish());
    let title = format!(
        "{}: {}",
        crash.event.exception.ty,
        signature
            .first()
            .map(String::as_str)
            .unwrap_or("<no frames>")
    );
    Group {
        id,
        title,
        signature,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        assert!(glob("libgame*", "libgame.so"));
        assert!(glob("*.so", "libgame.so"));
        assert!(glob("lib*game*.so", "libsupergame2.so"));
        assert!(!glob("lib*game*.so", "libsupergame2.dylib"));
        assert!(glob("Game", "Game"));
        assert!(!glob("Game", "GameKit"));
    }

    #[test]
    fn in_app_by_file_name() {
        let in_app = InApp::new(vec!["libgame*".into()]);
        assert!(in_app.matches(Some("/data/app/lib/arm64/libgame.so")));
        assert!(!in_app.matches(Some("/system/lib64/libc.so")));
        assert!(!in_app.matches(None));
        assert!(InApp::default().matches(None));
    }
}
