//! Line rows for code whose DWARF function has no address range.
//!
//! GCC describes some small functions (e.g. ones that only `return` a table lookup) with a
//! `DW_TAG_subprogram` that carries no `DW_AT_low_pc`/`DW_AT_ranges`, while the line table
//! still covers their code. `symbolic`'s conversion walks functions by their ranges, so such a
//! function gets its name from the symbol table and no file or line; llvm-symbolizer reads the
//! line table and gives both. Here the line programs are read directly (gimli, the parser
//! `symbolic` itself uses) for exactly the symbol ranges no DWARF function covers, and the
//! conversion adds a function of the symbol's name with those rows (`cache.rs`).

use std::borrow::Cow;

use symbolic::debuginfo::dwarf::{gimli, Dwarf};
use symbolic::debuginfo::Object;

/// One line row inside a wanted range: `[start, end)` relative to the load address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Row {
    /// Index of the wanted range the row lies in.
    pub range: usize,
    pub start: u64,
    pub end: u64,
    /// The file's directory entry and name as the line program gives them, and the unit's
    /// compilation directory (joined like `symbolic` joins them).
    pub dir: Vec<u8>,
    pub name: Vec<u8>,
    pub comp_dir: Vec<u8>,
    pub line: u64,
}

/// The line rows of `object` that fall in `ranges` (sorted by start, disjoint, relative to the
/// load address), clipped to them. Empty for formats without DWARF or on a read error (the
/// symbol names alone are still right).
pub(crate) fn rows_in(object: &Object<'_>, ranges: &[(u64, u64)]) -> Vec<Row> {
    if ranges.is_empty() {
        return Vec::new();
    }
    let load = object.load_address();
    let rows = match object {
        Object::Elf(o) => read(o, load, ranges),
        Object::MachO(o) => read(o, load, ranges),
        _ => Ok(Vec::new()),
    };
    rows.unwrap_or_default()
}

fn read<'d, D: Dwarf<'d>>(
    object: &D,
    load: u64,
    ranges: &[(u64, u64)],
) -> Result<Vec<Row>, gimli::Error> {
    let endian = object.endianity();
    let sections = gimli::DwarfSections::load(|id| -> Result<Cow<'d, [u8]>, gimli::Error> {
        Ok(object
            .section(&id.name()[1..])
            .map(|s| s.data)
            .unwrap_or_default())
    })?;
    let dwarf = sections.borrow(|data| gimli::EndianSlice::new(data, endian));
    let mut out = Vec::new();
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let Some(program) = unit.line_program.clone() else {
            continue;
        };
        let comp_dir = unit
            .comp_dir
            .map(|d| d.slice().to_vec())
            .unwrap_or_default();
        let mut rows = program.rows();
        // The previous row: it spans up to the next row's address.
        let mut prev: Option<(u64, u64, u64)> = None;
        while let Some((header, row)) = rows.next_row()? {
            let addr = row.address().wrapping_sub(load);
            if let Some((start, file, line)) = prev.take() {
                // Every wanted range the row [start, addr) overlaps (disjoint and sorted, so
                // their ends are sorted too), clipped to it.
                let mut i = ranges.partition_point(|r| r.1 <= start);
                while i < ranges.len() && ranges[i].0 < addr {
                    let (s, e) = (start.max(ranges[i].0), addr.min(ranges[i].1));
                    if s < e {
                        let (dir, name) = file_of(&dwarf, &unit, header, file)?;
                        out.push(Row {
                            range: i,
                            start: s,
                            end: e,
                            dir,
                            name,
                            comp_dir: comp_dir.clone(),
                            line,
                        });
                    }
                    i += 1;
                }
            }
            if !row.end_sequence() {
                prev = Some((addr, row.file_index(), row.line().map_or(0, |l| l.get())));
            }
        }
    }
    out.sort_by_key(|r| (r.range, r.start));
    Ok(out)
}

type Slice<'a> = gimli::EndianSlice<'a, gimli::RunTimeEndian>;

/// Directory and name of file `index` of a line program.
fn file_of(
    dwarf: &gimli::Dwarf<Slice<'_>>,
    unit: &gimli::Unit<Slice<'_>>,
    header: &gimli::LineProgramHeader<Slice<'_>>,
    index: u64,
) -> Result<(Vec<u8>, Vec<u8>), gimli::Error> {
    let Some(file) = header.file(index) else {
        return Ok((Vec::new(), Vec::new()));
    };
    let name = dwarf.attr_string(unit, file.path_name())?.slice().to_vec();
    let dir = match file.directory(header) {
        Some(d) => dwarf.attr_string(unit, d)?.slice().to_vec(),
        None => Vec::new(),
    };
    Ok((dir, name))
}
