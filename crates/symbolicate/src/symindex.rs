//! Our own reader of the SymCache format, and the lazily filled per-index tables that memoize
//! what a lookup returns.
//!
//! # Why not `symbolic`'s reader
//!
//! `symbolic::symcache::SymCache::lookup` hands out a `File` per source location whose strings
//! and index are private, so its full path (two `join_path`s, a `clean_path` and an allocation)
//! had to be recomputed for every frame, about half of a warm lookup. Reading the format
//! ourselves gives every lookup the *indices* of its file and function, so the symbolicator
//! computes each full path and each demangled name once per SymCache (see `NameMemo` in
//! `symbolicator.rs`) and a warm lookup is a binary search plus a few shared-string clones.
//!
//! # The format (versions 7 and 8, as `symbolic-symcache` 12 writes and reads them)
//!
//! All integers are `u32` in the writer's byte order (a byte-swapped magic is refused):
//!
//! ```text
//! magic "SYMC", version                                                       8 bytes
//! header: debug id (32 bytes), arch, num_files, num_functions,
//!         num_source_locations, num_ranges, string_bytes, 16 reserved bytes  72 bytes
//! pad to 8, files:            num_files × (comp_dir, directory, name) string offsets
//! pad to 8, functions:        num_functions × (name, comp_dir, entry_pc, language)
//! pad to 8, source locations: num_source_locations × (file, line, function, inlined_into)
//! pad to 8, ranges:           num_ranges × start address
//! pad to 8, strings:          at least string_bytes bytes, each string length-prefixed
//!                             (v8: LEB128 length; v7: a u32 length)
//! ```
//!
//! `u32::MAX` means "none" for string offsets and indices. Range `i` covers
//! `[start_i, start_{i+1})` and maps to source location `num_source_locations - num_ranges + i`;
//! that location's `inlined_into` chain, followed until `u32::MAX`, is the inline stack,
//! innermost first. A location whose four fields are all `u32::MAX` marks a gap (no symbol).
//!
//! # Equivalence with `symbolic`
//!
//! [`SymLayout::parse`] performs the checks `SymCache::parse` performs, in the same order and
//! with the same messages, including its alignment rule: padding is computed from the *address*
//! of the bytes, as `symbolic` does (the writer assumes an 8-aligned start; a memory map or a
//! heap buffer is one). [`SymReader::lookup`] uses the same binary search shape as the standard
//! library's `binary_search_by` that `symbolic` calls, so even ranges that are not sorted (which
//! the writer never produces) resolve to the same entry, and the same wrapping index arithmetic
//! as `symbolic` built in release mode. Out-of-range file or function indices, unreadable strings
//! and a missing name resolve exactly as there (no file; function `?` of unknown language).
//! The one deliberate difference: an `inlined_into` cycle, on which `symbolic` would loop
//! forever, ends after `num_source_locations` steps. Everything is bounds-checked safe code; a
//! corrupt file yields an error at load or odd answers, never a panic.
//!
//! `tests/symbolicate/symcache_reader.rs` checks the answers against `symbolic`'s own lookup
//! for every address of real binaries and the Breakpad fixture; the unit tests below check the
//! parser's verdicts against `SymCache::parse` on every truncation of a real SymCache, and the
//! lookups on hand-made odd and corrupt tables.

use std::sync::OnceLock;

/// `"SYMC"` as the writer's native `u32`.
const MAGIC: u32 = u32::from_le_bytes(*b"SYMC");
/// Size of the magic and version preamble.
const PREAMBLE: usize = 8;
/// Size of the header that follows the preamble.
const HEADER: usize = 72;
/// Bytes per file record (three string offsets).
const FILE_SIZE: usize = 12;
/// Bytes per function record.
const FUNCTION_SIZE: usize = 16;
/// Bytes per source location record.
const LOCATION_SIZE: usize = 16;
/// Bytes per range record.
const RANGE_SIZE: usize = 4;
/// "No such string / index".
const NONE: u32 = u32::MAX;

/// Why bytes are not a readable SymCache. The messages are `symbolic`'s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum LayoutError {
    /// The magic is byte-swapped: written on a machine of the other endianness.
    #[error("endianness mismatch")]
    WrongEndianness,
    /// Not a SymCache.
    #[error("wrong format magic")]
    WrongFormat,
    /// A SymCache version other than 7 or 8.
    #[error("unknown SymCache version")]
    WrongVersion,
    /// The preamble or header is truncated or misaligned.
    #[error("could not read header")]
    InvalidHeader,
    /// The file table is truncated.
    #[error("could not read files")]
    InvalidFiles,
    /// The function table is truncated.
    #[error("could not read functions")]
    InvalidFunctions,
    /// The source location table is truncated.
    #[error("could not read source locations")]
    InvalidSourceLocations,
    /// The range table is truncated.
    #[error("could not read ranges")]
    InvalidRanges,
    /// Fewer string bytes than the header announces.
    #[error("expected {expected} string bytes, found {found}")]
    UnexpectedStringBytes {
        /// Announced.
        expected: usize,
        /// Present.
        found: usize,
    },
}

/// Where the tables of one SymCache buffer are: validated once at load, then used to slice the
/// same buffer (at the same address) for every lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SymLayout {
    version: u32,
    arch: u32,
    num_files: u32,
    num_functions: u32,
    num_locations: u32,
    num_ranges: u32,
    files: usize,
    functions: usize,
    locations: usize,
    ranges: usize,
    strings: usize,
}

/// The `u32` at byte `at`, if the bytes hold one there.
#[inline]
fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    bytes
        .get(at..)?
        .first_chunk::<4>()
        .map(|b| u32::from_ne_bytes(*b))
}

impl SymLayout {
    /// Validates `bytes` as a SymCache (the checks of `symbolic`'s `SymCache::parse`).
    pub(crate) fn parse(bytes: &[u8]) -> Result<Self, LayoutError> {
        let aligned4 = bytes.as_ptr().align_offset(4) == 0;
        if bytes.len() < PREAMBLE || !aligned4 {
            return Err(LayoutError::InvalidHeader);
        }
        let magic = u32_at(bytes, 0).ok_or(LayoutError::InvalidHeader)?;
        if magic == MAGIC.swap_bytes() {
            return Err(LayoutError::WrongEndianness);
        }
        if magic != MAGIC {
            return Err(LayoutError::WrongFormat);
        }
        let version = u32_at(bytes, 4).ok_or(LayoutError::InvalidHeader)?;
        if version != 7 && version != 8 {
            return Err(LayoutError::WrongVersion);
        }
        if bytes.len() < PREAMBLE + HEADER {
            return Err(LayoutError::InvalidHeader);
        }
        let field = |i: usize| u32_at(bytes, PREAMBLE + 32 + 4 * i).unwrap_or_default();
        let (arch, num_files, num_functions) = (field(0), field(1), field(2));
        let (num_locations, num_ranges, string_bytes) = (field(3), field(4), field(5));

        // One table: pad the position to 8 (by address, as `symbolic` does), then `count`
        // records of `size` bytes. Returns where the table starts and where it ends.
        let table = |at: usize, count: u32, size: usize, error: LayoutError| {
            let start = align8(bytes, at).ok_or(error)?;
            let len = size.checked_mul(count as usize).ok_or(error)?;
            if bytes.len() - start < len {
                return Err(error);
            }
            Ok((start, start + len))
        };
        let (files, end) = table(
            PREAMBLE + HEADER,
            num_files,
            FILE_SIZE,
            LayoutError::InvalidFiles,
        )?;
        let (functions, end) = table(
            end,
            num_functions,
            FUNCTION_SIZE,
            LayoutError::InvalidFunctions,
        )?;
        let (locations, end) = table(
            end,
            num_locations,
            LOCATION_SIZE,
            LayoutError::InvalidSourceLocations,
        )?;
        let (ranges, end) = table(end, num_ranges, RANGE_SIZE, LayoutError::InvalidRanges)?;
        let expected = string_bytes as usize;
        let strings =
            align8(bytes, end).ok_or(LayoutError::UnexpectedStringBytes { expected, found: 0 })?;
        let found = bytes.len() - strings;
        if found < expected {
            return Err(LayoutError::UnexpectedStringBytes { expected, found });
        }
        Ok(Self {
            version,
            arch,
            num_files,
            num_functions,
            num_locations,
            num_ranges,
            files,
            functions,
            locations,
            ranges,
            strings,
        })
    }

    /// The format version (7 or 8).
    pub(crate) fn version(&self) -> u32 {
        self.version
    }

    /// The architecture as stored (see `Arch::from_u32`).
    pub(crate) fn arch(&self) -> u32 {
        self.arch
    }

    /// Number of file records.
    pub(crate) fn num_files(&self) -> u32 {
        self.num_files
    }

    /// Number of function records.
    pub(crate) fn num_functions(&self) -> u32 {
        self.num_functions
    }
}

/// `at` moved forward to the next position whose address is 8-aligned, if the bytes reach it.
fn align8(bytes: &[u8], at: usize) -> Option<usize> {
    let rest = bytes.get(at..)?;
    let pad = rest.as_ptr().align_offset(8);
    (pad <= rest.len()).then_some(at + pad)
}

/// One source location: a function at a line of a file, possibly inlined into another location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Location {
    /// Index of the file record (`u32::MAX` or out of range: no file).
    pub(crate) file: u32,
    /// Line number (0: unknown).
    pub(crate) line: u32,
    /// Index of the function record (`u32::MAX` or out of range: the unknown function `?`).
    pub(crate) function: u32,
    /// Index of the location this one was inlined into (`u32::MAX`: none).
    pub(crate) inlined_into: u32,
}

/// The gap marker: no symbol covers the range.
const NO_LOCATION: Location = Location {
    file: NONE,
    line: NONE,
    function: NONE,
    inlined_into: NONE,
};

/// A function record's name (`?` when unreadable) and language (as stored, see
/// `Language::from_u32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FunctionRecord<'a> {
    pub(crate) name: &'a str,
    pub(crate) language: u32,
}

/// A file record's strings, before joining.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileRecord<'a> {
    pub(crate) comp_dir: Option<&'a str>,
    pub(crate) directory: Option<&'a str>,
    /// Empty when unreadable.
    pub(crate) name: &'a str,
}

impl FileRecord<'_> {
    /// The full path, computed as `symbolic`'s `File::full_path`: compilation directory,
    /// directory and name joined, then cleaned.
    pub(crate) fn full_path(&self) -> String {
        use symbolic::common::{clean_path, join_path};
        let prefix = join_path(
            self.comp_dir.unwrap_or_default(),
            self.directory.unwrap_or_default(),
        );
        clean_path(&join_path(&prefix, self.name)).into_owned()
    }
}

/// A view of one SymCache's tables: cheap to make from the bytes and their [`SymLayout`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct SymReader<'a> {
    files: &'a [u8],
    functions: &'a [u8],
    locations: &'a [u8],
    ranges: &'a [u8],
    strings: &'a [u8],
    v8: bool,
    num_locations: u32,
    num_ranges: u32,
}

impl<'a> SymReader<'a> {
    /// A reader of `bytes`, which `layout` was parsed from (other bytes read as empty tables).
    pub(crate) fn new(bytes: &'a [u8], layout: &SymLayout) -> Self {
        let slice = |start: usize, count: u32, size: usize| {
            bytes
                .get(start..start.saturating_add(count as usize * size))
                .unwrap_or_default()
        };
        let files = slice(layout.files, layout.num_files, FILE_SIZE);
        let functions = slice(layout.functions, layout.num_functions, FUNCTION_SIZE);
        let locations = slice(layout.locations, layout.num_locations, LOCATION_SIZE);
        let ranges = slice(layout.ranges, layout.num_ranges, RANGE_SIZE);
        // Counts follow the tables actually present, so a mismatched layout reads as empty.
        Self {
            files,
            functions,
            locations,
            ranges,
            strings: bytes.get(layout.strings..).unwrap_or_default(),
            v8: layout.version >= 8,
            num_locations: (locations.len() / LOCATION_SIZE) as u32,
            num_ranges: (ranges.len() / RANGE_SIZE) as u32,
        }
    }

    /// The start address of range `i`.
    #[inline]
    fn range(&self, i: usize) -> u32 {
        u32_at(self.ranges, i * RANGE_SIZE).unwrap_or(NONE)
    }

    /// The source location record `i`, if there is one.
    #[inline]
    pub(crate) fn location(&self, i: u32) -> Option<Location> {
        let at = (i as usize).checked_mul(LOCATION_SIZE)?;
        let record = self.locations.get(at..)?.first_chunk::<LOCATION_SIZE>()?;
        let word =
            |k: usize| u32::from_ne_bytes([record[k], record[k + 1], record[k + 2], record[k + 3]]);
        Some(Location {
            file: word(0),
            line: word(4),
            function: word(8),
            inlined_into: word(12),
        })
    }

    /// The index of the range covering `addr`, searched exactly as `symbolic` does
    /// (`binary_search_by_key` on the start addresses): on an exact hit the index found, else
    /// the one before the insertion point, `None` before the first range.
    fn range_index(&self, addr: u32) -> Option<u32> {
        let mut size = self.num_ranges as usize;
        if size == 0 {
            return None;
        }
        // Halve the window, keeping the right half whenever its first start is <= addr; the
        // number of steps depends only on the length.
        let mut base = 0usize;
        while size > 1 {
            let half = size / 2;
            let mid = base + half;
            if self.range(mid) <= addr {
                base = mid;
            }
            size -= half;
        }
        let start = self.range(base);
        if start <= addr {
            Some(base as u32)
        } else {
            (base as u32).checked_sub(1)
        }
    }

    /// The inline stack at `addr`, innermost first: empty when no range covers it, when it
    /// lies in a gap, or when it does not fit the format's 32-bit addresses.
    pub(crate) fn lookup(&self, addr: u64) -> Locations<'a> {
        let first = u32::try_from(addr)
            .ok()
            .and_then(|addr| self.range_index(addr))
            .map_or(NONE, |range| {
                // `symbolic`'s arithmetic, wrapping as it does in release builds.
                let index = self
                    .num_locations
                    .wrapping_sub(self.num_ranges)
                    .wrapping_add(range);
                if self.location(index) == Some(NO_LOCATION) {
                    NONE
                } else {
                    index
                }
            });
        Locations {
            reader: *self,
            next: first,
            steps_left: self.num_locations,
        }
    }

    /// The string at `offset` of the string section (`None`: no string, or unreadable).
    pub(crate) fn string(&self, offset: u32) -> Option<&'a str> {
        let at = offset as usize;
        let (len, start) = if self.v8 {
            let (len, prefix) = read_leb128(self.strings.get(at..)?)?;
            (usize::try_from(len).ok()?, at + prefix)
        } else {
            if offset == NONE {
                return None;
            }
            (u32_at(self.strings, at)? as usize, at + 4)
        };
        let bytes = self.strings.get(start..start.checked_add(len)?)?;
        std::str::from_utf8(bytes).ok()
    }

    /// Function record `i`: `None` when out of range.
    pub(crate) fn function(&self, i: u32) -> Option<FunctionRecord<'a>> {
        let at = (i as usize).checked_mul(FUNCTION_SIZE)?;
        let record = self.functions.get(at..)?.first_chunk::<FUNCTION_SIZE>()?;
        let name = u32_at(record, 0)?;
        Some(FunctionRecord {
            name: self.string(name).unwrap_or("?"),
            language: u32_at(record, 12)?,
        })
    }

    /// File record `i`: `None` when out of range.
    pub(crate) fn file(&self, i: u32) -> Option<FileRecord<'a>> {
        let at = (i as usize).checked_mul(FILE_SIZE)?;
        let record = self.files.get(at..)?.first_chunk::<FILE_SIZE>()?;
        let string = |k: usize| u32_at(record, k).and_then(|o| self.string(o));
        Some(FileRecord {
            comp_dir: string(0),
            directory: string(4),
            name: string(8).unwrap_or_default(),
        })
    }
}

/// An unsigned LEB128 number at the start of `bytes` and the bytes it took, read as the `leb128`
/// crate (which `symbolic`'s string table uses) reads it: low 7 bits first, bits beyond 64
/// dropped, a tenth byte other than 0 or 1 an overflow (`None`), running out of bytes `None`.
fn read_leb128(bytes: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    let mut shift = 0u32;
    for (i, &byte) in bytes.iter().enumerate() {
        if shift == 63 && byte > 1 {
            return None;
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift += 7;
    }
    None
}

/// The inline stack of one address, innermost first (see [`SymReader::lookup`]).
#[derive(Debug, Clone)]
pub(crate) struct Locations<'a> {
    reader: SymReader<'a>,
    next: u32,
    /// A chain visits each location at most once unless it is cyclic (corrupt).
    steps_left: u32,
}

impl Iterator for Locations<'_> {
    type Item = Location;

    #[inline]
    fn next(&mut self) -> Option<Location> {
        if self.next == NONE || self.steps_left == 0 {
            return None;
        }
        self.steps_left -= 1;
        let location = self.reader.location(self.next)?;
        self.next = location.inlined_into;
        Some(location)
    }
}

/// A table of `len` values computed on first use, one per index, shared by threads. Storage is
/// allocated in chunks as they are first touched, so a huge SymCache of which a few functions
/// are ever looked up costs little.
pub(crate) struct LazyTable<T> {
    chunks: Box<[OnceLock<Chunk<T>>]>,
    len: usize,
}

/// [`CHUNK`] entries of a [`LazyTable`] (fewer in the last chunk).
type Chunk<T> = Box<[OnceLock<T>]>;

/// Values per chunk of a [`LazyTable`].
const CHUNK: usize = 256;

impl<T> LazyTable<T> {
    /// A table of `len` empty entries.
    pub(crate) fn new(len: usize) -> Self {
        Self {
            chunks: (0..len.div_ceil(CHUNK)).map(|_| OnceLock::new()).collect(),
            len,
        }
    }

    /// Entry `i`, computed by `init` if nobody has yet (concurrent callers wait for the first);
    /// `None` when `i` is out of range.
    #[inline]
    pub(crate) fn get_or_init(&self, i: usize, init: impl FnOnce() -> T) -> Option<&T> {
        let chunk = self.chunks.get(i / CHUNK)?.get_or_init(|| {
            let size = CHUNK.min(self.len - i / CHUNK * CHUNK);
            (0..size).map(|_| OnceLock::new()).collect()
        });
        Some(chunk.get(i % CHUNK)?.get_or_init(init))
    }

    /// Number of entries computed so far.
    pub(crate) fn filled(&self) -> usize {
        self.chunks
            .iter()
            .filter_map(OnceLock::get)
            .map(|c| c.iter().filter(|e| e.get().is_some()).count())
            .sum()
    }
}

impl<T> std::fmt::Debug for LazyTable<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyTable")
            .field("len", &self.len)
            .field("filled", &self.filled())
            .finish()
    }
}

fn lang_name(lang: symbolic::common::Language) -> &'static str {
    match lang {
        symbolic::common::Language::Unknown => "unknown",
        other => other.name(),
    }
}

/// What `symbolic`'s own reader answers for `addr`, in our frame type: the rule our reader
/// follows (tests check [`SymReader::lookup`] against it; not used on the lookup path).
#[doc(hidden)]
pub fn reference_lookup(
    cache: &symbolic::symcache::SymCache<'_>,
    addr: u64,
) -> Vec<crate::output::SourceFrame> {
    let mut frames: Vec<crate::output::SourceFrame> = cache
        .lookup(addr)
        .map(|loc| {
            let f = loc.function();
            crate::output::SourceFrame {
                function: crate::names::demangled_name(f.name(), f.language()).into(),
                raw_function: f.name().into(),
                abs_path: loc
                    .file()
                    .map(|f| f.full_path())
                    .filter(|p| !p.is_empty())
                    .map(std::sync::Arc::from),
                lineno: loc.line(),
                lang: lang_name(f.language()),
                inlined: true,
            }
        })
        .collect();
    if let Some(last) = frames.last_mut() {
        last.inlined = false;
    }
    frames
}

#[cfg(test)]
mod tests {
    use symbolic::common::DebugId;
    use symbolic::symcache::SymCache;

    use super::*;
    use crate::names::{lookup_in, NameMemo};
    use crate::output::SourceFrame;

    /// `bytes` copied into a buffer at an address that is `misalign` past a multiple of 8 (the
    /// allocator decides where a `Vec` starts; the readers pad by address).
    fn placed(bytes: &[u8], misalign: usize) -> (Vec<u8>, std::ops::Range<usize>) {
        let mut buf = vec![0u8; bytes.len() + 16];
        let start = buf.as_ptr().align_offset(8) + misalign;
        buf[start..start + bytes.len()].copy_from_slice(bytes);
        (buf, start..start + bytes.len())
    }

    /// Our answers for `addrs` (twice: computed, then memoized).
    fn ours(bytes: &[u8], addrs: &[u64]) -> Vec<Vec<SourceFrame>> {
        let layout = SymLayout::parse(bytes).expect("our parser accepts it");
        let reader = SymReader::new(bytes, &layout);
        let memo = NameMemo::new(&layout);
        let first: Vec<_> = addrs
            .iter()
            .map(|a| lookup_in(&reader, &memo, *a))
            .collect();
        let again: Vec<_> = addrs
            .iter()
            .map(|a| lookup_in(&reader, &memo, *a))
            .collect();
        assert_eq!(first, again, "memoized answers equal computed ones");
        first
    }

    /// Every address up to `end`, and some that do not fit 32 bits (one truncating onto `addr`).
    fn addresses(end: u64) -> Vec<u64> {
        let mut addrs: Vec<u64> = (0..end).collect();
        addrs.extend([
            u64::from(u32::MAX) - 1,
            u64::from(u32::MAX),
            1 << 32,
            (1 << 32) + 0x1010,
            u64::MAX,
        ]);
        addrs
    }

    fn assert_same_answers(bytes: &[u8], end: u64) {
        let cache = SymCache::parse(bytes).expect("symbolic accepts it");
        let addrs = addresses(end);
        for (addr, got) in addrs.iter().zip(ours(bytes, &addrs)) {
            assert_eq!(got, reference_lookup(&cache, *addr), "at {addr:#x}");
        }
    }

    fn breakpad_symcache() -> Vec<u8> {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/libgame.so.sym");
        let id: DebugId = "5a9e8c0f-3b2d-4e1f-8a7b-6c5d4e3f2a1b".parse().unwrap();
        crate::cache::convert(&std::fs::read(path).unwrap(), &id)
            .unwrap()
            .bytes
    }

    /// Rule: our parser accepts exactly what `SymCache::parse` accepts and refuses the rest with
    /// its message: every truncation of a real SymCache, an 8-aligned and a 4-aligned start.
    #[test]
    fn parse_agrees_with_symbolic_on_every_truncation() {
        let bytes = breakpad_symcache();
        for misalign in [0, 4, 1] {
            let (buf, at) = placed(&bytes, misalign);
            for end in at.start..=at.end {
                let b = &buf[at.start..end];
                let ours = SymLayout::parse(b).map(|_| ()).map_err(|e| e.to_string());
                let theirs = SymCache::parse(b).map(|_| ()).map_err(|e| e.to_string());
                assert_eq!(ours, theirs, "misaligned by {misalign}, {} bytes", b.len());
            }
        }
    }

    /// Rule: corrupt headers (byte-swapped magic, unknown version, counts beyond the file) are
    /// refused as `symbolic` refuses them.
    #[test]
    fn parse_agrees_with_symbolic_on_corrupt_headers() {
        let bytes = breakpad_symcache();
        let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
        let mut swapped = bytes.clone();
        swapped[..4].reverse();
        cases.push(("swapped magic".into(), swapped));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        cases.push(("wrong magic".into(), magic));
        for version in [0u32, 6, 7, 9, u32::MAX] {
            let mut b = bytes.clone();
            b[4..8].copy_from_slice(&version.to_ne_bytes());
            cases.push((format!("version {version}"), b));
        }
        // The counts, then string_bytes: 44 + 4 * field.
        for field in 0..6 {
            for value in [0u32, 1, 1000, u32::MAX / 16, u32::MAX] {
                let mut b = bytes.clone();
                let at = PREAMBLE + 36 + 4 * field;
                b[at..at + 4].copy_from_slice(&value.to_ne_bytes());
                cases.push((format!("header field {field} = {value}"), b));
            }
        }
        for (what, b) in cases {
            let (buf, at) = placed(&b, 0);
            let b = &buf[at];
            let ours = SymLayout::parse(b).map(|_| ()).map_err(|e| e.to_string());
            let theirs = SymCache::parse(b).map(|_| ()).map_err(|e| e.to_string());
            assert_eq!(ours, theirs, "{what}");
        }
    }

    /// Rule: lookups in a real SymCache answer what `symbolic`'s reader answers, at every
    /// address, also when the buffer starts 4 bytes past an 8-aligned address (both readers then
    /// pad by address alike).
    #[test]
    fn lookups_agree_with_symbolic_on_the_breakpad_symcache() {
        let bytes = breakpad_symcache();
        for misalign in [0, 4] {
            let (buf, at) = placed(&bytes, misalign);
            let b = &buf[at];
            match SymCache::parse(b) {
                Ok(_) => assert_same_answers(b, 0x2200),
                Err(e) => assert_eq!(SymLayout::parse(b).unwrap_err().to_string(), e.to_string()),
            }
        }
    }

    /// A hand-made SymCache: tables as given, strings appended by [`Made::string`].
    #[derive(Clone)]
    struct Made {
        version: u32,
        files: Vec<[u32; 3]>,
        functions: Vec<[u32; 4]>,
        locations: Vec<[u32; 4]>,
        ranges: Vec<u32>,
        strings: Vec<u8>,
    }

    impl Made {
        fn new(version: u32) -> Self {
            Self {
                version,
                files: Vec::new(),
                functions: Vec::new(),
                locations: Vec::new(),
                ranges: Vec::new(),
                strings: Vec::new(),
            }
        }

        /// Appends raw string bytes with the version's length prefix; returns the offset.
        fn string(&mut self, s: &[u8]) -> u32 {
            let at = self.strings.len() as u32;
            if self.version >= 8 {
                let mut n = s.len() as u64;
                loop {
                    let byte = (n & 0x7f) as u8;
                    n >>= 7;
                    if n == 0 {
                        self.strings.push(byte);
                        break;
                    }
                    self.strings.push(byte | 0x80);
                }
            } else {
                self.strings
                    .extend_from_slice(&(s.len() as u32).to_ne_bytes());
            }
            self.strings.extend_from_slice(s);
            at
        }

        /// Appends bytes that are no valid string; returns their offset.
        fn raw(&mut self, bytes: &[u8]) -> u32 {
            let at = self.strings.len() as u32;
            self.strings.extend_from_slice(bytes);
            at
        }

        fn bytes(&self) -> Vec<u8> {
            fn pad(out: &mut Vec<u8>) {
                while !out.len().is_multiple_of(8) {
                    out.push(0);
                }
            }
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_ne_bytes());
            out.extend_from_slice(&self.version.to_ne_bytes());
            out.extend_from_slice(&[0u8; 32]);
            for v in [
                2u32, // amd64
                self.files.len() as u32,
                self.functions.len() as u32,
                self.locations.len() as u32,
                self.ranges.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&v.to_ne_bytes());
            }
            out.extend_from_slice(&[0u8; 16]);
            let words = |out: &mut Vec<u8>, w: &[u32]| {
                for v in w {
                    out.extend_from_slice(&v.to_ne_bytes());
                }
            };
            pad(&mut out);
            self.files.iter().for_each(|r| words(&mut out, r));
            pad(&mut out);
            self.functions.iter().for_each(|r| words(&mut out, r));
            pad(&mut out);
            self.locations.iter().for_each(|r| words(&mut out, r));
            pad(&mut out);
            words(&mut out, &self.ranges);
            pad(&mut out);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    const X: u32 = u32::MAX;

    /// Tables with every oddity a reader must resolve as `symbolic` does: paths to join and
    /// clean, empty and unreadable strings (bad UTF-8, out of bounds, a LEB128 overflow), file
    /// and function indices out of range, unknown languages, a gap, a chain into the gap marker
    /// and one into nowhere.
    fn odd_tables(version: u32) -> Made {
        let mut m = Made::new(version);
        let src = m.string(b"src");
        let a_c = m.string(b"a.c");
        let comp = m.string(b"/comp/./x");
        let dir = m.string(b"dir/../d");
        let b_c = m.string(b"../b.c");
        let empty = m.string(b"");
        let main = m.string(b"main");
        let cpp = m.string(b"_ZN4game4Body4stepEid");
        let rust = m.string(b"_ZN3foo3bar17h0123456789abcdefE");
        let bad_utf8 = m.string(b"\xff\xfe");
        let long = m.raw(&[0x80; 12]);
        let beyond = m.raw(&[0x7f]); // claims 127 bytes, has none
        m.files = vec![
            [X, src, a_c],
            [comp, dir, b_c],
            [X, X, X],
            [bad_utf8, beyond, a_c],
            [long, empty, empty],
            [X, X, 1 << 30],
        ];
        m.functions = vec![
            [main, X, 0x10, 1],
            [cpp, X, X, 2],
            [rust, X, X, 7],
            [bad_utf8, X, 0, 99],
            [X, X, 0, 0],
            [long, X, 0, 2],
            [cpp, X, 0, 0],
        ];
        // Call locations first, then one per range.
        m.locations = vec![
            [0, 10, 0, X],
            [1, 20, 1, 0],
            [99, 5, 42, X],
            // ranges 0..
            [0, 1, 0, X],
            [1, 2, 1, 1],
            [X, X, X, X],
            [2, 3, 2, 2],
            [3, 4, 3, X],
            [4, 0, 4, 5],
            [5, 6, 5, 1000],
            [X, 7, 6, 0],
            [X, X, X, X],
        ];
        m.ranges = vec![0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80, 0x90];
        m
    }

    fn check(m: &Made, what: &str) {
        let (buf, at) = placed(&m.bytes(), 0);
        let b = &buf[at];
        let cache = SymCache::parse(b).unwrap_or_else(|e| panic!("{what}: {e}"));
        let addrs = addresses(0xa0);
        for (addr, got) in addrs.iter().zip(ours(b, &addrs)) {
            assert_eq!(got, reference_lookup(&cache, *addr), "{what} at {addr:#x}");
        }
    }

    /// Rule: on odd but readable tables, v8 and v7, our lookups answer what `symbolic`'s do.
    #[test]
    fn lookups_agree_with_symbolic_on_odd_tables() {
        for version in [8, 7] {
            let m = odd_tables(version);
            check(&m, &format!("v{version}"));
            // Some answers are real frames, some chains are inlined.
            let (buf, at) = placed(&m.bytes(), 0);
            let frames = ours(&buf[at], &[0x20, 0x30]);
            assert_eq!(frames[0].len(), 3, "{:?}", frames[0]);
            assert_eq!(
                frames[0][0].abs_path.as_deref(),
                Some("/comp/x/b.c"),
                "joined and cleaned as symbolic does"
            );
            assert!(frames[1].is_empty(), "a gap: {:?}", frames[1]);
        }
    }

    /// Rule: ranges that are not sorted (which the writer never produces), or repeat, resolve to
    /// the same entries as in `symbolic`, whose binary search we follow step by step.
    #[test]
    fn unsorted_and_repeated_ranges_resolve_as_in_symbolic() {
        let orders: &[&[u32]] = &[
            &[0x40, 0x10, 0x80, 0x20, 0x20, 0x60, 0x30, 0x90, 0x50],
            &[0x10, 0x10, 0x20, 0x20, 0x20, 0x30, 0x30, 0x30, 0x90],
            &[0x90, 0x80, 0x70, 0x60, 0x50, 0x40, 0x30, 0x20, 0x10],
            &[0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x10],
        ];
        for order in orders {
            let mut m = odd_tables(8);
            m.ranges = order.to_vec();
            check(&m, &format!("ranges {order:x?}"));
            for n in 1..order.len() {
                let mut m = m.clone();
                m.ranges.truncate(n);
                check(&m, &format!("ranges {:x?}", &order[..n]));
            }
        }
    }

    /// Rule: tables `symbolic` accepts but cannot follow never make a lookup panic or hang: an
    /// inline cycle ends after as many frames as there are locations; more ranges than
    /// locations wrap around as in `symbolic`'s release build; no ranges find nothing.
    #[test]
    fn corrupt_tables_never_panic_or_hang() {
        let mut cyclic = odd_tables(8);
        cyclic.locations[3] = [0, 1, 0, 3];
        let (buf, at) = placed(&cyclic.bytes(), 0);
        let frames = ours(&buf[at], &[0x10, 0x15]);
        for f in &frames {
            assert_eq!(f.len(), cyclic.locations.len(), "the cycle is cut");
        }

        let mut few = odd_tables(8);
        few.locations.truncate(2);
        let (buf, at) = placed(&few.bytes(), 0);
        let answers = ours(&buf[at], &addresses(0xa0));
        // 2 locations, 9 ranges: range i maps to location (2 - 9 + i) mod 2^32, so only the
        // 8th and 9th ranges (0x80.., 0x90..) reach one.
        for (addr, frames) in addresses(0xa0).iter().zip(&answers) {
            let reaches = (0x80..=u64::from(u32::MAX)).contains(addr);
            assert_eq!(!frames.is_empty(), reaches, "at {addr:#x}: {frames:?}");
        }

        let mut none = odd_tables(8);
        none.ranges.clear();
        check(&none, "no ranges");
        none.locations.clear();
        none.files.clear();
        none.functions.clear();
        check(&none, "empty");
    }

    /// Rule: a lazy table computes each entry once and answers `None` past its end.
    #[test]
    fn lazy_table_fills_each_entry_once() {
        let table: LazyTable<usize> = LazyTable::new(CHUNK + 3);
        let calls = std::cell::Cell::new(0);
        for round in 0..2 {
            for i in [0, 5, CHUNK - 1, CHUNK, CHUNK + 2] {
                let v = table.get_or_init(i, || {
                    calls.set(calls.get() + 1);
                    i * 2
                });
                assert_eq!(v, Some(&(i * 2)), "round {round}");
            }
        }
        assert_eq!(calls.get(), 5);
        assert_eq!(table.filled(), 5);
        assert_eq!(table.get_or_init(CHUNK + 3, || 0), None);
        assert_eq!(table.get_or_init(usize::MAX, || 0), None);
        assert_eq!(LazyTable::<u8>::new(0).get_or_init(0, || 0), None);
    }
}
