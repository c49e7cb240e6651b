//! The Itanium C++ ABI grammar (section 5.1), parsed the way LLVM's `ItaniumDemangle` parses
//! it: one recursive descent, a substitution table of the components seen so far, and the
//! template arguments of the function's own name as the table `T_` refers to.

use crate::ast::{Ast, Id, Node, RefQual, Special, CONST, RESTRICT, VOLATILE};
use crate::Error;

/// Deepest recursion of the parser (types inside types inside expressions…).
const MAX_DEPTH: u32 = 200;

/// What parsing the name of an encoding tells about its function type.
#[derive(Default)]
struct NameState {
    cv: u8,
    ref_qual: RefQual,
    ends_with_template_args: bool,
    ctor_dtor_conversion: bool,
    forward_refs_begin: usize,
}

pub(crate) struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    pub(crate) ast: Ast,
    subs: Vec<Id>,
    /// Template parameter lists by level; `None` is a level made for a generic lambda's
    /// `auto` parameters. Level 0 normally holds `outer`.
    levels: Vec<Option<Vec<Id>>>,
    forward_refs: Vec<(Id, usize)>,
    permit_forward: bool,
    try_template_args: bool,
    lambda_level: Option<usize>,
    depth: u32,
}

type R = Result<Id, Error>;

fn bad() -> Error {
    Error::Invalid
}

impl<'a> Parser<'a> {
    pub(crate) fn new(s: &'a str) -> Self {
        Self {
            s: s.as_bytes(),
            pos: 0,
            ast: Ast::default(),
            subs: Vec::new(),
            levels: vec![Some(Vec::new())],
            forward_refs: Vec::new(),
            permit_forward: false,
            try_template_args: true,
            lambda_level: None,
            depth: 0,
        }
    }

    fn look(&self, i: usize) -> u8 {
        self.s.get(self.pos + i).copied().unwrap_or(0)
    }

    fn left(&self) -> usize {
        self.s.len() - self.pos
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.look(0) == c {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_str(&mut self, p: &str) -> bool {
        if self.s[self.pos..].starts_with(p.as_bytes()) {
            self.pos += p.len();
            true
        } else {
            false
        }
    }

    fn add(&mut self, n: Node) -> R {
        self.ast.add(n)
    }

    fn name(&mut self, s: &str) -> R {
        self.add(Node::Name(s.into()))
    }

    fn enter(&mut self) -> Result<(), Error> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(Error::TooComplex);
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth -= 1;
    }

    /// `_Z <encoding> [.<clone suffix>…]`, or a bare type.
    pub(crate) fn parse(&mut self) -> R {
        if self.eat_str("_Z") || self.eat_str("__Z") {
            let mut enc = self.encoding()?;
            if self.look(0) == b'.' {
                let suffix = std::str::from_utf8(&self.s[self.pos..]).map_err(|_| bad())?;
                enc = self.add(Node::DotSuffix {
                    prefix: enc,
                    suffix: suffix.into(),
                })?;
                self.pos = self.s.len();
            }
            if self.left() != 0 {
                return Err(bad());
            }
            return Ok(enc);
        }
        Err(bad())
    }

    fn number(&mut self, allow_negative: bool) -> &'a str {
        let start = self.pos;
        if allow_negative {
            self.eat(b'n');
        }
        if !self.look(0).is_ascii_digit() {
            self.pos = start;
            return "";
        }
        while self.look(0).is_ascii_digit() {
            self.pos += 1;
        }
        // ASCII digits (and `n`): valid UTF-8.
        std::str::from_utf8(&self.s[start..self.pos]).unwrap_or("")
    }

    fn positive(&mut self) -> Result<usize, Error> {
        if !self.look(0).is_ascii_digit() {
            return Err(bad());
        }
        let mut n: usize = 0;
        while self.look(0).is_ascii_digit() {
            n = n
                .checked_mul(10)
                .and_then(|n| n.checked_add((self.look(0) - b'0') as usize))
                .ok_or_else(bad)?;
            self.pos += 1;
        }
        Ok(n)
    }

    fn bare_source_name(&mut self) -> Result<&'a str, Error> {
        let n = self.positive()?;
        if n == 0 || self.left() < n {
            return Err(bad());
        }
        let name = std::str::from_utf8(&self.s[self.pos..self.pos + n]).map_err(|_| bad())?;
        self.pos += n;
        Ok(name)
    }

    fn cv_quals(&mut self) -> u8 {
        let mut q = 0;
        if self.eat(b'r') {
            q |= RESTRICT;
        }
        if self.eat(b'V') {
            q |= VOLATILE;
        }
        if self.eat(b'K') {
            q |= CONST;
        }
        q
    }

    fn encoding(&mut self) -> R {
        self.enter()?;
        // The template parameters of an encoding are unrelated to those around it.
        let saved_levels = std::mem::replace(&mut self.levels, vec![Some(Vec::new())]);
        let saved_lambda = self.lambda_level.take();
        let r = self.encoding_inner();
        self.levels = saved_levels;
        self.lambda_level = saved_lambda;
        self.leave();
        r
    }

    fn end_of_encoding(&self) -> bool {
        self.left() == 0 || matches!(self.look(0), b'E' | b'.' | b'_')
    }

    fn encoding_inner(&mut self) -> R {
        if matches!(self.look(0), b'G' | b'T') {
            return self.special_name();
        }
        let mut state = NameState {
            forward_refs_begin: self.forward_refs.len(),
            ..NameState::default()
        };
        let name = self.name_(Some(&mut state))?;
        self.resolve_forward_refs(&state)?;
        if self.end_of_encoding() {
            return Ok(name);
        }
        let mut attrs = None;
        if self.eat_str("Ua9enable_ifI") {
            let mut args = Vec::new();
            while !self.eat(b'E') {
                args.push(self.template_arg()?);
            }
            attrs = Some(self.add(Node::EnableIf(args))?);
        }
        let mut ret = None;
        if !state.ctor_dtor_conversion && state.ends_with_template_args {
            ret = Some(self.type_()?);
        }
        let mut params = Vec::new();
        if !self.eat(b'v') {
            loop {
                params.push(self.type_()?);
                if self.end_of_encoding() {
                    break;
                }
            }
        }
        self.add(Node::Encoding {
            ret,
            name,
            params,
            attrs,
            cv: state.cv,
            ref_qual: state.ref_qual,
        })
    }

    fn resolve_forward_refs(&mut self, state: &NameState) -> Result<(), Error> {
        let refs: Vec<(Id, usize)> = self
            .forward_refs
            .drain(state.forward_refs_begin..)
            .collect();
        for (id, index) in refs {
            let target = self
                .levels
                .first()
                .and_then(|l| l.as_ref())
                .and_then(|l| l.get(index))
                .copied()
                .ok_or_else(bad)?;
            self.ast.set_forward(id, target);
        }
        Ok(())
    }

    fn call_offset(&mut self) -> Result<(), Error> {
        if self.eat(b'h') {
            if self.number(true).is_empty() || !self.eat(b'_') {
                return Err(bad());
            }
            return Ok(());
        }
        if self.eat(b'v') {
            if self.number(true).is_empty()
                || !self.eat(b'_')
                || self.number(true).is_empty()
                || !self.eat(b'_')
            {
                return Err(bad());
            }
            return Ok(());
        }
        Err(bad())
    }

    fn prefixed(&mut self, prefix: &'static str, child: Id) -> R {
        self.add(Node::Prefixed { prefix, child })
    }

    fn special_name(&mut self) -> R {
        match (self.look(0), self.look(1)) {
            (b'T', c) => {
                self.pos += 2;
                match c {
                    b'A' => {
                        let a = self.template_arg()?;
                        self.prefixed("template parameter object for ", a)
                    }
                    b'V' => {
                        let t = self.type_()?;
                        self.prefixed("vtable for ", t)
                    }
                    b'T' => {
                        let t = self.type_()?;
                        self.prefixed("VTT for ", t)
                    }
                    b'I' => {
                        let t = self.type_()?;
                        self.prefixed("typeinfo for ", t)
                    }
                    b'S' => {
                        let t = self.type_()?;
                        self.prefixed("typeinfo name for ", t)
                    }
                    b'h' | b'v' => {
                        self.pos -= 1;
                        self.call_offset()?;
                        let e = self.encoding()?;
                        self.prefixed(
                            if c == b'h' {
                                "non-virtual thunk to "
                            } else {
                                "virtual thunk to "
                            },
                            e,
                        )
                    }
                    b'c' => {
                        self.call_offset()?;
                        self.call_offset()?;
                        let e = self.encoding()?;
                        self.prefixed("covariant return thunk to ", e)
                    }
                    b'C' => {
                        let first = self.type_()?;
                        if self.number(true).is_empty() || !self.eat(b'_') {
                            return Err(bad());
                        }
                        let second = self.type_()?;
                        self.add(Node::CtorVtable {
                            first: second,
                            second: first,
                        })
                    }
                    b'W' => {
                        let n = self.name_(None)?;
                        self.prefixed("thread-local wrapper routine for ", n)
                    }
                    b'H' => {
                        let n = self.name_(None)?;
                        self.prefixed("thread-local initialization routine for ", n)
                    }
                    _ => Err(bad()),
                }
            }
            (b'G', b'V') => {
                self.pos += 2;
                let n = self.name_(None)?;
                self.prefixed("guard variable for ", n)
            }
            (b'G', b'R') => {
                self.pos += 2;
                let n = self.name_(None)?;
                let parsed = self.seq_id().is_ok();
                if !self.eat(b'_') && parsed {
                    return Err(bad());
                }
                self.prefixed("reference temporary for ", n)
            }
            (b'G', b'A') => {
                self.pos += 2;
                let e = self.encoding()?;
                self.prefixed("hidden alias for ", e)
            }
            (b'G', b'T') => {
                self.pos += 2;
                if !self.eat(b't') && !self.eat(b'n') {
                    return Err(bad());
                }
                let e = self.encoding()?;
                self.prefixed("transaction clone for ", e)
            }
            _ => Err(bad()),
        }
    }

    fn seq_id(&mut self) -> Result<usize, Error> {
        let c = self.look(0);
        if !(c.is_ascii_digit() || c.is_ascii_uppercase()) {
            return Err(bad());
        }
        let mut id: usize = 0;
        loop {
            let c = self.look(0);
            let d = match c {
                b'0'..=b'9' => c - b'0',
                b'A'..=b'Z' => c - b'A' + 10,
                _ => break,
            };
            id = id
                .checked_mul(36)
                .and_then(|i| i.checked_add(d as usize))
                .ok_or_else(bad)?;
            self.pos += 1;
        }
        Ok(id)
    }

    fn name_(&mut self, mut state: Option<&mut NameState>) -> R {
        self.enter()?;
        let r = (|| {
            self.eat(b'L');
            match self.look(0) {
                b'N' => return self.nested_name(state),
                b'Z' => return self.local_name(state),
                _ => {}
            }
            if self.look(0) == b'S' && self.look(1) != b't' {
                let s = self.substitution()?;
                if self.look(0) != b'I' {
                    return Err(bad());
                }
                let tagged = state.is_some();
                let args = self.template_args(tagged)?;
                if let Some(st) = state.as_deref_mut() {
                    st.ends_with_template_args = true;
                }
                return self.add(Node::WithArgs { name: s, args });
            }
            let n = self.unscoped_name(state.as_deref_mut())?;
            if self.look(0) == b'I' {
                self.subs.push(n);
                let tagged = state.is_some();
                let args = self.template_args(tagged)?;
                if let Some(st) = state {
                    st.ends_with_template_args = true;
                }
                return self.add(Node::WithArgs { name: n, args });
            }
            Ok(n)
        })();
        self.leave();
        r
    }

    fn unscoped_name(&mut self, state: Option<&mut NameState>) -> R {
        if self.eat_str("St") {
            self.eat(b'L');
            let r = self.unqualified_name(state)?;
            return self.add(Node::Std(r));
        }
        self.unqualified_name(state)
    }

    fn local_name(&mut self, state: Option<&mut NameState>) -> R {
        if !self.eat(b'Z') {
            return Err(bad());
        }
        let encoding = self.encoding()?;
        if !self.eat(b'E') {
            return Err(bad());
        }
        if self.eat(b's') {
            self.discriminator();
            let entity = self.name("string literal")?;
            return self.add(Node::Local { encoding, entity });
        }
        if self.eat(b'd') {
            self.number(true);
            if !self.eat(b'_') {
                return Err(bad());
            }
            let entity = self.name_(state)?;
            return self.add(Node::Local { encoding, entity });
        }
        let entity = self.name_(state)?;
        self.discriminator();
        self.add(Node::Local { encoding, entity })
    }

    fn discriminator(&mut self) {
        if self.look(0) == b'_' {
            if self.look(1).is_ascii_digit() {
                self.pos += 2;
            } else if self.look(1) == b'_' {
                let mut i = 2;
                while self.look(i).is_ascii_digit() {
                    i += 1;
                }
                if self.look(i) == b'_' {
                    self.pos += i + 1;
                }
            }
        } else if self.look(0).is_ascii_digit() {
            let mut i = 1;
            while self.look(i).is_ascii_digit() {
                i += 1;
            }
            if self.pos + i == self.s.len() {
                self.pos = self.s.len();
            }
        }
    }

    fn nested_name(&mut self, mut state: Option<&mut NameState>) -> R {
        if !self.eat(b'N') {
            return Err(bad());
        }
        let cv = self.cv_quals();
        let ref_qual = if self.eat(b'O') {
            RefQual::RValue
        } else if self.eat(b'R') {
            RefQual::LValue
        } else {
            RefQual::None
        };
        if let Some(st) = state.as_deref_mut() {
            st.cv = cv;
            st.ref_qual = ref_qual;
        }
        let mut so_far: Option<Id> = None;
        macro_rules! push_component {
            ($comp:expr) => {{
                let comp = $comp;
                so_far = Some(match so_far {
                    Some(q) => self.add(Node::Nested {
                        qual: q,
                        name: comp,
                    })?,
                    None => comp,
                });
                if let Some(st) = state.as_deref_mut() {
                    st.ends_with_template_args = false;
                }
            }};
        }
        while !self.eat(b'E') {
            self.eat(b'L');
            if self.eat(b'M') {
                if so_far.is_none() {
                    return Err(bad());
                }
                continue;
            }
            match (self.look(0), self.look(1)) {
                (b'T', _) => {
                    let p = self.template_param()?;
                    push_component!(p);
                    self.subs.push(so_far.unwrap());
                }
                (b'I', _) => {
                    let tagged = state.is_some();
                    let args = self.template_args(tagged)?;
                    let name = so_far.ok_or_else(bad)?;
                    so_far = Some(self.add(Node::WithArgs { name, args })?);
                    if let Some(st) = state.as_deref_mut() {
                        st.ends_with_template_args = true;
                    }
                    self.subs.push(so_far.unwrap());
                }
                (b'D', b't' | b'T') => {
                    let d = self.decltype()?;
                    push_component!(d);
                    self.subs.push(so_far.unwrap());
                }
                (b'S', b't') => {
                    self.pos += 2;
                    let std = self.name("std")?;
                    push_component!(std);
                }
                (b'S', _) => {
                    let s = self.substitution()?;
                    push_component!(s);
                    if so_far != Some(s) {
                        self.subs.push(so_far.unwrap());
                    }
                }
                (b'C', _) | (b'D', _) if !(self.look(0) == b'D' && self.look(1) == b'C') => {
                    let prefix = so_far.ok_or_else(bad)?;
                    let (prefix, ctor) = self.ctor_dtor_name(prefix, state.as_deref_mut())?;
                    // The prefix of a constructor of `std::string` is spelled out.
                    so_far = Some(prefix);
                    push_component!(ctor);
                    let tagged = self.abi_tags(so_far.unwrap())?;
                    so_far = Some(tagged);
                    self.subs.push(tagged);
                }
                _ => {
                    let n = self.unqualified_name(state.as_deref_mut())?;
                    push_component!(n);
                    self.subs.push(so_far.unwrap());
                }
            }
        }
        if so_far.is_none() || self.subs.is_empty() {
            return Err(bad());
        }
        self.subs.pop();
        Ok(so_far.unwrap())
    }

    fn ctor_dtor_name(
        &mut self,
        prefix: Id,
        state: Option<&mut NameState>,
    ) -> Result<(Id, Id), Error> {
        let mut prefix = prefix;
        if let Node::Special {
            kind: kind @ (Special::String | Special::Istream | Special::Ostream | Special::Iostream),
            expanded: false,
        } = *self.ast.get(prefix)
        {
            prefix = self.add(Node::Special {
                kind,
                expanded: true,
            })?;
        }
        if self.eat(b'C') {
            let inherited = self.eat(b'I');
            if !matches!(self.look(0), b'1'..=b'5') {
                return Err(bad());
            }
            self.pos += 1;
            let mut state = state;
            if let Some(st) = state.as_deref_mut() {
                st.ctor_dtor_conversion = true;
            }
            if inherited {
                self.name_(state)?;
            }
            let c = self.add(Node::CtorDtor {
                base: prefix,
                dtor: false,
            })?;
            return Ok((prefix, c));
        }
        if self.look(0) == b'D' && matches!(self.look(1), b'0' | b'1' | b'2' | b'4' | b'5') {
            self.pos += 2;
            if let Some(st) = state {
                st.ctor_dtor_conversion = true;
            }
            let d = self.add(Node::CtorDtor {
                base: prefix,
                dtor: true,
            })?;
            return Ok((prefix, d));
        }
        Err(bad())
    }

    fn abi_tags(&mut self, mut n: Id) -> R {
        while self.eat(b'B') {
            let tag = self.bare_source_name()?;
            n = self.add(Node::AbiTag {
                base: n,
                tag: tag.into(),
            })?;
        }
        Ok(n)
    }

    fn unqualified_name(&mut self, state: Option<&mut NameState>) -> R {
        let r = match self.look(0) {
            b'U' => self.unnamed_type_name(state.is_some())?,
            b'1'..=b'9' => self.source_name()?,
            b'D' if self.look(1) == b'C' => {
                self.pos += 2;
                let mut names = Vec::new();
                while !self.eat(b'E') {
                    names.push(self.source_name()?);
                }
                self.add(Node::Binding(names))?
            }
            _ => self.operator_name(state)?,
        };
        self.abi_tags(r)
    }

    fn source_name(&mut self) -> R {
        let n = self.bare_source_name()?;
        if n.starts_with("_GLOBAL__N") {
            return self.name("(anonymous namespace)");
        }
        self.name(n)
    }

    fn unnamed_type_name(&mut self, in_encoding_name: bool) -> R {
        if in_encoding_name {
            self.levels.clear();
        }
        if self.eat_str("Ut") {
            let count = self.number(false);
            if !self.eat(b'_') {
                return Err(bad());
            }
            return self.add(Node::Unnamed(count.into()));
        }
        if self.eat_str("Ul") {
            // A scope of its own for the lambda's template parameters (dropped on exit), and
            // `auto` for parameters that refer past the known ones at that level.
            let old_size = self.levels.len();
            let saved_lambda = self.lambda_level.replace(old_size);
            self.levels.push(Some(Vec::new()));
            let r = self.closure();
            self.levels.truncate(old_size);
            self.lambda_level = saved_lambda;
            return r;
        }
        if self.eat_str("Ub") {
            self.number(false);
            if !self.eat(b'_') {
                return Err(bad());
            }
            return self.name("'block-literal'");
        }
        Err(bad())
    }

    fn closure(&mut self) -> R {
        let mut tparams = Vec::new();
        while self.look(0) == b'T' && matches!(self.look(1), b'y' | b'p' | b't' | b'n') {
            tparams.push(self.template_param_decl()?);
        }
        if tparams.is_empty() {
            self.levels.pop();
        }
        let mut params = Vec::new();
        if !self.eat_str("vE") {
            loop {
                params.push(self.type_()?);
                if self.eat(b'E') {
                    break;
                }
            }
        }
        let count = self.number(false);
        if !self.eat(b'_') {
            return Err(bad());
        }
        self.add(Node::Closure {
            tparams,
            params,
            count: count.into(),
        })
    }

    /// `Ty` / `Tn <type>`: a lambda's explicit template parameters, named `$T`, `$T0`, …
    /// and `$N`, `$N0`, … as LLVM invents them.
    fn template_param_decl(&mut self) -> R {
        let type_param = self.look(1) == b'y';
        let kind = if type_param { "$T" } else { "$N" };
        let n = self
            .levels
            .last()
            .and_then(|l| l.as_ref())
            .map_or(0, |l| l.len());
        let label = if n == 0 {
            kind.to_string()
        } else {
            format!("{kind}{}", n - 1)
        };
        let name = self.name(&label)?;
        if let Some(Some(l)) = self.levels.last_mut() {
            l.push(name);
        }
        if self.eat_str("Ty") {
            return self.add(Node::Prefixed {
                prefix: "typename ",
                child: name,
            });
        }
        Err(Error::Unsupported)
    }

    fn operator_name(&mut self, state: Option<&mut NameState>) -> R {
        let (a, b) = (self.look(0), self.look(1));
        let simple = match (a, b) {
            (b'a', b'a') => "operator&&",
            (b'a', b'd') | (b'a', b'n') => "operator&",
            (b'a', b'N') => "operator&=",
            (b'a', b'S') => "operator=",
            (b'a', b'w') => "operator co_await",
            (b'c', b'l') => "operator()",
            (b'c', b'm') => "operator,",
            (b'c', b'o') => "operator~",
            (b'd', b'a') => "operator delete[]",
            (b'd', b'e') => "operator*",
            (b'd', b'l') => "operator delete",
            (b'd', b'v') => "operator/",
            (b'd', b'V') => "operator/=",
            (b'e', b'o') => "operator^",
            (b'e', b'O') => "operator^=",
            (b'e', b'q') => "operator==",
            (b'g', b'e') => "operator>=",
            (b'g', b't') => "operator>",
            (b'i', b'x') => "operator[]",
            (b'l', b'e') => "operator<=",
            (b'l', b's') => "operator<<",
            (b'l', b'S') => "operator<<=",
            (b'l', b't') => "operator<",
            (b'm', b'i') => "operator-",
            (b'm', b'I') => "operator-=",
            (b'm', b'l') => "operator*",
            (b'm', b'L') => "operator*=",
            (b'm', b'm') => "operator--",
            (b'n', b'a') => "operator new[]",
            (b'n', b'e') => "operator!=",
            (b'n', b'g') => "operator-",
            (b'n', b't') => "operator!",
            (b'n', b'w') => "operator new",
            (b'o', b'o') => "operator||",
            (b'o', b'r') => "operator|",
            (b'o', b'R') => "operator|=",
            (b'p', b'm') => "operator->*",
            (b'p', b'l') => "operator+",
            (b'p', b'L') => "operator+=",
            (b'p', b'p') => "operator++",
            (b'p', b's') => "operator+",
            (b'p', b't') => "operator->",
            (b'q', b'u') => "operator?",
            (b'r', b'm') => "operator%",
            (b'r', b'M') => "operator%=",
            (b'r', b's') => "operator>>",
            (b'r', b'S') => "operator>>=",
            (b's', b's') => "operator<=>",
            (b'c', b'v') => {
                self.pos += 2;
                let saved = (self.try_template_args, self.permit_forward);
                self.try_template_args = false;
                self.permit_forward = self.permit_forward || state.is_some();
                let ty = self.type_();
                (self.try_template_args, self.permit_forward) = saved;
                let ty = ty?;
                if let Some(st) = state {
                    st.ctor_dtor_conversion = true;
                }
                return self.add(Node::Conversion(ty));
            }
            (b'l', b'i') => {
                self.pos += 2;
                let n = self.source_name()?;
                return self.add(Node::LiteralOp(n));
            }
            (b'v', d) if d.is_ascii_digit() => {
                self.pos += 2;
                let n = self.source_name()?;
                return self.add(Node::Conversion(n));
            }
            _ => return Err(bad()),
        };
        self.pos += 2;
        self.name(simple)
    }

    fn substitution(&mut self) -> R {
        if !self.eat(b'S') {
            return Err(bad());
        }
        let c = self.look(0);
        if c.is_ascii_lowercase() {
            let kind = match c {
                b'a' => Special::Allocator,
                b'b' => Special::BasicString,
                b's' => Special::String,
                b'i' => Special::Istream,
                b'o' => Special::Ostream,
                b'd' => Special::Iostream,
                _ => return Err(bad()),
            };
            self.pos += 1;
            let sub = self.add(Node::Special {
                kind,
                expanded: false,
            })?;
            let tagged = self.abi_tags(sub)?;
            if tagged != sub {
                self.subs.push(tagged);
            }
            return Ok(tagged);
        }
        if self.eat(b'_') {
            return self.subs.first().copied().ok_or_else(bad);
        }
        let index = self.seq_id()?.checked_add(1).ok_or_else(bad)?;
        if !self.eat(b'_') {
            return Err(bad());
        }
        self.subs.get(index).copied().ok_or_else(bad)
    }

    fn template_param(&mut self) -> R {
        if !self.eat(b'T') {
            return Err(bad());
        }
        let mut level = 0;
        if self.eat(b'L') {
            level = self.positive()?.checked_add(1).ok_or_else(bad)?;
            if !self.eat(b'_') {
                return Err(bad());
            }
        }
        let mut index = 0;
        if !self.eat(b'_') {
            index = self.positive()?.checked_add(1).ok_or_else(bad)?;
            if !self.eat(b'_') {
                return Err(bad());
            }
        }
        if self.permit_forward && level == 0 {
            let id = self.add(Node::Forward { target: None })?;
            self.forward_refs.push((id, index));
            return Ok(id);
        }
        let found = self
            .levels
            .get(level)
            .and_then(|l| l.as_ref())
            .and_then(|l| l.get(index))
            .copied();
        match found {
            Some(id) => Ok(id),
            None => {
                if self.lambda_level == Some(level) && level <= self.levels.len() {
                    if level == self.levels.len() {
                        self.levels.push(None);
                    }
                    return self.name("auto");
                }
                Err(bad())
            }
        }
    }

    fn template_args(&mut self, tagged: bool) -> R {
        if !self.eat(b'I') {
            return Err(bad());
        }
        if tagged {
            self.levels.clear();
            self.levels.push(Some(Vec::new()));
        }
        let mut args = Vec::new();
        while !self.eat(b'E') {
            if tagged {
                // A tagged argument is parsed with no template parameters in scope.
                let outer = std::mem::take(&mut self.levels);
                let arg = self.template_arg();
                self.levels = outer;
                let arg = arg?;
                args.push(arg);
                let entry = match self.ast.get(arg) {
                    Node::ArgPack(items) => {
                        let items = items.clone();
                        self.add(Node::ParamPack(items))?
                    }
                    _ => arg,
                };
                match self.levels.last_mut() {
                    Some(Some(l)) => l.push(entry),
                    _ => return Err(bad()),
                }
            } else {
                args.push(self.template_arg()?);
            }
        }
        self.add(Node::TemplateArgs(args))
    }

    fn template_arg(&mut self) -> R {
        self.enter()?;
        let r = (|| match self.look(0) {
            b'X' => {
                self.pos += 1;
                let e = self.expr()?;
                if !self.eat(b'E') {
                    return Err(bad());
                }
                Ok(e)
            }
            b'J' => {
                self.pos += 1;
                let mut items = Vec::new();
                while !self.eat(b'E') {
                    items.push(self.template_arg()?);
                }
                self.add(Node::ArgPack(items))
            }
            b'L' => {
                if self.look(1) == b'Z' {
                    self.pos += 2;
                    let e = self.encoding()?;
                    if !self.eat(b'E') {
                        return Err(bad());
                    }
                    return Ok(e);
                }
                self.expr_primary()
            }
            _ => self.type_(),
        })();
        self.leave();
        r
    }

    fn builtin(&mut self, len: usize, name: &str) -> R {
        self.pos += len;
        self.name(name)
    }

    pub(crate) fn type_(&mut self) -> R {
        self.enter()?;
        let r = self.type_inner();
        self.leave();
        r
    }

    fn type_inner(&mut self) -> R {
        let result = match self.look(0) {
            b'r' | b'V' | b'K' => {
                let mut i = 0;
                for q in [b'r', b'V', b'K'] {
                    if self.look(i) == q {
                        i += 1;
                    }
                }
                if self.look(i) == b'F'
                    || (self.look(i) == b'D'
                        && matches!(self.look(i + 1), b'o' | b'O' | b'w' | b'x'))
                {
                    self.function_type()?
                } else {
                    self.qualified_type()?
                }
            }
            b'U' => self.qualified_type()?,
            b'v' => return self.builtin(1, "void"),
            b'w' => return self.builtin(1, "wchar_t"),
            b'b' => return self.builtin(1, "bool"),
            b'c' => return self.builtin(1, "char"),
            b'a' => return self.builtin(1, "signed char"),
            b'h' => return self.builtin(1, "unsigned char"),
            b's' => return self.builtin(1, "short"),
            b't' => return self.builtin(1, "unsigned short"),
            b'i' => return self.builtin(1, "int"),
            b'j' => return self.builtin(1, "unsigned int"),
            b'l' => return self.builtin(1, "long"),
            b'm' => return self.builtin(1, "unsigned long"),
            b'x' => return self.builtin(1, "long long"),
            b'y' => return self.builtin(1, "unsigned long long"),
            b'n' => return self.builtin(1, "__int128"),
            b'o' => return self.builtin(1, "unsigned __int128"),
            b'f' => return self.builtin(1, "float"),
            b'd' => return self.builtin(1, "double"),
            b'e' => return self.builtin(1, "long double"),
            b'g' => return self.builtin(1, "__float128"),
            b'z' => return self.builtin(1, "..."),
            b'u' => {
                self.pos += 1;
                let n = self.bare_source_name()?;
                self.name(n)?
            }
            b'D' => match self.look(1) {
                b'd' => return self.builtin(2, "decimal64"),
                b'e' => return self.builtin(2, "decimal128"),
                b'f' => return self.builtin(2, "decimal32"),
                b'h' => return self.builtin(2, "half"),
                b'F' => {
                    self.pos += 2;
                    let n = self.number(false);
                    let dim = self.name(n)?;
                    if !self.eat(b'_') {
                        return Err(bad());
                    }
                    return self.add(Node::BinaryFloat(dim));
                }
                b'i' => return self.builtin(2, "char32_t"),
                b's' => return self.builtin(2, "char16_t"),
                b'u' => return self.builtin(2, "char8_t"),
                b'a' => return self.builtin(2, "auto"),
                b'c' => return self.builtin(2, "decltype(auto)"),
                b'n' => return self.builtin(2, "std::nullptr_t"),
                b't' | b'T' => self.decltype()?,
                b'v' => self.vector_type()?,
                b'p' => {
                    self.pos += 2;
                    let child = self.type_()?;
                    self.add(Node::PackExpansion(child))?
                }
                b'o' | b'O' | b'w' | b'x' => self.function_type()?,
                _ => return Err(bad()),
            },
            b'F' => self.function_type()?,
            b'A' => self.array_type()?,
            b'M' => {
                self.pos += 1;
                let class = self.type_()?;
                let member = self.type_()?;
                self.add(Node::PtrToMember { class, member })?
            }
            b'T' => {
                if matches!(self.look(1), b's' | b'u' | b'e') {
                    self.class_enum_type()?
                } else {
                    let p = self.template_param()?;
                    if self.try_template_args && self.look(0) == b'I' {
                        let args = self.template_args(false)?;
                        self.add(Node::WithArgs { name: p, args })?
                    } else {
                        p
                    }
                }
            }
            b'P' => {
                self.pos += 1;
                let p = self.type_()?;
                self.add(Node::Pointer(p))?
            }
            b'R' | b'O' => {
                let rvalue = self.look(0) == b'O';
                self.pos += 1;
                let p = self.type_()?;
                self.add(Node::Reference { pointee: p, rvalue })?
            }
            b'C' | b'G' => {
                let postfix = if self.look(0) == b'C' {
                    " complex"
                } else {
                    " imaginary"
                };
                self.pos += 1;
                let ty = self.type_()?;
                self.add(Node::Postfix { ty, postfix })?
            }
            b'S' if self.look(1) != b't' && self.look(1) != 0 => {
                let sub = self.substitution()?;
                if self.try_template_args && self.look(0) == b'I' {
                    let args = self.template_args(false)?;
                    self.add(Node::WithArgs { name: sub, args })?
                } else {
                    return Ok(sub);
                }
            }
            _ => self.class_enum_type()?,
        };
        self.subs.push(result);
        Ok(result)
    }

    fn qualified_type(&mut self) -> R {
        if self.eat(b'U') {
            let ext = self.bare_source_name()?;
            let ty = self.qualified_type()?;
            return self.add(Node::VendorExt {
                ty,
                ext: ext.into(),
            });
        }
        let quals = self.cv_quals();
        let ty = self.type_()?;
        if quals != 0 {
            return self.add(Node::Qual { child: ty, quals });
        }
        Ok(ty)
    }

    fn class_enum_type(&mut self) -> R {
        let kind = if self.eat_str("Ts") {
            Some("struct")
        } else if self.eat_str("Tu") {
            Some("union")
        } else if self.eat_str("Te") {
            Some("enum")
        } else {
            None
        };
        let n = self.name_(None)?;
        match kind {
            Some(kind) => self.add(Node::Elaborated { kind, child: n }),
            None => Ok(n),
        }
    }

    fn function_type(&mut self) -> R {
        let cv = self.cv_quals();
        let mut except = None;
        if self.eat_str("Do") {
            except = Some(self.name("noexcept")?);
        } else if self.eat_str("DO") {
            let e = self.expr()?;
            if !self.eat(b'E') {
                return Err(bad());
            }
            except = Some(self.add(Node::NoexceptSpec(e))?);
        } else if self.eat_str("Dw") {
            let mut types = Vec::new();
            while !self.eat(b'E') {
                types.push(self.type_()?);
            }
            except = Some(self.add(Node::ThrowSpec(types))?);
        }
        self.eat_str("Dx");
        if !self.eat(b'F') {
            return Err(bad());
        }
        self.eat(b'Y');
        let ret = self.type_()?;
        let mut params = Vec::new();
        let mut ref_qual = RefQual::None;
        loop {
            if self.eat(b'E') {
                break;
            }
            if self.eat(b'v') {
                continue;
            }
            if self.eat_str("RE") {
                ref_qual = RefQual::LValue;
                break;
            }
            if self.eat_str("OE") {
                ref_qual = RefQual::RValue;
                break;
            }
            if self.left() == 0 {
                return Err(bad());
            }
            params.push(self.type_()?);
        }
        self.add(Node::Function {
            ret,
            params,
            cv,
            ref_qual,
            except,
        })
    }

    fn array_type(&mut self) -> R {
        if !self.eat(b'A') {
            return Err(bad());
        }
        let mut dim = None;
        if self.look(0).is_ascii_digit() {
            let n = self.number(false);
            dim = Some(self.name(n)?);
            if !self.eat(b'_') {
                return Err(bad());
            }
        } else if !self.eat(b'_') {
            dim = Some(self.expr()?);
            if !self.eat(b'_') {
                return Err(bad());
            }
        }
        let base = self.type_()?;
        self.add(Node::Array { base, dim })
    }

    fn vector_type(&mut self) -> R {
        if !self.eat_str("Dv") {
            return Err(bad());
        }
        if matches!(self.look(0), b'1'..=b'9') {
            let n = self.number(false);
            let dim = self.name(n)?;
            if !self.eat(b'_') {
                return Err(bad());
            }
            if self.eat(b'p') {
                return self.add(Node::PixelVector(dim));
            }
            let base = self.type_()?;
            return self.add(Node::Vector {
                base,
                dim: Some(dim),
            });
        }
        if !self.eat(b'_') {
            let dim = self.expr()?;
            if !self.eat(b'_') {
                return Err(bad());
            }
            let base = self.type_()?;
            return self.add(Node::Vector {
                base,
                dim: Some(dim),
            });
        }
        let base = self.type_()?;
        self.add(Node::Vector { base, dim: None })
    }

    fn decltype(&mut self) -> R {
        if !(self.eat_str("Dt") || self.eat_str("DT")) {
            return Err(bad());
        }
        let e = self.expr()?;
        if !self.eat(b'E') {
            return Err(bad());
        }
        self.add(Node::Enclosing {
            pre: "decltype(",
            child: e,
            post: ")",
        })
    }

    // ---- expressions ----

    fn expr_primary(&mut self) -> R {
        if !self.eat(b'L') {
            return Err(bad());
        }
        let int = |p: &mut Self, ty: &'static str| -> R {
            p.pos += 1;
            let v = p.number(true);
            if v.is_empty() || !p.eat(b'E') {
                return Err(bad());
            }
            p.add(Node::Integer {
                ty,
                value: v.into(),
            })
        };
        match self.look(0) {
            b'w' => int(self, "wchar_t"),
            b'b' => {
                if self.eat_str("b0E") {
                    self.add(Node::Bool(false))
                } else if self.eat_str("b1E") {
                    self.add(Node::Bool(true))
                } else {
                    Err(bad())
                }
            }
            b'c' => int(self, "char"),
            b'a' => int(self, "signed char"),
            b'h' => int(self, "unsigned char"),
            b's' => int(self, "short"),
            b't' => int(self, "unsigned short"),
            b'i' => int(self, ""),
            b'j' => int(self, "u"),
            b'l' => int(self, "l"),
            b'm' => int(self, "ul"),
            b'x' => int(self, "ll"),
            b'y' => int(self, "ull"),
            b'n' => int(self, "__int128"),
            b'o' => int(self, "unsigned __int128"),
            b'f' => {
                self.pos += 1;
                self.float_literal(8, 'f')
            }
            b'd' => {
                self.pos += 1;
                self.float_literal(16, 'd')
            }
            b'e' => {
                self.pos += 1;
                self.float_literal(20, 'e')
            }
            b'_' => {
                if self.eat_str("_Z") {
                    let e = self.encoding()?;
                    if self.eat(b'E') {
                        return Ok(e);
                    }
                }
                Err(bad())
            }
            b'A' => {
                let t = self.type_()?;
                if self.eat(b'E') {
                    return self.add(Node::StringLiteral(t));
                }
                Err(bad())
            }
            b'D' => {
                if self.eat_str("DnE") {
                    return self.name("nullptr");
                }
                Err(bad())
            }
            b'T' => Err(bad()),
            b'U' => {
                if self.look(1) != b'l' {
                    return Err(bad());
                }
                let t = self.unnamed_type_name(false)?;
                if !self.eat(b'E') {
                    return Err(bad());
                }
                self.add(Node::Lambda(t))
            }
            _ => {
                let ty = self.type_()?;
                let v = self.number(true);
                if v.is_empty() || !self.eat(b'E') {
                    return Err(bad());
                }
                self.add(Node::Enum {
                    ty,
                    value: v.into(),
                })
            }
        }
    }

    /// A floating-point literal: its bytes in hex, printed as C's `%a` would.
    fn float_literal(&mut self, hex_len: usize, kind: char) -> R {
        if self.left() <= hex_len {
            return Err(bad());
        }
        let data = &self.s[self.pos..self.pos + hex_len];
        if !data.iter().all(|c| c.is_ascii_hexdigit()) {
            return Err(bad());
        }
        let hex = std::str::from_utf8(data).map_err(|_| bad())?;
        self.pos += hex_len;
        if !self.eat(b'E') {
            return Err(bad());
        }
        let text = match kind {
            'f' => {
                let bits = u32::from_str_radix(hex, 16).map_err(|_| bad())?;
                format!("{}f", hex_float(f32::from_bits(bits) as f64))
            }
            'd' => {
                let bits = u64::from_str_radix(hex, 16).map_err(|_| bad())?;
                hex_float(f64::from_bits(bits))
            }
            _ => return Err(Error::Unsupported),
        };
        self.add(Node::Float(text.into()))
    }

    fn binary(&mut self, op: &'static str) -> R {
        self.pos += 2;
        let lhs = self.expr()?;
        let rhs = self.expr()?;
        self.add(Node::Binary { lhs, op, rhs })
    }

    fn prefix(&mut self, op: &'static str) -> R {
        self.pos += 2;
        let child = self.expr()?;
        self.add(Node::Prefix { op, child })
    }

    fn cast(&mut self, kind: &'static str) -> R {
        self.pos += 2;
        let to = self.type_()?;
        let from = self.expr()?;
        self.add(Node::Cast { kind, to, from })
    }

    fn enclosing_type(&mut self, pre: &'static str) -> R {
        self.pos += 2;
        let child = self.type_()?;
        self.add(Node::Enclosing {
            pre,
            child,
            post: ")",
        })
    }

    fn enclosing_expr(&mut self, pre: &'static str) -> R {
        self.pos += 2;
        let child = self.expr()?;
        self.add(Node::Enclosing {
            pre,
            child,
            post: ")",
        })
    }

    fn expr_list_until_e(&mut self) -> Result<Vec<Id>, Error> {
        let mut v = Vec::new();
        while !self.eat(b'E') {
            if self.left() == 0 {
                return Err(bad());
            }
            v.push(self.expr()?);
        }
        Ok(v)
    }

    pub(crate) fn expr(&mut self) -> R {
        self.enter()?;
        let r = self.expr_inner();
        self.leave();
        r
    }

    fn expr_inner(&mut self) -> R {
        let global = self.eat_str("gs");
        if self.left() < 2 {
            return Err(bad());
        }
        match (self.look(0), self.look(1)) {
            (b'L', _) => self.expr_primary(),
            (b'T', _) => self.template_param(),
            (b'f', b'p') | (b'f', b'L') => self.function_param(),
            (b'f', _) => Err(Error::Unsupported),
            (b'a', b'a') => self.binary("&&"),
            (b'a', b'd') => self.prefix("&"),
            (b'a', b'n') => self.binary("&"),
            (b'a', b'N') => self.binary("&="),
            (b'a', b'S') => self.binary("="),
            (b'a', b't') => self.enclosing_type("alignof ("),
            (b'a', b'z') => self.enclosing_expr("alignof ("),
            (b'c', b'c') => self.cast("const_cast"),
            (b'c', b'l') => {
                self.pos += 2;
                let callee = self.expr()?;
                let args = self.expr_list_until_e()?;
                self.add(Node::Call { callee, args })
            }
            (b'c', b'm') => self.binary(","),
            (b'c', b'o') => self.prefix("~"),
            (b'c', b'v') => {
                self.pos += 2;
                let saved = self.try_template_args;
                self.try_template_args = false;
                let ty = self.type_();
                self.try_template_args = saved;
                let ty = ty?;
                let exprs = if self.eat(b'_') {
                    self.expr_list_until_e()?
                } else {
                    vec![self.expr()?]
                };
                self.add(Node::ConversionExpr { ty, exprs })
            }
            (b'd', b'a') | (b'd', b'l') => {
                let array = self.look(1) == b'a';
                self.pos += 2;
                let op = self.expr()?;
                self.add(Node::Delete { op, global, array })
            }
            (b'd', b'c') => self.cast("dynamic_cast"),
            (b'd', b'e') => self.prefix("*"),
            (b'd', b'n') => self.unresolved_name(),
            (b'd', b's') | (b'd', b't') | (b'p', b't') => {
                let kind = match self.look(1) {
                    b's' => ".*",
                    b't' if self.look(0) == b'd' => ".",
                    _ => "->",
                };
                self.pos += 2;
                let lhs = self.expr()?;
                let rhs = self.expr()?;
                self.add(Node::Member { lhs, kind, rhs })
            }
            (b'd', b'v') => self.binary("/"),
            (b'd', b'V') => self.binary("/="),
            (b'e', b'o') => self.binary("^"),
            (b'e', b'O') => self.binary("^="),
            (b'e', b'q') => self.binary("=="),
            (b'g', b'e') => self.binary(">="),
            (b'g', b't') => self.binary(">"),
            (b'i', b'x') => {
                self.pos += 2;
                let base = self.expr()?;
                let index = self.expr()?;
                self.add(Node::Subscript { base, index })
            }
            (b'i', b'l') => {
                self.pos += 2;
                let mut inits = Vec::new();
                while !self.eat(b'E') {
                    inits.push(self.braced_expr()?);
                }
                self.add(Node::InitList { ty: None, inits })
            }
            (b'l', b'e') => self.binary("<="),
            (b'l', b's') => self.binary("<<"),
            (b'l', b'S') => self.binary("<<="),
            (b'l', b't') => self.binary("<"),
            (b'm', b'i') => self.binary("-"),
            (b'm', b'I') => self.binary("-="),
            (b'm', b'l') => self.binary("*"),
            (b'm', b'L') => self.binary("*="),
            (b'm', b'm') | (b'p', b'p') => {
                let op = if self.look(0) == b'm' { "--" } else { "++" };
                self.pos += 2;
                if self.eat(b'_') {
                    let child = self.expr()?;
                    return self.add(Node::Prefix { op, child });
                }
                let child = self.expr()?;
                self.add(Node::PostfixExpr { child, op })
            }
            (b'n', b'a') | (b'n', b'w') => self.new_expr(global),
            (b'n', b'e') => self.binary("!="),
            (b'n', b'g') => self.prefix("-"),
            (b'n', b't') => self.prefix("!"),
            (b'n', b'x') => self.enclosing_expr("noexcept ("),
            (b'o', b'n') => self.unresolved_name(),
            (b'o', b'o') => self.binary("||"),
            (b'o', b'r') => self.binary("|"),
            (b'o', b'R') => self.binary("|="),
            (b'p', b'm') => self.binary("->*"),
            (b'p', b'l') => self.binary("+"),
            (b'p', b'L') => self.binary("+="),
            (b'p', b's') => self.prefix("+"),
            (b'q', b'u') => {
                self.pos += 2;
                let cond = self.expr()?;
                let then = self.expr()?;
                let other = self.expr()?;
                self.add(Node::Conditional { cond, then, other })
            }
            (b'r', b'c') => self.cast("reinterpret_cast"),
            (b'r', b'm') => self.binary("%"),
            (b'r', b'M') => self.binary("%="),
            (b'r', b's') => self.binary(">>"),
            (b'r', b'S') => self.binary(">>="),
            (b's', b'c') => self.cast("static_cast"),
            (b's', b'p') => {
                self.pos += 2;
                let child = self.expr()?;
                self.add(Node::PackExpansion(child))
            }
            (b's', b'r') => self.unresolved_name(),
            (b's', b't') => self.enclosing_type("sizeof ("),
            (b's', b'z') => self.enclosing_expr("sizeof ("),
            (b's', b'Z') => {
                self.pos += 2;
                match self.look(0) {
                    b'T' => {
                        let p = self.template_param()?;
                        self.add(Node::SizeofPack(p))
                    }
                    b'f' => {
                        let fp = self.function_param()?;
                        self.add(Node::Enclosing {
                            pre: "sizeof... (",
                            child: fp,
                            post: ")",
                        })
                    }
                    _ => Err(bad()),
                }
            }
            (b's', b'P') => {
                self.pos += 2;
                let mut items = Vec::new();
                while !self.eat(b'E') {
                    items.push(self.template_arg()?);
                }
                let pack = self.add(Node::List(items))?;
                self.add(Node::Enclosing {
                    pre: "sizeof... (",
                    child: pack,
                    post: ")",
                })
            }
            (b't', b'e') => self.enclosing_expr("typeid ("),
            (b't', b'i') => self.enclosing_type("typeid ("),
            (b't', b'l') => {
                self.pos += 2;
                let ty = self.type_()?;
                let mut inits = Vec::new();
                while !self.eat(b'E') {
                    inits.push(self.braced_expr()?);
                }
                self.add(Node::InitList {
                    ty: Some(ty),
                    inits,
                })
            }
            (b't', b'r') => {
                self.pos += 2;
                self.name("throw")
            }
            (b't', b'w') => {
                self.pos += 2;
                let e = self.expr()?;
                self.add(Node::Throw(e))
            }
            (b'1'..=b'9', _) => self.unresolved_name(),
            _ => Err(bad()),
        }
    }

    fn braced_expr(&mut self) -> R {
        if self.look(0) == b'd' {
            match self.look(1) {
                b'i' | b'x' => {
                    let array = self.look(1) == b'x';
                    self.pos += 2;
                    let elem = if array {
                        self.expr()?
                    } else {
                        self.source_name()?
                    };
                    let init = self.braced_expr()?;
                    return self.add(Node::Braced { elem, init, array });
                }
                b'X' => {
                    self.pos += 2;
                    let first = self.expr()?;
                    let last = self.expr()?;
                    let init = self.braced_expr()?;
                    return self.add(Node::BracedRange { first, last, init });
                }
                _ => {}
            }
        }
        self.expr()
    }

    fn new_expr(&mut self, global: bool) -> R {
        let array = self.look(1) == b'a';
        self.pos += 2;
        let mut exprs = Vec::new();
        while !self.eat(b'_') {
            if self.left() == 0 {
                return Err(bad());
            }
            exprs.push(self.expr()?);
        }
        let ty = self.type_()?;
        let mut inits = Vec::new();
        if self.eat_str("pi") {
            while !self.eat(b'E') {
                if self.left() == 0 {
                    return Err(bad());
                }
                inits.push(self.expr()?);
            }
        } else if !self.eat(b'E') {
            return Err(bad());
        }
        self.add(Node::New {
            exprs,
            ty,
            inits,
            global,
            array,
        })
    }

    fn function_param(&mut self) -> R {
        if self.eat_str("fpT") {
            return self.name("this");
        }
        if self.eat_str("fp") {
            self.cv_quals();
            let n = self.number(false);
            if !self.eat(b'_') {
                return Err(bad());
            }
            return self.add(Node::FunctionParam(n.into()));
        }
        if self.eat_str("fL") {
            if self.number(false).is_empty() || !self.eat(b'p') {
                return Err(bad());
            }
            self.cv_quals();
            let n = self.number(false);
            if !self.eat(b'_') {
                return Err(bad());
            }
            return self.add(Node::FunctionParam(n.into()));
        }
        Err(bad())
    }

    fn unresolved_type(&mut self) -> R {
        match self.look(0) {
            b'T' => {
                let p = self.template_param()?;
                self.subs.push(p);
                Ok(p)
            }
            b'D' => {
                let d = self.decltype()?;
                self.subs.push(d);
                Ok(d)
            }
            _ => self.substitution(),
        }
    }

    fn simple_id(&mut self) -> R {
        let n = self.source_name()?;
        if self.look(0) == b'I' {
            let args = self.template_args(false)?;
            return self.add(Node::WithArgs { name: n, args });
        }
        Ok(n)
    }

    fn base_unresolved_name(&mut self) -> R {
        if self.look(0).is_ascii_digit() {
            return self.simple_id();
        }
        if self.eat_str("dn") {
            let r = if self.look(0).is_ascii_digit() {
                self.simple_id()?
            } else {
                self.unresolved_type()?
            };
            return self.add(Node::Dtor(r));
        }
        self.eat_str("on");
        let op = self.operator_name(None)?;
        if self.look(0) == b'I' {
            let args = self.template_args(false)?;
            return self.add(Node::WithArgs { name: op, args });
        }
        Ok(op)
    }

    fn qualified(&mut self, qual: Id, name: Id) -> R {
        self.add(Node::Qualified { qual, name })
    }

    fn unresolved_name(&mut self) -> R {
        if self.eat_str("srN") {
            let mut so_far = self.unresolved_type()?;
            if self.look(0) == b'I' {
                let args = self.template_args(false)?;
                so_far = self.add(Node::WithArgs { name: so_far, args })?;
            }
            while !self.eat(b'E') {
                let q = self.simple_id()?;
                so_far = self.qualified(so_far, q)?;
            }
            let base = self.base_unresolved_name()?;
            return self.qualified(so_far, base);
        }
        let global = self.eat_str("gs");
        if !self.eat_str("sr") {
            let base = self.base_unresolved_name()?;
            if global {
                return self.add(Node::Global(base));
            }
            return Ok(base);
        }
        let mut so_far: Option<Id> = None;
        if self.look(0).is_ascii_digit() {
            loop {
                let q = self.simple_id()?;
                so_far = Some(match so_far {
                    Some(s) => self.qualified(s, q)?,
                    None if global => self.add(Node::Global(q))?,
                    None => q,
                });
                if self.eat(b'E') {
                    break;
                }
            }
        } else {
            let mut s = self.unresolved_type()?;
            if self.look(0) == b'I' {
                let args = self.template_args(false)?;
                s = self.add(Node::WithArgs { name: s, args })?;
            }
            so_far = Some(s);
        }
        let base = self.base_unresolved_name()?;
        self.qualified(so_far.ok_or_else(bad)?, base)
    }
}

/// C's `%a` for a double: `0x1.8p+1`, `0x0p+0`, `-0x1p-3`, subnormals as `0x0.…p-1022`.
fn hex_float(v: f64) -> String {
    if v.is_nan() {
        return "nan".into();
    }
    if v.is_infinite() {
        return if v < 0.0 { "-inf".into() } else { "inf".into() };
    }
    let bits = v.to_bits();
    let sign = if bits >> 63 == 1 { "-" } else { "" };
    let exp = ((bits >> 52) & 0x7ff) as i64;
    let mant = bits & ((1u64 << 52) - 1);
    if exp == 0 && mant == 0 {
        return format!("{sign}0x0p+0");
    }
    let (lead, e) = if exp == 0 {
        (0, -1022)
    } else {
        (1, exp - 1023)
    };
    let mut digits = format!("{mant:013x}");
    while digits.ends_with('0') {
        digits.pop();
    }
    let frac = if digits.is_empty() {
        String::new()
    } else {
        format!(".{digits}")
    };
    let esign = if e < 0 { '-' } else { '+' };
    format!("{sign}0x{lead}{frac}p{esign}{}", e.abs())
}
