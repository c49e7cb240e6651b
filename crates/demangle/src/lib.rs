//! Itanium C++ ABI demangling that spells names as LLVM's `llvm-cxxfilt` and
//! `llvm-symbolizer` do.
//!
//! # Why our own
//! crashgrid's symbolication is checked against `llvm-symbolizer`, and users compare its
//! names with what their toolchain prints. The demangler `symbolic` ships (`cpp_demangle`)
//! changes the meaning of 0.9 % of the C++ names in `libstdc++` and `libLLVM` (pack
//! expansions losing `const&`, the `std::string(char const*, allocator const&)` template
//! constructor losing its first parameter, qualifiers attached to the wrong component) and
//! spells another 12 % differently (docs/architecture.md has the measurement). No other
//! maintained pure-Rust Itanium demangler exists, and linking LLVM's or libiberty's needs a
//! C++ toolchain at build time and `unsafe`. So this crate parses the grammar of the
//! Itanium ABI (section 5.1) with the same decisions as LLVM's `ItaniumDemangle.h`.
//!
//! # Design
//! * `parse.rs`: one recursive descent over the mangled bytes, building nodes in an arena
//!   (`ast.rs`). The substitution table (`S_`, `S0_`…) holds node ids, so a substitution
//!   shares its subtree instead of copying it. Template parameters (`T_`) resolve to the
//!   arguments of the innermost template argument list of the function's own name; a
//!   parameter pack resolves to a `ParamPack` node.
//! * `ast.rs`: the printer. Types print in two halves around the declarator (`void (*)(int)`:
//!   left `void (*`, right `)(int)`). A pack expansion (`Dp`) prints its pattern once per
//!   element of the first pack met inside it, with the current element chosen by the
//!   printer's pack index: that is how `Dp RKT_` becomes `int const&, double const&`.
//! * Spelling follows LLVM 14 (the `llvm-cxxfilt` Debian's `llvm` package ships), except
//!   that closing template brackets are not separated (`vector<vector<int>>`, as LLVM 15 and
//!   later print; LLVM 14 prints `> >`).
//!
//! # Bounds
//! Names come from debug files users upload. Recursion is bounded (parser depth 200, node
//! height 400) and so is the output (256 KiB: substitutions let a short name expand
//! exponentially); beyond them the name is refused with [`Error::TooComplex`], never a
//! stack overflow or an unbounded allocation.
#![forbid(unsafe_code)]

mod ast;
mod parse;

/// Why a name was not demangled. Callers keep the mangled name then, as `llvm-cxxfilt` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Not a well-formed Itanium mangled name.
    #[error("not a valid Itanium C++ mangled name")]
    Invalid,
    /// Well-formed as far as read, but uses a production this demangler does not implement
    /// (fold expressions, template template parameters in lambdas, `long double` literals).
    #[error("mangled name uses an unsupported production")]
    Unsupported,
    /// Deeper or longer than the bounds above.
    #[error("mangled name too deeply nested or its demangling too long")]
    TooComplex,
}

/// Demangles an Itanium C++ ABI name (`_Z…`, including clone suffixes such as `.cold`,
/// printed as ` (.cold)`).
///
/// ```
/// assert_eq!(
///     demangle::demangle("_ZNSt6vectorIiSaIiEE9push_backERKi").unwrap(),
///     "std::vector<int, std::allocator<int>>::push_back(int const&)"
/// );
/// ```
pub fn demangle(mangled: &str) -> Result<String, Error> {
    let mut parser = parse::Parser::new(mangled);
    let root = parser.parse()?;
    let mut printer = ast::Printer::new(&parser.ast);
    printer.print(root);
    if printer.overflow {
        return Err(Error::TooComplex);
    }
    Ok(printer.out)
}
