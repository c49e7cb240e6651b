//! The demangler against the reference tools on names nobody here wrote, on hand-checked
//! forms, and on hostile input.

mod corpus;

use demangle::{demangle, Error};

/// Forms whose expected spelling was taken from `llvm-cxxfilt` 14 (with `> >` written `>>`):
/// each is a rule of the Itanium ABI that a demangler commonly gets wrong.
#[test]
fn hand_checked_forms_spell_as_llvm_cxxfilt() {
    let cases = [
        // A pack expansion applies its pattern (`const&`) to every element of the pack.
        (
            "_Z1fIJidEEvDpRKT_",
            "void f<int, double>(int const&, double const&)",
        ),
        // An empty pack expansion prints nothing, not a dangling `&&`.
        ("_Z1fIJEEvDpOT_", "void f<>()"),
        ("_Z1fIJiEEvDpPT_", "void f<int>(int*)"),
        // LLVM's reading of a qualifier outside the expansion.
        ("_Z1fIJicEEvRKDpT_", "void f<int, char>(int, char const&)"),
        // A template constructor has no return type: `PKc` is its first parameter.
        (
            "_ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEC2IS3_EEPKcRKS3_",
            "std::__cxx11::basic_string<char, std::char_traits<char>, std::allocator<char>>::\
             basic_string<std::allocator<char>>(char const*, std::allocator<char> const&)",
        ),
        // `Ss` is `std::string`, spelled out as the prefix of its constructor.
        (
            "_ZNSsC1Ev",
            "std::basic_string<char, std::char_traits<char>, std::allocator<char>>::basic_string()",
        ),
        ("_ZTVSo", "vtable for std::ostream"),
        ("_ZTTSd", "VTT for std::iostream"),
        // Generic lambda: `T_` past the known parameters is `auto`.
        (
            "_ZZ1fvENKUlT_E_clIiEEDaS_",
            "auto f()::'lambda'(auto)::operator()<int>(auto) const",
        ),
        (
            "_ZZ1fvENKUlvE0_clEv",
            "f()::'lambda0'()::operator()() const",
        ),
        // Clone suffixes.
        ("_Z1fIiEvT_.cold.1", "void f<int>(int) (.cold.1)"),
        ("_Z3fooi.isra.0.cold", "foo(int) (.isra.0.cold)"),
        // Literals as template arguments.
        ("_Z1fILi5EEvv", "void f<5>()"),
        ("_Z3fooILb1EEvv", "void foo<true>()"),
        ("_Z1fILm5EEvv", "void f<5ul>()"),
        ("_Z1fIXadL_Z1gvEEEvv", "void f<&(g())>()"),
        ("_ZStL19piecewise_construct", "std::piecewise_construct"),
        ("_Z1fIiEDTplfp_Li1EET_", "decltype((fp) + (1)) f<int>(int)"),
        ("_ZN1AIiEltIiEEbv", "bool A<int>::operator<<int>()"),
        // Declarators: function pointers, member function pointers, arrays.
        ("_Z1fIcEvPFT_vE", "void f<char>(char (*)())"),
        ("_Z1fPKFvvE", "f(void (*)() const)"),
        ("_ZN1A1fEMS_KFvvE", "A::f(void (A::*)() const)"),
        ("_Z1fRA10_i", "f(int (&) [10])"),
        ("_ZN1A1xE", "A::x"),
        ("_ZN12_GLOBAL__N_13fooEv", "(anonymous namespace)::foo()"),
        (
            "_ZNKSt6vectorIiSaIiEE4sizeEv",
            "std::vector<int, std::allocator<int>>::size() const",
        ),
        ("_ZN1AcvT_IiEEv", "A::operator int<int>()"),
        ("_ZGVZ1fvE1x", "guard variable for f()::x"),
        ("_ZThn8_N1B1fEv", "non-virtual thunk to B::f()"),
        ("_ZN5Outer5InnerB5cxx11Ev", "Outer::Inner[abi:cxx11]()"),
    ];
    let mut wrong = Vec::new();
    for (mangled, want) in cases {
        match demangle(mangled) {
            Ok(got) if got == want => {}
            other => wrong.push(format!("{mangled}\n  want {want}\n  got  {other:?}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Names that are not Itanium C++ names are refused, so callers keep them (C names, Rust v0,
/// MSVC) or hand them to another demangler.
#[test]
fn non_itanium_names_are_refused() {
    for name in [
        "main",
        "_RNvC5crate4main",
        "?f@@YAXXZ",
        "_Z",
        "_Z1",
        "_Zfoo",
        "_Z3fo",
    ] {
        assert!(demangle(name).is_err(), "{name}");
    }
}

/// Bounds (lib.rs): input from uploaded debug files can nest without limit or expand
/// exponentially through substitutions; both are refused quickly, never overflow the stack.
#[test]
fn hostile_names_are_refused_within_bounds() {
    // 100,000 nested pointers: a parser without a depth bound overflows its stack.
    let deep = format!("_Z1f{}i", "P".repeat(100_000));
    assert_eq!(demangle(&deep), Err(Error::TooComplex));
    // Each `S_I Sn_ Sn_ E` doubles the previous type: 2^60 characters if printed.
    let mut doubling = String::from("_Z1fSt4pairIiiE");
    for i in 0..60 {
        let prev = if i == 0 {
            "S0_".to_string()
        } else {
            format!("S{}_", seq_id(i))
        };
        doubling.push_str(&format!("S_I{prev}{prev}E"));
    }
    let started = std::time::Instant::now();
    assert_eq!(demangle(&doubling), Err(Error::TooComplex));
    // Not a timing assertion on speed: a guard against printing the 2^60 characters.
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    // Deep but legal: 150 nested pointers are fine.
    let ok = format!("_Z1f{}i", "P".repeat(150));
    assert_eq!(demangle(&ok).unwrap(), format!("f(int{})", "*".repeat(150)));
}

/// The sequence id of substitution number `n + 1` (`S0_` is the second): base 36.
fn seq_id(n: usize) -> String {
    const DIGITS: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut n = n;
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[n % 36]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap()
}

/// Arbitrary bytes (mutations of real names) never panic, and every answer is bounded.
#[test]
fn mutated_real_names_never_panic() {
    use std::collections::hash_map::DefaultHasher;
    use std::hash::{Hash, Hasher};
    let seeds = [
        "_ZNSt7__cxx1112basic_stringIcSt11char_traitsIcESaIcEEC2IS3_EEPKcRKS3_",
        "_ZZ1fvENKUlT_E_clIiEEDaS_",
        "_Z1fIJidEEvDpRKT_",
        "_ZN4llvm7reverseINS_14iterator_rangeIPiEEEEDaOT_PNSt9enable_ifIXntsr10has_rbeginIS4_EE5valueEvE4typeE",
        "_ZN1AcvT_IiEEv",
    ];
    let alphabet = b"_ZNESIJTDpRKOPFvicdlmxyMA0123456789abLXsrtfnq.";
    let mut state = 14u64;
    let mut next = || {
        let mut h = DefaultHasher::new();
        state.hash(&mut h);
        state = h.finish();
        state
    };
    let mut answered = 0;
    for round in 0..20_000 {
        let mut bytes = seeds[round % seeds.len()].as_bytes().to_vec();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % bytes.len();
            match next() % 3 {
                0 => bytes[at] = alphabet[(next() as usize) % alphabet.len()],
                1 => bytes.insert(at, alphabet[(next() as usize) % alphabet.len()]),
                _ => {
                    bytes.remove(at);
                }
            }
            if bytes.is_empty() {
                bytes.push(b'_');
            }
        }
        let name = String::from_utf8_lossy(&bytes);
        if let Ok(out) = demangle(&name) {
            assert!(out.len() <= 256 * 1024);
            answered += 1;
        }
    }
    eprintln!("mutations: {answered} of 20000 still demangled");
    assert!(answered > 0);
}
