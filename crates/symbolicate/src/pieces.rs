//! DWARF functions reshaped the way llvm-symbolizer answers for them.
//!
//! Two rules of llvm-symbolizer that `symbolic`'s walk does not follow, seen on GCC output
//! (protobuf's C++ at random addresses, issue 14):
//!
//! 1. **The outermost frame is named by the ELF symbol containing the address** (ELF only), not by the
//!    DWARF function (llvm's `SymbolizableObjectFile` overrides linkage names with the symbol
//!    table). GCC splits a function into `foo` and `foo.cold`, and emits aliases at one address
//!    (`foo.localalias`, identical-code-folded functions); `symbolic` names every range of a
//!    function after the symbol at its lowest address, so the hot part of `foo` came out as
//!    `foo.cold`. Here each top-level function is cut at symbol boundaries and each piece
//!    takes the name of the symbol llvm would pick: symbols sorted by (address, size) in
//!    `.symtab` order, the last of each address kept (the largest; among equals, the last in
//!    the table), a symbol of size 0 reaching the next one.
//! 2. **A line row that starts before a function's range still covers it.** `symbolic` keeps
//!    only rows that start inside a range, so a piece of code (a `.cold` part, a small inlined
//!    call) whose row begins earlier had no file and line, and an inlined call with no row of
//!    its own vanished from the inline chain. Here the parts of each function and inlinee that
//!    none of its lines (nor, for a caller, its inlinees) cover are filled from the line table
//!    (`lines.rs`), in one read of the line programs for all of them.

use std::borrow::Cow;

use symbolic::common::{Name, NameMangling};
use symbolic::debuginfo::{FileInfo, Function, LineInfo, Object};

/// The symbol table as llvm-symbolizer searches it: one `(start, end, name)` per address.
pub(crate) struct SymbolTable<'d> {
    symbols: Vec<(u64, u64, Cow<'d, str>)>,
}

impl<'d> SymbolTable<'d> {
    /// The table of an ELF object; empty for other formats (Mach-O symbols have no sizes,
    /// Breakpad's `PUBLIC` records are not a symbol table in this sense), which keep
    /// `symbolic`'s names.
    pub(crate) fn of(object: &Object<'d>) -> Self {
        if !matches!(object, Object::Elf(_)) {
            return Self {
                symbols: Vec::new(),
            };
        }
        // `symbolic` yields `.symtab` and then `.dynsym`, which repeats the exported part of
        // `.symtab`; llvm reads `.symtab`, so a repeated symbol counts at its first place.
        let mut seen = std::collections::HashSet::new();
        let mut all: Vec<(u64, u64, Cow<'d, str>)> = object
            .symbols()
            .filter_map(|s| Some((s.address, s.size, s.name?)))
            .filter(|s| seen.insert(s.clone()))
            .collect();
        // Stable: table order among equal (address, size).
        all.sort_by_key(|s| (s.0, s.1));
        let mut symbols: Vec<(u64, u64, Cow<'d, str>)> = Vec::with_capacity(all.len());
        for s in all {
            match symbols.last_mut() {
                Some(last) if last.0 == s.0 => *last = s,
                _ => symbols.push(s),
            }
        }
        let n = symbols.len();
        for i in 0..n {
            if symbols[i].1 == 0 {
                symbols[i].1 = symbols.get(i + 1).map_or(u64::MAX, |next| next.0);
            } else {
                symbols[i].1 = symbols[i].0.saturating_add(symbols[i].1);
            }
        }
        Self { symbols }
    }

    /// The symbol llvm-symbolizer names `addr` by: the last one starting at or before it, if
    /// `addr` is inside it.
    fn at(&self, addr: u64) -> Option<&(u64, u64, Cow<'d, str>)> {
        let i = self.symbols.partition_point(|s| s.0 <= addr);
        let s = self.symbols[..i].last()?;
        (addr < s.1).then_some(s)
    }

    /// Renames `piece` after the symbol llvm-symbolizer names `addr` by, if there is one.
    fn name(&self, piece: &mut Function<'d>, addr: u64) {
        if let Some((_, _, name)) = self.at(addr) {
            if name.as_ref() != piece.name.as_str() {
                piece.name = Name::new(name.clone(), NameMangling::Unknown, piece.name.language());
            }
        }
    }

    /// The addresses inside `(start, end)` where the answer of [`SymbolTable::at`] changes.
    fn cuts(&self, start: u64, end: u64) -> Vec<u64> {
        let from = self
            .symbols
            .partition_point(|s| s.0 <= start)
            .saturating_sub(1);
        let mut cuts: Vec<u64> = self.symbols[from..]
            .iter()
            .take_while(|s| s.0 < end)
            .flat_map(|s| [s.0, s.1])
            .filter(|&a| a > start && a < end)
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        cuts
    }
}

/// `function` cut at the symbol boundaries inside it, each piece named as llvm-symbolizer
/// names its first address (the DWARF name where no symbol covers it).
pub(crate) fn split_by_symbols<'d>(
    mut function: Function<'d>,
    table: &SymbolTable<'d>,
) -> Vec<Function<'d>> {
    let (start, end) = (function.address, function.end_address());
    let cuts = table.cuts(start, end);
    if cuts.is_empty() {
        // The common case: one piece, the function itself (renamed at most).
        table.name(&mut function, start);
        return vec![function];
    }
    let bounds: Vec<u64> = std::iter::once(start)
        .chain(cuts)
        .chain(std::iter::once(end))
        .collect();
    bounds
        .windows(2)
        .filter_map(|w| {
            let mut piece = clip(&function, w[0], w[1])?;
            table.name(&mut piece, w[0]);
            Some(piece)
        })
        .collect()
}

/// `function` restricted to `[lo, hi)`: its lines and inlinees clipped, empty ones dropped.
fn clip<'d>(function: &Function<'d>, lo: u64, hi: u64) -> Option<Function<'d>> {
    let (start, end) = (function.address.max(lo), function.end_address().min(hi));
    if start >= end {
        return None;
    }
    let lines = function
        .lines
        .iter()
        .filter_map(|l| {
            let l_end = l.address.saturating_add(l.size.unwrap_or(1));
            let (s, e) = (l.address.max(start), l_end.min(end));
            (s < e).then(|| LineInfo {
                address: s,
                size: l.size.map(|_| e - s),
                ..l.clone()
            })
        })
        .collect();
    let inlinees = function
        .inlinees
        .iter()
        .filter_map(|i| clip(i, start, end))
        .collect();
    Some(Function {
        address: start,
        size: end - start,
        lines,
        inlinees,
        ..function.clone()
    })
}

/// The parts of `function` that none of its lines covers; a caller's parts covered by an
/// inlinee are not gaps (its line there is the call site, which the inlinee carries).
fn own_gaps(function: &Function<'_>) -> Vec<(u64, u64)> {
    let mut covered: Vec<(u64, u64)> = function
        .lines
        .iter()
        .map(|l| (l.address, l.address.saturating_add(l.size.unwrap_or(1))))
        .chain(
            function
                .inlinees
                .iter()
                .map(|i| (i.address, i.end_address())),
        )
        .collect();
    covered.sort_unstable();
    let mut out = Vec::new();
    let mut at = function.address;
    let end = function.end_address();
    for (s, e) in covered {
        if at >= end {
            break;
        }
        if s > at {
            out.push((at, s.min(end)));
        }
        at = at.max(e);
    }
    if at < end {
        out.push((at, end));
    }
    out
}

/// The gaps of `function` and of its inlinees, recursively.
pub(crate) fn gaps(function: &Function<'_>, out: &mut Vec<(u64, u64)>) {
    out.extend(own_gaps(function));
    for inlinee in &function.inlinees {
        gaps(inlinee, out);
    }
}

/// Sorted, disjoint ranges covering all of `ranges`.
pub(crate) fn union(mut ranges: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    ranges.retain(|r| r.0 < r.1);
    ranges.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.0 <= last.1 => last.1 = last.1.max(r.1),
            _ => out.push(r),
        }
    }
    out
}

/// Line rows by start address (`lines::rows_in` over the union of every wanted range).
pub(crate) struct Rows(Vec<crate::lines::Row>);

impl Rows {
    pub(crate) fn new(mut rows: Vec<crate::lines::Row>) -> Self {
        rows.sort_by_key(|r| r.start);
        Self(rows)
    }

    /// The rows overlapping `[lo, hi)`, by start address.
    pub(crate) fn overlapping(&self, lo: u64, hi: u64) -> impl Iterator<Item = &crate::lines::Row> {
        let i = self.0.partition_point(|r| r.end <= lo);
        self.0[i..]
            .iter()
            .take_while(move |r| r.start < hi)
            .filter(move |r| r.end > lo)
    }

    /// Line infos for `[lo, hi)`, clipped to it.
    pub(crate) fn lines_in(&self, lo: u64, hi: u64) -> Vec<LineInfo<'static>> {
        self.overlapping(lo, hi)
            .map(|r| {
                let (s, e) = (r.start.max(lo), r.end.min(hi));
                LineInfo {
                    address: s,
                    size: Some(e - s),
                    file: FileInfo::new(Cow::Owned(r.dir.clone()), Cow::Owned(r.name.clone())),
                    line: r.line,
                }
            })
            .collect()
    }
}

/// Fills the gaps of `function` and its inlinees from `rows`.
pub(crate) fn fill(function: &mut Function<'_>, rows: &Rows) {
    let gaps = own_gaps(function);
    if !gaps.is_empty() {
        for (lo, hi) in gaps {
            function.lines.extend(rows.lines_in(lo, hi));
        }
        function.lines.sort_by_key(|l| l.address);
    }
    for inlinee in &mut function.inlinees {
        fill(inlinee, rows);
    }
}
