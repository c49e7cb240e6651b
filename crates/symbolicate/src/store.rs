//! The symbol store: debug files on local disk in the symbol-server layout.
//!
//! ```text
//! <root>/<debug_file>/<DEBUG_ID>/<file>      the debug file itself (DEBUG_ID in Breakpad form)
//! <root>/.index/<debug-id>.json              which stored file answers for that debug id
//! ```
//!
//! `<debug_file>` is the name the file was uploaded under (for a Breakpad `.sym` its `MODULE`
//! name), `<DEBUG_ID>` is the upper-case Breakpad form of the id (`symstore`/`dump_syms`
//! convention), so the tree can be served by any symbol server. A fat Mach-O archive is stored
//! once under each of its objects' ids. The index maps a debug id alone to its file; it is one
//! small JSON file per id, written by atomic rename, so concurrent imports never corrupt it.
//!
//! When two files share a debug id (an executable and its split debug companion share the ELF
//! build-id), the one with debug information wins; between equals, the newest import wins. A
//! losing file with the same name as the winner is not written at all, so it can never replace
//! the better file on disk.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use symbolic::common::DebugId;
use symbolic::debuginfo::{Archive, Object};

use crate::object::{inspect, ObjectError, ObjectInfo};

/// Errors of the symbol store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The file could not be read or the store could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a usable debug file.
    #[error("{name}: {source}")]
    Refused {
        /// The file's name.
        name: String,
        /// Why it was refused.
        source: ObjectError,
    },
    /// The upload name cannot be used as a path component (empty, `.`/`..`, a separator or
    /// NUL, or longer than `MAX_NAME_BYTES`, 200 bytes).
    #[error("invalid debug file name {0:?} (at most 200 bytes, no '/', '\\' or NUL)")]
    InvalidName(String),
}

/// Where a stored debug file is, and what it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// Path relative to the store root, in the symbol-server layout.
    pub path: String,
    /// The identity of the object this entry answers for.
    #[serde(flatten)]
    pub object: ObjectInfo,
}

/// What importing a file did to the index entry of one debug id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexChange {
    /// No file answered for the id before; this one does now.
    New,
    /// Another file (other bytes, or another path) answered for the id; this one does now.
    Replaced,
    /// The same file was imported again.
    Unchanged,
    /// The file was stored but the indexed one still answers (it has debug information and
    /// this one has not).
    NotIndexed,
}

/// A directory of debug files in the symbol-server layout, with an index by debug id.
#[derive(Debug, Clone)]
pub struct SymbolStore {
    root: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `data` to `path` atomically (temporary file in the same directory, then rename).
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".tmp-{}-{:?}-{}",
        std::process::id(),
        std::thread::current().id(),
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut file = fs::File::create(&tmp)?;
    file.write_all(data)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

/// Longest upload name, in bytes: file systems allow 255 per path component, and the store
/// writes through a temporary name that adds a prefix.
pub const MAX_NAME_BYTES: usize = 200;

fn valid_component(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && name != "."
        && name != ".."
        && !name.starts_with(".tmp-")
        && !name.contains(['/', '\\', '\0'])
        && name != ".index"
}

impl SymbolStore {
    /// Opens (creating if needed) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let index = root.join(".index");
        fs::create_dir_all(&index).map_err(io_err(&index))?;
        Ok(Self { root })
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn index_path(&self, debug_id: &DebugId) -> PathBuf {
        self.root.join(".index").join(format!("{debug_id}.json"))
    }

    /// Imports a file from disk under its own file name. See [`SymbolStore::add_bytes`].
    pub fn add_file(&self, path: &Path) -> Result<Vec<StoredFile>, StoreError> {
        let data = fs::read(path).map_err(io_err(path))?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| StoreError::InvalidName(path.display().to_string()))?;
        self.add_bytes(name, &data)
    }

    /// Imports a debug file given its name and contents: reads its objects' ids, places it in
    /// the layout once per object and indexes each id. A file that cannot be parsed, or holds
    /// nothing usable, is refused with the reason and nothing is written.
    pub fn add_bytes(&self, name: &str, data: &[u8]) -> Result<Vec<StoredFile>, StoreError> {
        Ok(self
            .add_bytes_changes(name, data)?
            .into_iter()
            .map(|(f, _)| f)
            .collect())
    }

    /// [`add_bytes`](Self::add_bytes), also telling per object what happened to the index
    /// entry of its debug id (caches of symbolication results use it: only a
    /// [`Replaced`](IndexChange::Replaced) entry can make results computed earlier wrong).
    pub fn add_bytes_changes(
        &self,
        name: &str,
        data: &[u8],
    ) -> Result<Vec<(StoredFile, IndexChange)>, StoreError> {
        if !valid_component(name) {
            return Err(StoreError::InvalidName(name.to_string()));
        }
        let objects = inspect(data).map_err(|source| StoreError::Refused {
            name: name.to_string(),
            source,
        })?;
        let debug_file = breakpad_module_name(data).unwrap_or_else(|| name.to_string());
        let debug_file = if valid_component(&debug_file) {
            debug_file
        } else {
            name.to_string()
        };
        let mut stored = Vec::with_capacity(objects.len());
        for object in objects {
            let rel = format!("{}/{}/{}", debug_file, object.debug_id.breakpad(), name);
            let path = self.root.join(&rel);
            let entry = StoredFile { path: rel, object };
            let old = self.entry(&entry.object.debug_id);
            let index_it = match &old {
                Some(old) => entry.object.has_debug_info || !old.object.has_debug_info,
                None => true,
            };
            let change = match &old {
                _ if !index_it => IndexChange::NotIndexed,
                None => IndexChange::New,
                Some(old)
                    if old.path == entry.path
                        && fs::read(self.root.join(&old.path)).is_ok_and(|b| b == data) =>
                {
                    IndexChange::Unchanged
                }
                Some(_) => IndexChange::Replaced,
            };
            // A file that loses to the indexed one must not overwrite it when both have the
            // same name (a dSYM's DWARF file and its executable; an ELF and its debug file).
            let keep_existing = !index_it && old.is_some_and(|old| old.path == entry.path);
            if !keep_existing {
                write_atomic(&path, data).map_err(io_err(&path))?;
            }
            if index_it {
                let index = self.index_path(&entry.object.debug_id);
                let json = serde_json::to_vec(&entry).expect("StoredFile serializes");
                write_atomic(&index, &json).map_err(io_err(&index))?;
            }
            stored.push((entry, change));
        }
        Ok(stored)
    }

    /// The index entry for `debug_id`, if a file is stored for it.
    pub fn entry(&self, debug_id: &DebugId) -> Option<StoredFile> {
        let data = fs::read(self.index_path(debug_id)).ok()?;
        serde_json::from_slice(&data).ok()
    }

    /// The absolute path of the file answering for `debug_id`.
    pub fn find(&self, debug_id: &DebugId) -> Option<PathBuf> {
        self.entry(debug_id).map(|e| self.root.join(e.path))
    }

    /// Every indexed debug file.
    pub fn list(&self) -> Vec<StoredFile> {
        let mut out = Vec::new();
        if let Ok(dir) = fs::read_dir(self.root.join(".index")) {
            for entry in dir.flatten() {
                if let Ok(data) = fs::read(entry.path()) {
                    if let Ok(file) = serde_json::from_slice::<StoredFile>(&data) {
                        out.push(file);
                    }
                }
            }
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        out
    }
}

/// The `MODULE` name of a Breakpad file, which names its debug file.
fn breakpad_module_name(data: &[u8]) -> Option<String> {
    let archive = Archive::parse(data).ok()?;
    match archive.objects().next()?.ok()? {
        Object::Breakpad(b) => Some(b.name().to_string()),
        _ => None,
    }
}
