//! The parsed name: nodes in an arena, and the printer that spells them the way LLVM's
//! `ItaniumDemangle` does (`printLeft` / `printRight`, pack expansion by a current index).

use crate::Error;

/// Index of a node in [`Ast::nodes`].
pub(crate) type Id = u32;

pub(crate) const CONST: u8 = 1;
pub(crate) const VOLATILE: u8 = 2;
pub(crate) const RESTRICT: u8 = 4;

/// Function reference qualifier (`&` / `&&` after the parameter list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum RefQual {
    #[default]
    None,
    LValue,
    RValue,
}

/// The standard abbreviations `Sa`, `Sb`, `Ss`, `Si`, `So`, `Sd`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Special {
    Allocator,
    BasicString,
    String,
    Istream,
    Ostream,
    Iostream,
}

impl Special {
    fn short(self) -> &'static str {
        match self {
            Special::Allocator => "std::allocator",
            Special::BasicString => "std::basic_string",
            Special::String => "std::string",
            Special::Istream => "std::istream",
            Special::Ostream => "std::ostream",
            Special::Iostream => "std::iostream",
        }
    }

    fn expanded(self) -> &'static str {
        match self {
            Special::Allocator => "std::allocator",
            Special::BasicString => "std::basic_string",
            Special::String => {
                "std::basic_string<char, std::char_traits<char>, std::allocator<char>>"
            }
            Special::Istream => "std::basic_istream<char, std::char_traits<char>>",
            Special::Ostream => "std::basic_ostream<char, std::char_traits<char>>",
            Special::Iostream => "std::basic_iostream<char, std::char_traits<char>>",
        }
    }

    fn base_name(self, expanded: bool) -> &'static str {
        match (self, expanded) {
            (Special::Allocator, _) => "allocator",
            (Special::BasicString, _) => "basic_string",
            (Special::String, false) => "string",
            (Special::String, true) => "basic_string",
            (Special::Istream, false) => "istream",
            (Special::Istream, true) => "basic_istream",
            (Special::Ostream, false) => "ostream",
            (Special::Ostream, true) => "basic_ostream",
            (Special::Iostream, false) => "iostream",
            (Special::Iostream, true) => "basic_iostream",
        }
    }
}

/// One node of a demangled name. Types, names and expressions share the enum, as they share
/// the grammar's substitution table.
#[derive(Debug, Clone)]
pub(crate) enum Node {
    /// Literal text: identifiers, builtin types, operator names.
    Name(Box<str>),
    /// `qual::name`.
    Nested {
        qual: Id,
        name: Id,
    },
    /// `encoding::entity` (a name local to a function).
    Local {
        encoding: Id,
        entity: Id,
    },
    /// `std::child`.
    Std(Id),
    WithArgs {
        name: Id,
        args: Id,
    },
    /// `<a, b>`.
    TemplateArgs(Vec<Id>),
    /// A `J…E` template argument pack: its elements, comma separated.
    ArgPack(Vec<Id>),
    /// What a template parameter that names a pack stands for: one element at a time,
    /// chosen by the printer's current pack index.
    ParamPack(Vec<Id>),
    /// `Dp` / `sp`: the child printed once per element of the pack inside it.
    PackExpansion(Id),
    AbiTag {
        base: Id,
        tag: Box<str>,
    },
    CtorDtor {
        base: Id,
        dtor: bool,
    },
    Special {
        kind: Special,
        expanded: bool,
    },
    Qual {
        child: Id,
        quals: u8,
    },
    Pointer(Id),
    Reference {
        pointee: Id,
        rvalue: bool,
    },
    PtrToMember {
        class: Id,
        member: Id,
    },
    Array {
        base: Id,
        dim: Option<Id>,
    },
    Function {
        ret: Id,
        params: Vec<Id>,
        cv: u8,
        ref_qual: RefQual,
        except: Option<Id>,
    },
    Encoding {
        ret: Option<Id>,
        name: Id,
        params: Vec<Id>,
        attrs: Option<Id>,
        cv: u8,
        ref_qual: RefQual,
    },
    /// ` [enable_if:args]`.
    EnableIf(Vec<Id>),
    /// `vtable for X`, `guard variable for X`, thunks.
    Prefixed {
        prefix: &'static str,
        child: Id,
    },
    CtorVtable {
        first: Id,
        second: Id,
    },
    /// `name (.cold)`: a compiler clone's suffix.
    DotSuffix {
        prefix: Id,
        suffix: Box<str>,
    },
    /// `operator T`.
    Conversion(Id),
    /// `operator"" _x`.
    LiteralOp(Id),
    Closure {
        tparams: Vec<Id>,
        params: Vec<Id>,
        count: Box<str>,
    },
    Unnamed(Box<str>),
    Binding(Vec<Id>),
    /// A template parameter used before its argument is parsed (conversion operators).
    Forward {
        target: Option<Id>,
    },
    VendorExt {
        ty: Id,
        ext: Box<str>,
    },
    /// `T complex`, `T imaginary`.
    Postfix {
        ty: Id,
        postfix: &'static str,
    },
    Elaborated {
        kind: &'static str,
        child: Id,
    },
    Vector {
        base: Id,
        dim: Option<Id>,
    },
    PixelVector(Id),
    BinaryFloat(Id),
    NoexceptSpec(Id),
    ThrowSpec(Vec<Id>),
    // Expressions, printed in LLVM 14's fully parenthesized style.
    Binary {
        lhs: Id,
        op: &'static str,
        rhs: Id,
    },
    Prefix {
        op: &'static str,
        child: Id,
    },
    PostfixExpr {
        child: Id,
        op: &'static str,
    },
    Conditional {
        cond: Id,
        then: Id,
        other: Id,
    },
    Member {
        lhs: Id,
        kind: &'static str,
        rhs: Id,
    },
    Enclosing {
        pre: &'static str,
        child: Id,
        post: &'static str,
    },
    Cast {
        kind: &'static str,
        to: Id,
        from: Id,
    },
    SizeofPack(Id),
    Call {
        callee: Id,
        args: Vec<Id>,
    },
    New {
        exprs: Vec<Id>,
        ty: Id,
        inits: Vec<Id>,
        global: bool,
        array: bool,
    },
    Delete {
        op: Id,
        global: bool,
        array: bool,
    },
    ConversionExpr {
        ty: Id,
        exprs: Vec<Id>,
    },
    InitList {
        ty: Option<Id>,
        inits: Vec<Id>,
    },
    Subscript {
        base: Id,
        index: Id,
    },
    Throw(Id),
    List(Vec<Id>),
    Qualified {
        qual: Id,
        name: Id,
    },
    Global(Id),
    Dtor(Id),
    Integer {
        ty: &'static str,
        value: Box<str>,
    },
    Enum {
        ty: Id,
        value: Box<str>,
    },
    Bool(bool),
    Float(Box<str>),
    FunctionParam(Box<str>),
    StringLiteral(Id),
    Lambda(Id),
    Braced {
        elem: Id,
        init: Id,
        array: bool,
    },
    BracedRange {
        first: Id,
        last: Id,
        init: Id,
    },
}

/// LLVM's three-valued property caches (`hasRHSComponent`, `hasArray`, `hasFunction`):
/// known no, known yes, or ask the node (packs and references depend on the pack index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tri {
    No,
    Yes,
    Unknown,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Caches {
    rhs: Tri,
    array: Tri,
    function: Tri,
}

/// Deepest node tree a name may build (each node's height is at most this): the printer
/// recurses once per level, and substitutions let a short input build a tall tree.
pub(crate) const MAX_HEIGHT: u32 = 400;
/// Longest output: substitutions let a short input expand exponentially.
pub(crate) const MAX_OUTPUT: usize = 256 * 1024;

#[derive(Debug, Default)]
pub(crate) struct Ast {
    pub(crate) nodes: Vec<Node>,
    caches: Vec<Caches>,
    heights: Vec<u32>,
}

impl Ast {
    pub(crate) fn add(&mut self, node: Node) -> Result<Id, Error> {
        let mut height = 0;
        let mut tri = |id: Id| -> Caches {
            height = height.max(self.heights[id as usize]);
            self.caches[id as usize]
        };
        let no = Caches {
            rhs: Tri::No,
            array: Tri::No,
            function: Tri::No,
        };
        let caches = match &node {
            Node::Pointer(p) | Node::Reference { pointee: p, .. } => Caches {
                rhs: tri(*p).rhs,
                ..no
            },
            Node::Qual { child, .. } => tri(*child),
            Node::PtrToMember { member, class } => {
                tri(*class);
                Caches {
                    rhs: tri(*member).rhs,
                    ..no
                }
            }
            Node::Array { .. } => Caches {
                rhs: Tri::Yes,
                array: Tri::Yes,
                function: Tri::No,
            },
            Node::Function { .. } | Node::Encoding { .. } => Caches {
                rhs: Tri::Yes,
                array: Tri::No,
                function: Tri::Yes,
            },
            Node::Forward { .. } => Caches {
                rhs: Tri::Unknown,
                array: Tri::Unknown,
                function: Tri::Unknown,
            },
            Node::ParamPack(data) => {
                let all_no = |f: fn(&Caches) -> Tri, ast: &Ast| {
                    if data.iter().all(|d| f(&ast.caches[*d as usize]) == Tri::No) {
                        Tri::No
                    } else {
                        Tri::Unknown
                    }
                };
                Caches {
                    rhs: all_no(|c| c.rhs, self),
                    array: all_no(|c| c.array, self),
                    function: all_no(|c| c.function, self),
                }
            }
            _ => no,
        };
        // Height over every child, for the recursion bound.
        let mut h = height;
        for_each_child(&node, |c| h = h.max(self.heights[c as usize]));
        let h = h + 1;
        if h > MAX_HEIGHT {
            return Err(Error::TooComplex);
        }
        let id = Id::try_from(self.nodes.len()).map_err(|_| Error::TooComplex)?;
        self.nodes.push(node);
        self.caches.push(caches);
        self.heights.push(h);
        Ok(id)
    }

    pub(crate) fn get(&self, id: Id) -> &Node {
        &self.nodes[id as usize]
    }

    pub(crate) fn set_forward(&mut self, id: Id, target: Id) {
        self.nodes[id as usize] = Node::Forward {
            target: Some(target),
        };
        self.heights[id as usize] = self.heights[target as usize] + 1;
    }

    /// The name whose constructor or destructor this is, without template arguments.
    pub(crate) fn base_name(&self, id: Id) -> String {
        match self.get(id) {
            Node::Name(n) => n.to_string(),
            Node::Nested { name, .. } => self.base_name(*name),
            Node::WithArgs { name, .. } => self.base_name(*name),
            Node::AbiTag { base, .. } => self.base_name(*base),
            Node::Std(c) => self.base_name(*c),
            Node::Local { entity, .. } => self.base_name(*entity),
            Node::Special { kind, expanded } => kind.base_name(*expanded).into(),
            Node::Forward { target: Some(t) } => self.base_name(*t),
            _ => {
                let mut p = Printer::new(self);
                p.print(id);
                p.out
            }
        }
    }
}

fn for_each_child(node: &Node, mut f: impl FnMut(Id)) {
    let list = |v: &[Id], f: &mut dyn FnMut(Id)| v.iter().for_each(|c| f(*c));
    match node {
        Node::Name(_)
        | Node::Unnamed(_)
        | Node::Special { .. }
        | Node::Integer { .. }
        | Node::Bool(_)
        | Node::Float(_)
        | Node::FunctionParam(_) => {}
        Node::Nested { qual: a, name: b }
        | Node::Local {
            encoding: a,
            entity: b,
        }
        | Node::WithArgs { name: a, args: b }
        | Node::PtrToMember {
            class: a,
            member: b,
        }
        | Node::CtorVtable {
            first: a,
            second: b,
        }
        | Node::Binary { lhs: a, rhs: b, .. }
        | Node::Member { lhs: a, rhs: b, .. }
        | Node::Cast { to: a, from: b, .. }
        | Node::Subscript { base: a, index: b }
        | Node::Qualified { qual: a, name: b }
        | Node::Braced {
            elem: a, init: b, ..
        } => {
            f(*a);
            f(*b);
        }
        Node::Std(a)
        | Node::PackExpansion(a)
        | Node::AbiTag { base: a, .. }
        | Node::CtorDtor { base: a, .. }
        | Node::Qual { child: a, .. }
        | Node::Pointer(a)
        | Node::Reference { pointee: a, .. }
        | Node::Prefixed { child: a, .. }
        | Node::DotSuffix { prefix: a, .. }
        | Node::Conversion(a)
        | Node::LiteralOp(a)
        | Node::VendorExt { ty: a, .. }
        | Node::Postfix { ty: a, .. }
        | Node::Elaborated { child: a, .. }
        | Node::PixelVector(a)
        | Node::BinaryFloat(a)
        | Node::NoexceptSpec(a)
        | Node::Prefix { child: a, .. }
        | Node::PostfixExpr { child: a, .. }
        | Node::Enclosing { child: a, .. }
        | Node::SizeofPack(a)
        | Node::Delete { op: a, .. }
        | Node::Throw(a)
        | Node::Global(a)
        | Node::Dtor(a)
        | Node::Enum { ty: a, .. }
        | Node::StringLiteral(a)
        | Node::Lambda(a) => f(*a),
        Node::TemplateArgs(v)
        | Node::ArgPack(v)
        | Node::ParamPack(v)
        | Node::EnableIf(v)
        | Node::Binding(v)
        | Node::ThrowSpec(v)
        | Node::List(v) => list(v, &mut f),
        Node::Array { base, dim } | Node::Vector { base, dim } => {
            f(*base);
            if let Some(d) = dim {
                f(*d);
            }
        }
        Node::Function {
            ret,
            params,
            except,
            ..
        } => {
            f(*ret);
            list(params, &mut f);
            if let Some(e) = except {
                f(*e);
            }
        }
        Node::Encoding {
            ret,
            name,
            params,
            attrs,
            ..
        } => {
            if let Some(r) = ret {
                f(*r);
            }
            f(*name);
            list(params, &mut f);
            if let Some(a) = attrs {
                f(*a);
            }
        }
        Node::Closure {
            tparams, params, ..
        } => {
            list(tparams, &mut f);
            list(params, &mut f);
        }
        Node::Forward { target } => {
            if let Some(t) = target {
                f(*t);
            }
        }
        Node::Conditional { cond, then, other } => {
            f(*cond);
            f(*then);
            f(*other);
        }
        Node::Call { callee, args } => {
            f(*callee);
            list(args, &mut f);
        }
        Node::New {
            exprs, ty, inits, ..
        } => {
            list(exprs, &mut f);
            f(*ty);
            list(inits, &mut f);
        }
        Node::ConversionExpr { ty, exprs } => {
            f(*ty);
            list(exprs, &mut f);
        }
        Node::InitList { ty, inits } => {
            if let Some(t) = ty {
                f(*t);
            }
            list(inits, &mut f);
        }
        Node::BracedRange { first, last, init } => {
            f(*first);
            f(*last);
            f(*init);
        }
    }
}

const NO_PACK: u32 = u32::MAX;

/// LLVM's `OutputBuffer` with its pack state: inside a pack expansion, `pack_max` is the
/// size of the first pack met and `pack_index` the element being printed.
pub(crate) struct Printer<'a> {
    ast: &'a Ast,
    pub(crate) out: String,
    pack_index: u32,
    pack_max: u32,
    /// Nesting of reference collapsing and forward references (cycle guard).
    guard: u32,
    pub(crate) overflow: bool,
}

impl<'a> Printer<'a> {
    pub(crate) fn new(ast: &'a Ast) -> Self {
        Self {
            ast,
            out: String::new(),
            pack_index: NO_PACK,
            pack_max: NO_PACK,
            guard: 0,
            overflow: false,
        }
    }

    fn push(&mut self, s: &str) {
        if self.out.len() + s.len() > MAX_OUTPUT {
            self.overflow = true;
            return;
        }
        self.out.push_str(s);
    }

    fn init_pack(&mut self, len: usize) {
        if self.pack_max == NO_PACK {
            self.pack_max = len as u32;
            self.pack_index = 0;
        }
    }

    fn tri(&mut self, id: Id, which: fn(&Caches) -> Tri) -> bool {
        match which(&self.ast.caches[id as usize]) {
            Tri::No => false,
            Tri::Yes => true,
            Tri::Unknown => self.slow(id, which),
        }
    }

    fn slow(&mut self, id: Id, which: fn(&Caches) -> Tri) -> bool {
        if self.guard > MAX_HEIGHT {
            self.overflow = true;
            return false;
        }
        let ast = self.ast;
        match ast.get(id) {
            Node::ParamPack(data) => {
                self.init_pack(data.len());
                match data.get(self.pack_index as usize) {
                    Some(d) => self.tri(*d, which),
                    None => false,
                }
            }
            Node::Forward { target: Some(t) } => {
                self.guard += 1;
                let r = self.tri(*t, which);
                self.guard -= 1;
                r
            }
            Node::Pointer(p) | Node::Reference { pointee: p, .. } => self.tri(*p, which),
            Node::Qual { child, .. } => self.tri(*child, which),
            Node::PtrToMember { member, .. } => self.tri(*member, which),
            _ => false,
        }
    }

    fn has_rhs(&mut self, id: Id) -> bool {
        self.tri(id, |c| c.rhs)
    }
    fn has_array(&mut self, id: Id) -> bool {
        self.tri(id, |c| c.array)
    }
    fn has_function(&mut self, id: Id) -> bool {
        self.tri(id, |c| c.function)
    }

    fn syntax_node(&mut self, id: Id) -> Id {
        let ast = self.ast;
        match ast.get(id) {
            Node::ParamPack(data) => {
                self.init_pack(data.len());
                match data.get(self.pack_index as usize) {
                    Some(d) if self.guard < MAX_HEIGHT => {
                        self.guard += 1;
                        let r = self.syntax_node(*d);
                        self.guard -= 1;
                        r
                    }
                    _ => id,
                }
            }
            Node::Forward { target: Some(t) } if self.guard < MAX_HEIGHT => {
                self.guard += 1;
                let r = self.syntax_node(*t);
                self.guard -= 1;
                r
            }
            _ => id,
        }
    }

    /// Reference collapsing (`T& &&` is `T&`) through packs and forward references.
    fn collapse(&mut self, rvalue: bool, pointee: Id) -> (bool, Id) {
        let (mut rv, mut p) = (rvalue, pointee);
        for _ in 0..MAX_HEIGHT {
            let sn = self.syntax_node(p);
            match self.ast.get(sn) {
                Node::Reference {
                    pointee,
                    rvalue: inner,
                } => {
                    p = *pointee;
                    rv = rv && *inner;
                }
                _ => return (rv, p),
            }
        }
        self.overflow = true;
        (rv, p)
    }

    pub(crate) fn print(&mut self, id: Id) {
        self.print_left(id);
        // As LLVM's `Node::print`: the right side unless the cache says there is none.
        if self.ast.caches[id as usize].rhs != Tri::No {
            self.print_right(id);
        }
    }

    fn comma_list(&mut self, items: &[Id]) {
        let mut first = true;
        for &item in items {
            let before = self.out.len();
            if !first {
                self.push(", ");
            }
            let after = self.out.len();
            self.print(item);
            if self.out.len() == after {
                self.out.truncate(before);
                continue;
            }
            first = false;
        }
    }

    fn quals(&mut self, q: u8) {
        if q & CONST != 0 {
            self.push(" const");
        }
        if q & VOLATILE != 0 {
            self.push(" volatile");
        }
        if q & RESTRICT != 0 {
            self.push(" restrict");
        }
    }

    fn print_left(&mut self, id: Id) {
        if self.overflow {
            return;
        }
        let ast = self.ast;
        match ast.get(id) {
            Node::Name(n) => self.push(n),
            Node::Nested { qual: a, name: b }
            | Node::Local {
                encoding: a,
                entity: b,
            }
            | Node::Qualified { qual: a, name: b } => {
                self.print(*a);
                self.push("::");
                self.print(*b);
            }
            Node::Std(c) => {
                self.push("std::");
                self.print(*c);
            }
            Node::WithArgs { name, args } => {
                self.print(*name);
                self.print(*args);
            }
            Node::TemplateArgs(args) => {
                self.push("<");
                self.comma_list(args);
                self.push(">");
            }
            Node::ArgPack(items) | Node::List(items) => self.comma_list(items),
            Node::ParamPack(data) => {
                self.init_pack(data.len());
                if let Some(d) = data.get(self.pack_index as usize) {
                    self.print_left(*d);
                }
            }
            Node::PackExpansion(child) => self.expand(*child),
            Node::AbiTag { base, tag } => {
                self.print_left(*base);
                self.push("[abi:");
                self.push(tag);
                self.push("]");
            }
            Node::CtorDtor { base, dtor } => {
                if *dtor {
                    self.push("~");
                }
                let name = ast.base_name(*base);
                self.push(&name);
            }
            Node::Special { kind, expanded } => {
                self.push(if *expanded {
                    kind.expanded()
                } else {
                    kind.short()
                });
            }
            Node::Qual { child, quals } => {
                self.print_left(*child);
                self.quals(*quals);
            }
            Node::Pointer(p) => {
                self.print_left(*p);
                let array = self.has_array(*p);
                if array {
                    self.push(" ");
                }
                if array || self.has_function(*p) {
                    self.push("(");
                }
                self.push("*");
            }
            Node::Reference { pointee, rvalue } => {
                if self.guard > MAX_HEIGHT {
                    self.overflow = true;
                    return;
                }
                self.guard += 1;
                let (rv, p) = self.collapse(*rvalue, *pointee);
                self.print_left(p);
                let array = self.has_array(p);
                if array {
                    self.push(" ");
                }
                if array || self.has_function(p) {
                    self.push("(");
                }
                self.push(if rv { "&&" } else { "&" });
                self.guard -= 1;
            }
            Node::PtrToMember { class, member } => {
                self.print_left(*member);
                if self.has_array(*member) || self.has_function(*member) {
                    self.push("(");
                } else {
                    self.push(" ");
                }
                self.print(*class);
                self.push("::*");
            }
            Node::Array { base, .. } => self.print_left(*base),
            Node::Function { ret, .. } => {
                self.print_left(*ret);
                self.push(" ");
            }
            Node::Encoding { ret, name, .. } => {
                if let Some(r) = ret {
                    self.print_left(*r);
                    if !self.has_rhs(*r) {
                        self.push(" ");
                    }
                }
                self.print(*name);
            }
            Node::EnableIf(args) => {
                self.push(" [enable_if:");
                self.comma_list(args);
                self.push("]");
            }
            Node::Prefixed { prefix, child } => {
                self.push(prefix);
                self.print(*child);
            }
            Node::CtorVtable { first, second } => {
                self.push("construction vtable for ");
                self.print(*first);
                self.push("-in-");
                self.print(*second);
            }
            Node::DotSuffix { prefix, suffix } => {
                self.print(*prefix);
                self.push(" (");
                self.push(suffix);
                self.push(")");
            }
            Node::Conversion(t) => {
                self.push("operator ");
                self.print(*t);
            }
            Node::LiteralOp(n) => {
                self.push("operator\"\" ");
                self.print(*n);
            }
            Node::Closure {
                tparams,
                params,
                count,
            } => {
                self.push("'lambda");
                self.push(count);
                self.push("'");
                self.closure_declarator(tparams, params);
            }
            Node::Unnamed(count) => {
                self.push("'unnamed");
                self.push(count);
                self.push("'");
            }
            Node::Binding(names) => {
                self.push("[");
                self.comma_list(names);
                self.push("]");
            }
            Node::Forward { target } => {
                if let Some(t) = target {
                    if self.guard > MAX_HEIGHT {
                        self.overflow = true;
                        return;
                    }
                    self.guard += 1;
                    self.print_left(*t);
                    self.guard -= 1;
                }
            }
            Node::VendorExt { ty, ext } => {
                self.print(*ty);
                self.push(" ");
                self.push(ext);
            }
            Node::Postfix { ty, postfix } => {
                self.print_left(*ty);
                self.push(postfix);
            }
            Node::Elaborated { kind, child } => {
                self.push(kind);
                self.push(" ");
                self.print(*child);
            }
            Node::Vector { base, dim } => {
                self.print(*base);
                self.push(" vector[");
                if let Some(d) = dim {
                    self.print(*d);
                }
                self.push("]");
            }
            Node::PixelVector(dim) => {
                self.push("pixel vector[");
                self.print(*dim);
                self.push("]");
            }
            Node::BinaryFloat(dim) => {
                self.push("_Float");
                self.print(*dim);
            }
            Node::NoexceptSpec(e) => {
                self.push("noexcept(");
                self.print(*e);
                self.push(")");
            }
            Node::ThrowSpec(types) => {
                self.push("throw(");
                self.comma_list(types);
                self.push(")");
            }
            Node::Binary { lhs, op, rhs } => {
                let gt = *op == ">";
                if gt {
                    self.push("(");
                }
                self.push("(");
                self.print(*lhs);
                self.push(") ");
                self.push(op);
                self.push(" (");
                self.print(*rhs);
                self.push(")");
                if gt {
                    self.push(")");
                }
            }
            Node::Prefix { op, child } => {
                self.push(op);
                self.push("(");
                self.print(*child);
                self.push(")");
            }
            Node::PostfixExpr { child, op } => {
                self.push("(");
                self.print(*child);
                self.push(")");
                self.push(op);
            }
            Node::Conditional { cond, then, other } => {
                self.push("(");
                self.print(*cond);
                self.push(") ? (");
                self.print(*then);
                self.push(") : (");
                self.print(*other);
                self.push(")");
            }
            Node::Member { lhs, kind, rhs } => {
                self.print(*lhs);
                self.push(kind);
                self.print(*rhs);
            }
            Node::Enclosing { pre, child, post } => {
                self.push(pre);
                self.print(*child);
                self.push(post);
            }
            Node::Cast { kind, to, from } => {
                self.push(kind);
                self.push("<");
                self.print_left(*to);
                self.push(">(");
                self.print_left(*from);
                self.push(")");
            }
            Node::SizeofPack(pack) => {
                self.push("sizeof...(");
                self.expand(*pack);
                self.push(")");
            }
            Node::Call { callee, args } => {
                self.print(*callee);
                self.push("(");
                self.comma_list(args);
                self.push(")");
            }
            Node::New {
                exprs,
                ty,
                inits,
                global,
                array,
            } => {
                if *global {
                    self.push("::operator ");
                }
                self.push("new");
                if *array {
                    self.push("[]");
                }
                self.push(" ");
                if !exprs.is_empty() {
                    self.push("(");
                    self.comma_list(exprs);
                    self.push(")");
                }
                self.print(*ty);
                if !inits.is_empty() {
                    self.push("(");
                    self.comma_list(inits);
                    self.push(")");
                }
            }
            Node::Delete { op, global, array } => {
                if *global {
                    self.push("::");
                }
                self.push("delete");
                if *array {
                    self.push("[] ");
                }
                self.print(*op);
            }
            Node::ConversionExpr { ty, exprs } => {
                self.push("(");
                self.print(*ty);
                self.push(")(");
                self.comma_list(exprs);
                self.push(")");
            }
            Node::InitList { ty, inits } => {
                if let Some(t) = ty {
                    self.print(*t);
                }
                self.push("{");
                self.comma_list(inits);
                self.push("}");
            }
            Node::Subscript { base, index } => {
                self.push("(");
                self.print(*base);
                self.push(")[");
                self.print(*index);
                self.push("]");
            }
            Node::Throw(e) => {
                self.push("throw ");
                self.print(*e);
            }
            Node::Global(c) => {
                self.push("::");
                self.print(*c);
            }
            Node::Dtor(c) => {
                self.push("~");
                self.print_left(*c);
            }
            Node::Integer { ty, value } => {
                if ty.len() > 3 {
                    self.push("(");
                    self.push(ty);
                    self.push(")");
                }
                self.signed(value);
                if ty.len() <= 3 {
                    self.push(ty);
                }
            }
            Node::Enum { ty, value } => {
                self.push("(");
                self.print(*ty);
                self.push(")");
                self.signed(value);
            }
            Node::Bool(b) => self.push(if *b { "true" } else { "false" }),
            Node::Float(text) => self.push(text),
            Node::FunctionParam(n) => {
                self.push("fp");
                self.push(n);
            }
            Node::StringLiteral(ty) => {
                self.push("\"<");
                self.print(*ty);
                self.push(">\"");
            }
            Node::Lambda(ty) => {
                self.push("[]");
                if let Node::Closure {
                    tparams, params, ..
                } = ast.get(*ty)
                {
                    self.closure_declarator(tparams, params);
                }
                self.push("{...}");
            }
            Node::Braced { elem, init, array } => {
                if *array {
                    self.push("[");
                    self.print(*elem);
                    self.push("]");
                } else {
                    self.push(".");
                    self.print(*elem);
                }
                if !matches!(
                    ast.get(*init),
                    Node::Braced { .. } | Node::BracedRange { .. }
                ) {
                    self.push(" = ");
                }
                self.print(*init);
            }
            Node::BracedRange { first, last, init } => {
                self.push("[");
                self.print(*first);
                self.push(" ... ");
                self.print(*last);
                self.push("]");
                if !matches!(
                    ast.get(*init),
                    Node::Braced { .. } | Node::BracedRange { .. }
                ) {
                    self.push(" = ");
                }
                self.print(*init);
            }
        }
    }

    /// A mangled number: `n5` is `-5`.
    fn signed(&mut self, value: &str) {
        match value.strip_prefix('n') {
            Some(v) => {
                self.push("-");
                self.push(v);
            }
            None => self.push(value),
        }
    }

    /// A pack expansion: `child` once per element of the first pack met while printing it
    /// (nothing for an empty pack, `child...` when it holds no pack, e.g. a function parameter).
    fn expand(&mut self, child: Id) {
        let saved = (self.pack_index, self.pack_max);
        self.pack_index = NO_PACK;
        self.pack_max = NO_PACK;
        let start = self.out.len();
        self.print(child);
        if self.pack_max == NO_PACK {
            self.push("...");
        } else if self.pack_max == 0 {
            self.out.truncate(start);
        } else {
            for i in 1..self.pack_max {
                self.push(", ");
                self.pack_index = i;
                self.print(child);
            }
        }
        (self.pack_index, self.pack_max) = saved;
    }

    fn closure_declarator(&mut self, tparams: &[Id], params: &[Id]) {
        if !tparams.is_empty() {
            self.push("<");
            self.comma_list(tparams);
            self.push(">");
        }
        self.push("(");
        self.comma_list(params);
        self.push(")");
    }

    fn print_right(&mut self, id: Id) {
        if self.overflow {
            return;
        }
        let ast = self.ast;
        match ast.get(id) {
            Node::ParamPack(data) => {
                self.init_pack(data.len());
                if let Some(d) = data.get(self.pack_index as usize) {
                    self.print_right(*d);
                }
            }
            Node::Qual { child, .. } => self.print_right(*child),
            Node::Pointer(p) => {
                if self.has_array(*p) || self.has_function(*p) {
                    self.push(")");
                }
                self.print_right(*p);
            }
            Node::Reference { pointee, rvalue } => {
                if self.guard > MAX_HEIGHT {
                    self.overflow = true;
                    return;
                }
                self.guard += 1;
                let (_, p) = self.collapse(*rvalue, *pointee);
                if self.has_array(p) || self.has_function(p) {
                    self.push(")");
                }
                self.print_right(p);
                self.guard -= 1;
            }
            Node::PtrToMember { member, .. } => {
                if self.has_array(*member) || self.has_function(*member) {
                    self.push(")");
                }
                self.print_right(*member);
            }
            Node::Array { base, dim } => {
                if !self.out.ends_with(']') {
                    self.push(" ");
                }
                self.push("[");
                if let Some(d) = dim {
                    self.print(*d);
                }
                self.push("]");
                self.print_right(*base);
            }
            Node::Function {
                ret,
                params,
                cv,
                ref_qual,
                except,
            } => {
                self.push("(");
                self.comma_list(params);
                self.push(")");
                self.print_right(*ret);
                self.quals(*cv);
                self.ref_qual(*ref_qual);
                if let Some(e) = except {
                    self.push(" ");
                    self.print(*e);
                }
            }
            Node::Encoding {
                ret,
                params,
                attrs,
                cv,
                ref_qual,
                ..
            } => {
                self.push("(");
                self.comma_list(params);
                self.push(")");
                if let Some(r) = ret {
                    self.print_right(*r);
                }
                self.quals(*cv);
                self.ref_qual(*ref_qual);
                if let Some(a) = attrs {
                    self.print(*a);
                }
            }
            Node::Forward { target: Some(t) } => {
                if self.guard > MAX_HEIGHT {
                    self.overflow = true;
                    return;
                }
                self.guard += 1;
                self.print_right(*t);
                self.guard -= 1;
            }
            _ => {}
        }
    }

    fn ref_qual(&mut self, r: RefQual) {
        match r {
            RefQual::None => {}
            RefQual::LValue => self.push(" &"),
            RefQual::RValue => self.push(" &&"),
        }
    }
}
