//! Reading debug files: which objects a file holds and how each is identified.
//!
//! A debug file is identified exactly as `symbolic` derives it: the `debug_id` (for ELF the
//! GNU build-id note read as a little-endian UUID, falling back to a hash of the first page of
//! `.text`; for Mach-O the `LC_UUID`; for PE/PDB the CodeView GUID and age; for Breakpad the
//! `MODULE` record) and the `code_id` (the full ELF build-id, the Mach-O UUID, or the PE
//! timestamp and size). A fat Mach-O archive holds one object per architecture; each is listed.

use serde::{Deserialize, Serialize};
use symbolic::common::DebugId;
use symbolic::debuginfo::{Archive, FileFormat, Object, ObjectKind};

/// Why a file was refused as a debug file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// The file is of no format crashgrid reads.
    #[error("unsupported file format (expected ELF, Mach-O, PE, PDB or Breakpad .sym)")]
    UnsupportedFormat,
    /// The file claims a known format but cannot be parsed.
    #[error("malformed {format} file: {reason}")]
    Malformed {
        /// The format the file claims to be.
        format: String,
        /// The parser's complaint.
        reason: String,
    },
    /// The file parsed, but contains nothing to symbolicate with.
    #[error("{format} file {debug_id} has neither debug information nor a symbol table")]
    NoSymbols {
        /// The format of the file.
        format: String,
        /// The object's debug id.
        debug_id: DebugId,
    },
}

/// One object inside a debug file, as identified by `symbolic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectInfo {
    /// The debug identifier (`symbolic`'s `DebugId`), e.g. `"3249d99d-0c40-7b5a-9e38-4a9f0b7f1c2e"`.
    pub debug_id: DebugId,
    /// The code identifier, where the format has one (hex, lowercase).
    pub code_id: Option<String>,
    /// `elf`, `macho`, `pe`, `pdb` or `breakpad`.
    pub format: String,
    /// `exe`, `lib`, `dbg`, ... as `symbolic` classifies it (`ObjectKind::name`).
    pub kind: String,
    /// The CPU architecture, e.g. `x86_64`, `arm64`.
    pub arch: String,
    /// Whether the object has DWARF/PDB/line information (inline frames, files, lines).
    pub has_debug_info: bool,
    /// Whether the object has a symbol table (function names only).
    pub has_symbols: bool,
}

impl ObjectInfo {
    /// Whether the object can symbolicate anything at all.
    pub fn is_usable(&self) -> bool {
        self.has_debug_info || self.has_symbols
    }
}

fn format_name(format: FileFormat) -> String {
    format.name().to_string()
}

fn kind_name(kind: ObjectKind) -> String {
    kind.name().to_string()
}

pub(crate) fn describe(object: &Object<'_>) -> ObjectInfo {
    ObjectInfo {
        debug_id: object.debug_id(),
        code_id: object.code_id().map(|id| id.as_str().to_string()),
        format: format_name(object.file_format()),
        kind: kind_name(object.kind()),
        arch: object.arch().name().to_string(),
        has_debug_info: object.has_debug_info(),
        has_symbols: object.has_symbols(),
    }
}

/// Parses a whole file as an archive of objects (a single object is an archive of one).
pub(crate) fn parse_archive(data: &[u8]) -> Result<Archive<'_>, ObjectError> {
    let format = Archive::peek(data);
    if matches!(
        format,
        FileFormat::Unknown | FileFormat::SourceBundle | FileFormat::Wasm | FileFormat::PortablePdb
    ) {
        return Err(ObjectError::UnsupportedFormat);
    }
    Archive::parse(data).map_err(|e| ObjectError::Malformed {
        format: format_name(format),
        reason: e.to_string(),
    })
}

/// Lists the objects of a debug file, refusing files crashgrid cannot use.
///
/// Every object must parse; an object without debug information and without symbols is
/// refused with [`ObjectError::NoSymbols`], since storing it could never symbolicate a frame.
pub fn inspect(data: &[u8]) -> Result<Vec<ObjectInfo>, ObjectError> {
    let archive = parse_archive(data)?;
    let format = format_name(archive.file_format());
    let mut infos = Vec::new();
    for object in archive.objects() {
        let object = object.map_err(|e| ObjectError::Malformed {
            format: format.clone(),
            reason: e.to_string(),
        })?;
        let info = describe(&object);
        if !info.is_usable() {
            return Err(ObjectError::NoSymbols {
                format,
                debug_id: info.debug_id,
            });
        }
        infos.push(info);
    }
    if infos.is_empty() {
        return Err(ObjectError::Malformed {
            format,
            reason: "the archive contains no objects".into(),
        });
    }
    Ok(infos)
}

/// Finds the object with `debug_id` in a parsed archive.
pub(crate) fn select<'d>(
    archive: &Archive<'d>,
    debug_id: &DebugId,
) -> Result<Option<Object<'d>>, ObjectError> {
    let format = format_name(archive.file_format());
    for object in archive.objects() {
        let object = object.map_err(|e| ObjectError::Malformed {
            format: format.clone(),
            reason: e.to_string(),
        })?;
        if &object.debug_id() == debug_id {
            return Ok(Some(object));
        }
    }
    Ok(None)
}
