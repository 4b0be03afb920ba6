//! `#[derive(Replicate)]` and `#[derive(ReplicateEnum)]` for statewire component types.
//!
//! Use them through `statewire-core`, which re-exports both under its default feature
//! `derive` (`use statewire_core::Replicate;` brings in the trait and the derive, like
//! serde). The generated code names the core as `::statewire_core`, so `statewire-core` must be
//! a direct dependency of the crate that derives; a crate that reaches it under another name
//! (a re-export, a renamed dependency) says where with `#[replicate(crate = "path")]`.
//!
//! # `#[derive(Replicate)]`
//!
//! On a struct with named fields, a tuple struct or a unit struct. Every field says how it is
//! quantized with one rule, and the fields are written and read in declaration order:
//!
//! | attribute | field types | [`FieldKind`](../statewire_core/enum.FieldKind.html) |
//! |---|---|---|
//! | `#[replicate(float(min = A, max = B, precision = P))]` | `f32`, `f64` | `Float { min: A, max: B, precision: P }` |
//! | `#[replicate(int(min = A, max = B))]` | any integer type (`u8` … `i128`, `usize`, `isize`) | `Int { min: A, max: B }` |
//! | `#[replicate(bool)]`, or nothing on a field of type `bool` | `bool` | `Bool` |
//! | `#[replicate(quat)]` or `#[replicate(quat(bits = N))]` (N in 2..=10, default 10) | `[f32; 4]` | `Quat { bits: N }` |
//! | `#[replicate(enumeration)]` | a type implementing `ReplicateEnum` | `Enum { variants: T::COUNT }` |
//! | `#[replicate(enumeration(variants = N))]` (N ≥ 1) | any integer type (the variant index) | `Enum { variants: N }` |
//! | `#[replicate(skip)]` | any type implementing `Default` | not replicated; `Default::default()` when read |
//!
//! `A`, `B` and `P` are constant expressions of the field kind's type (`f32` for floats, `i64`
//! for ints): literals (`-100.0`, `1.0 / 64.0`) are checked when the macro runs, and any other
//! expression (`TAU / 256.0`, a `const`) is checked by a generated constant assertion, so a bad
//! range never reaches run time. A field may also carry `name = "..."` (the name in
//! [`Field`](../statewire_core/struct.Field.html); default: the field's name, or its index in a
//! tuple struct), next to its rule or in an attribute of its own.
//!
//! Reading is total: an integer whose value does not fit the field's type (say
//! `int(min = -10, max = 300)` on a `u8` and a 300 on the wire) makes `read` return `None`,
//! never panic. Writing clamps, as the hand-written API does: a value outside `[min, max]`, or an
//! integer too large for `i64`, is sent as the nearest bound.
//!
//! On the type itself, `#[replicate(name = "...")]` sets `Replicate::NAME` (default: the type's
//! name), and `#[replicate(crate = "path")]` where to find `statewire_core`.
//!
//! ```
//! use statewire_core::{Replicate, ReplicateEnum};
//!
//! #[derive(Debug, Clone, Copy, PartialEq, Eq, ReplicateEnum)]
//! enum Team { Red, Blue, Green }
//!
//! #[derive(Debug, Clone, PartialEq, Replicate)]
//! #[replicate(name = "Unit")]
//! struct Soldier {
//!     #[replicate(float(min = -512.0, max = 512.0, precision = 1.0 / 64.0))]
//!     x: f32,
//!     #[replicate(quat(bits = 9), name = "rotation")]
//!     rot: [f32; 4],
//!     #[replicate(int(min = 0, max = 100))]
//!     hp: u8,
//!     alive: bool,
//!     #[replicate(enumeration)]
//!     team: Team,
//!     #[replicate(skip)]
//!     local_only: u64,
//! }
//!
//! #[derive(Replicate)]
//! struct Facing(#[replicate(float(min = 0.0, max = std::f32::consts::TAU, precision = std::f32::consts::TAU / 256.0))] f32);
//!
//! #[derive(Replicate)]
//! struct Marker;
//!
//! assert_eq!(Soldier::NAME, "Unit");
//! assert_eq!(Soldier::fields().len(), 5);
//! assert_eq!(Soldier::fields()[1].name, "rotation");
//! assert_eq!(Facing::fields()[0].name, "0");
//! assert!(Marker::fields().is_empty());
//! ```
//!
//! # `#[derive(ReplicateEnum)]`
//!
//! On an enum whose variants carry no data: `COUNT` is the number of variants, `index` the
//! position of a variant in declaration order (explicit discriminants are ignored) and
//! `from_index` the inverse (`None` past the last). Such an enum is then a field with
//! `#[replicate(enumeration)]`.
//!
//! # Errors
//!
//! Mistakes are compile errors pointing at the offending tokens. A field without a rule:
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! struct Pos { x: f32 } // field `x` has no quantization rule: add #[replicate(float(...))] ...
//! ```
//!
//! An unknown key, in a field or on the type:
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! struct Pos { #[replicate(fixed(min = 0.0))] x: f32 }
//! ```
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! #[replicate(title = "P")]
//! struct Pos { #[replicate(bool)] on: bool }
//! ```
//!
//! A missing parameter:
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! struct Pos { #[replicate(float(min = 0.0, max = 1.0))] x: f32 }
//! ```
//!
//! An empty range, or a step that is not positive:
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! struct Pos { #[replicate(float(min = 1.0, max = 1.0, precision = 0.1))] x: f32 }
//! ```
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! struct Pos { #[replicate(float(min = 0.0, max = 1.0, precision = -0.1))] x: f32 }
//! ```
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! struct Hp { #[replicate(int(min = 10, max = 0))] hp: i32 }
//! ```
//!
//! The same checks on expressions the macro cannot evaluate, through a constant assertion:
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! const STEP: f32 = 0.0;
//! #[derive(Replicate)]
//! struct Pos { #[replicate(float(min = 0.0, max = 1.0, precision = STEP))] x: f32 }
//! ```
//!
//! Quaternion bits out of range, and an enumeration of no variants:
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! struct Rot { #[replicate(quat(bits = 12))] q: [f32; 4] }
//! ```
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! struct Team { #[replicate(enumeration(variants = 0))] t: u32 }
//! ```
//!
//! A rule on a field of the wrong type:
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! struct Pos { #[replicate(float(min = 0.0, max = 1.0, precision = 0.5))] x: i32 }
//! ```
//!
//! Generic types, enums and unions:
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! struct Wrapper<T> { #[replicate(skip)] t: T }
//! ```
//!
//! ```compile_fail
//! # use statewire_core::Replicate;
//! #[derive(Replicate)]
//! enum Kind { A, B }
//! ```
//!
//! And an enum with data under `ReplicateEnum`:
//!
//! ```compile_fail
//! # use statewire_core::ReplicateEnum;
//! #[derive(ReplicateEnum)]
//! enum Shape { Circle(f32), Square }
//! ```

use std::cmp::Ordering;

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, Expr, ExprLit, Fields, Lit, LitStr, Path, Type, UnOp,
    parse_macro_input,
};

/// Implements `statewire_core::Replicate` for a struct; see the [crate docs](crate) for the
/// attributes.
#[proc_macro_derive(Replicate, attributes(replicate))]
pub fn derive_replicate(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_replicate(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// Implements `statewire_core::ReplicateEnum` for a fieldless enum; see the
/// [crate docs](crate).
#[proc_macro_derive(ReplicateEnum, attributes(replicate))]
pub fn derive_replicate_enum(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand_replicate_enum(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// What the type-level `#[replicate(...)]` attributes say.
struct Container {
    name: Option<LitStr>,
    krate: Path,
}

fn parse_container(attrs: &[Attribute], allow_name: bool) -> syn::Result<Container> {
    let mut name = None;
    let mut krate: Option<Path> = None;
    for attr in attrs.iter().filter(|a| a.path().is_ident("replicate")) {
        attr.parse_nested_meta(|meta| {
            if allow_name && meta.path.is_ident("name") {
                if name.is_some() {
                    return Err(meta.error("duplicate `name`"));
                }
                name = Some(meta.value()?.parse::<LitStr>()?);
                Ok(())
            } else if meta.path.is_ident("crate") {
                if krate.is_some() {
                    return Err(meta.error("duplicate `crate`"));
                }
                let lit = meta.value()?.parse::<LitStr>()?;
                krate = Some(lit.parse::<Path>()?);
                Ok(())
            } else {
                let expected = if allow_name {
                    "`name = \"...\"` or `crate = \"...\"`"
                } else {
                    "`crate = \"...\"`"
                };
                Err(meta.error(format!(
                    "unknown replicate attribute `{}` on the type: expected {expected}",
                    path_text(&meta.path)
                )))
            }
        })?;
    }
    Ok(Container {
        name,
        krate: krate.unwrap_or_else(|| syn::parse_quote!(::statewire_core)),
    })
}

fn path_text(p: &Path) -> String {
    quote!(#p).to_string().replace(' ', "")
}

/// How one field is quantized.
enum Rule {
    Float {
        min: Expr,
        max: Expr,
        precision: Expr,
    },
    Int {
        min: Expr,
        max: Expr,
    },
    Bool,
    Quat {
        bits: u8,
    },
    /// A `ReplicateEnum` type.
    EnumType,
    /// An integer holding the variant index.
    EnumIndex {
        variants: Expr,
    },
    Skip,
}

/// One field of the struct, parsed.
struct FieldSpec {
    /// `x` or `0`.
    member: syn::Member,
    /// The name in `Field::new`.
    name: String,
    ty: Type,
    rule: Rule,
    span: Span,
}

const RULES: &str = "float, int, bool, quat, enumeration, skip, name";

fn missing_rule_message(field: &str) -> String {
    format!(
        "field `{field}` has no quantization rule: add #[replicate(float(min = .., max = .., \
         precision = ..))], #[replicate(int(min = .., max = ..))], #[replicate(bool)], \
         #[replicate(quat)], #[replicate(enumeration)] or #[replicate(skip)]"
    )
}

/// Parses `key = value` pairs inside `float(...)` and the like: each of `keys` at most once.
fn parse_params(
    meta: &syn::meta::ParseNestedMeta<'_>,
    rule: &str,
    keys: &[&str],
) -> syn::Result<Vec<Option<Expr>>> {
    let mut values: Vec<Option<Expr>> = vec![None; keys.len()];
    meta.parse_nested_meta(|inner| {
        let Some(i) = keys.iter().position(|k| inner.path.is_ident(k)) else {
            return Err(inner.error(format!(
                "unknown parameter `{}` of `{rule}`: expected {}",
                path_text(&inner.path),
                keys.join(", ")
            )));
        };
        if values[i].is_some() {
            return Err(inner.error(format!("duplicate `{}`", keys[i])));
        }
        values[i] = Some(inner.value()?.parse::<Expr>()?);
        Ok(())
    })?;
    Ok(values)
}

fn require(value: Option<Expr>, rule: &str, key: &str, span: Span) -> syn::Result<Expr> {
    value.ok_or_else(|| {
        syn::Error::new(
            span,
            format!("`{rule}` needs `{key}`: {rule}({})", rule_signature(rule)),
        )
    })
}

fn rule_signature(rule: &str) -> &'static str {
    match rule {
        "float" => "min = .., max = .., precision = ..",
        "int" => "min = .., max = ..",
        _ => "..",
    }
}

/// The value of a literal expression (`1.5`, `-3`, `1.0 / 64.0`), if the macro can tell.
fn eval(expr: &Expr) -> Option<f64> {
    match expr {
        Expr::Lit(ExprLit { lit, .. }) => match lit {
            Lit::Float(f) => f.base10_parse::<f64>().ok(),
            Lit::Int(i) => i.base10_parse::<i128>().ok().map(|v| v as f64),
            _ => None,
        },
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => eval(&u.expr).map(|v| -v),
        Expr::Paren(p) => eval(&p.expr),
        Expr::Group(g) => eval(&g.expr),
        Expr::Binary(b) => {
            let (l, r) = (eval(&b.left)?, eval(&b.right)?);
            match b.op {
                syn::BinOp::Add(_) => Some(l + r),
                syn::BinOp::Sub(_) => Some(l - r),
                syn::BinOp::Mul(_) => Some(l * r),
                syn::BinOp::Div(_) => Some(l / r),
                _ => None,
            }
        }
        _ => None,
    }
}

/// The value of an integer literal expression (`7`, `-100`, `i64::MIN` is not one).
fn eval_int(expr: &Expr) -> Option<i128> {
    match expr {
        Expr::Lit(ExprLit {
            lit: Lit::Int(i), ..
        }) => i.base10_parse::<i128>().ok(),
        Expr::Unary(u) if matches!(u.op, UnOp::Neg(_)) => eval_int(&u.expr).map(|v| -v),
        Expr::Paren(p) => eval_int(&p.expr),
        Expr::Group(g) => eval_int(&g.expr),
        _ => None,
    }
}

/// Whether a precision is a usable step: finite and above zero.
fn positive(p: f64) -> bool {
    p.is_finite() && p.partial_cmp(&0.0) == Some(Ordering::Greater)
}

/// Checks what can be checked while the macro runs.
fn check_rule(rule: &Rule) -> syn::Result<()> {
    match rule {
        Rule::Float {
            min,
            max,
            precision,
        } => {
            if let (Some(lo), Some(hi)) = (eval(min), eval(max)) {
                if !(lo.is_finite() && hi.is_finite()) {
                    return Err(syn::Error::new_spanned(
                        quote!(#min #max),
                        "`float` bounds must be finite",
                    ));
                }
                if lo.partial_cmp(&hi) != Some(Ordering::Less) {
                    return Err(syn::Error::new_spanned(
                        quote!(#min #max),
                        format!("`float` needs min < max (got min = {lo}, max = {hi})"),
                    ));
                }
                if let Some(p) = eval(precision) {
                    if !positive(p) {
                        return Err(syn::Error::new_spanned(
                            precision,
                            format!("`float` needs precision > 0 (got {p})"),
                        ));
                    }
                    if (hi - lo) / p >= f64::from(u32::MAX) {
                        return Err(syn::Error::new_spanned(
                            precision,
                            "`float`: (max - min) / precision needs more than 32 bits",
                        ));
                    }
                }
            } else if let Some(p) = eval(precision) {
                if !positive(p) {
                    return Err(syn::Error::new_spanned(
                        precision,
                        format!("`float` needs precision > 0 (got {p})"),
                    ));
                }
            }
        }
        Rule::Int { min, max } => {
            if let (Some(lo), Some(hi)) = (eval_int(min), eval_int(max)) {
                if lo > hi {
                    return Err(syn::Error::new_spanned(
                        quote!(#min #max),
                        format!("`int` needs min <= max (got min = {lo}, max = {hi})"),
                    ));
                }
                if hi - lo > i128::from(u32::MAX) {
                    return Err(syn::Error::new_spanned(
                        quote!(#min #max),
                        "`int`: max - min needs more than 32 bits",
                    ));
                }
                for (v, e) in [(lo, min), (hi, max)] {
                    if i64::try_from(v).is_err() {
                        return Err(syn::Error::new_spanned(e, "`int` bounds must fit an i64"));
                    }
                }
            }
        }
        Rule::EnumIndex { variants } => {
            if let Some(n) = eval_int(variants) {
                if !(1..=i128::from(u32::MAX)).contains(&n) {
                    return Err(syn::Error::new_spanned(
                        variants,
                        format!("`enumeration` needs 1 <= variants <= u32::MAX (got {n})"),
                    ));
                }
            }
        }
        Rule::Bool | Rule::Quat { .. } | Rule::EnumType | Rule::Skip => {}
    }
    Ok(())
}

fn is_bool(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.is_ident("bool"))
}

fn parse_field(index: usize, field: &syn::Field) -> syn::Result<FieldSpec> {
    let (member, default_name) = match &field.ident {
        Some(id) => (syn::Member::Named(id.clone()), id.to_string()),
        None => (
            syn::Member::Unnamed(syn::Index::from(index)),
            index.to_string(),
        ),
    };
    let mut rule: Option<(Rule, Span)> = None;
    let mut name: Option<LitStr> = None;
    for attr in field
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("replicate"))
    {
        attr.parse_nested_meta(|meta| {
            let key = path_text(&meta.path);
            if key == "name" {
                if name.is_some() {
                    return Err(meta.error("duplicate `name`"));
                }
                name = Some(meta.value()?.parse::<LitStr>()?);
                return Ok(());
            }
            let span = meta.path.span();
            let parsed = match key.as_str() {
                "float" => {
                    let mut v = parse_params(&meta, "float", &["min", "max", "precision"])?;
                    let precision = require(v.pop().flatten(), "float", "precision", span)?;
                    let max = require(v.pop().flatten(), "float", "max", span)?;
                    let min = require(v.pop().flatten(), "float", "min", span)?;
                    Rule::Float {
                        min,
                        max,
                        precision,
                    }
                }
                "int" => {
                    let mut v = parse_params(&meta, "int", &["min", "max"])?;
                    let max = require(v.pop().flatten(), "int", "max", span)?;
                    let min = require(v.pop().flatten(), "int", "min", span)?;
                    Rule::Int { min, max }
                }
                "bool" => Rule::Bool,
                "skip" => Rule::Skip,
                "quat" => {
                    let mut bits = 10u8;
                    if meta.input.peek(syn::token::Paren) {
                        let v = parse_params(&meta, "quat", &["bits"])?;
                        if let Some(e) = v.into_iter().next().flatten() {
                            bits = match eval_int(&e) {
                                Some(b @ 2..=10) => b as u8,
                                _ => {
                                    return Err(syn::Error::new_spanned(
                                        e,
                                        "`quat` bits must be an integer literal in 2..=10",
                                    ));
                                }
                            };
                        }
                    }
                    Rule::Quat { bits }
                }
                "enumeration" => {
                    if meta.input.peek(syn::token::Paren) {
                        let v = parse_params(&meta, "enumeration", &["variants"])?;
                        let variants = require(
                            v.into_iter().next().flatten(),
                            "enumeration",
                            "variants",
                            span,
                        )?;
                        Rule::EnumIndex { variants }
                    } else {
                        Rule::EnumType
                    }
                }
                _ => {
                    return Err(meta.error(format!(
                        "unknown replicate attribute `{key}`: expected one of {RULES}"
                    )));
                }
            };
            if rule.is_some() {
                return Err(meta.error(format!(
                    "field `{default_name}` has more than one quantization rule"
                )));
            }
            check_rule(&parsed)?;
            rule = Some((parsed, span));
            Ok(())
        })?;
    }
    let (rule, span) = match rule {
        Some(r) => r,
        None if is_bool(&field.ty) => (Rule::Bool, field.ty.span()),
        None => {
            return Err(syn::Error::new_spanned(
                field,
                missing_rule_message(&default_name),
            ));
        }
    };
    if name.is_some() && matches!(rule, Rule::Skip) {
        return Err(syn::Error::new_spanned(
            name,
            "a skipped field is not replicated and has no field name",
        ));
    }
    Ok(FieldSpec {
        member,
        name: name.map_or(default_name, |n| n.value()),
        ty: field.ty.clone(),
        rule,
        span,
    })
}

/// What both derives require of the type (no generics), and its attributes.
fn container(input: &DeriveInput, derive: &str, allow_name: bool) -> syn::Result<Container> {
    reject_generics(input, derive)?;
    parse_container(&input.attrs, allow_name)
}

/// An error pointing at the `struct`, `enum` or `union` keyword.
fn keyword_error(data: &Data, message: &str) -> syn::Error {
    match data {
        Data::Struct(s) => syn::Error::new_spanned(s.struct_token, message),
        Data::Enum(e) => syn::Error::new_spanned(e.enum_token, message),
        Data::Union(u) => syn::Error::new_spanned(u.union_token, message),
    }
}

fn reject_generics(input: &DeriveInput, derive: &str) -> syn::Result<()> {
    if input.generics.params.is_empty() && input.generics.where_clause.is_none() {
        Ok(())
    } else {
        Err(syn::Error::new_spanned(
            &input.generics,
            format!(
                "#[derive({derive})] does not support generic types: a component's schema must \
                 be one fixed layout; implement the trait by hand or derive it on a concrete type"
            ),
        ))
    }
}

fn expand_replicate(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let Data::Struct(data) = &input.data else {
        return Err(keyword_error(
            &input.data,
            "#[derive(Replicate)] supports structs only; to replicate a fieldless enum as a \
             field, derive ReplicateEnum on it and mark the field #[replicate(enumeration)]",
        ));
    };
    let container = container(input, "Replicate", true)?;
    let ident = &input.ident;
    let krate = &container.krate;
    let name = container
        .name
        .map_or_else(|| ident.to_string(), |n| n.value());
    let specs = data
        .fields
        .iter()
        .enumerate()
        .map(|(i, f)| parse_field(i, f))
        .collect::<syn::Result<Vec<_>>>()?;

    let private = quote!(#krate::__private);
    let mut fields = Vec::new();
    let mut writes = Vec::new();
    let mut reads = Vec::new();
    let mut checks = Vec::new();
    let mut inits = Vec::new();
    for (i, spec) in specs.iter().enumerate() {
        let member = &spec.member;
        let ty = &spec.ty;
        let fname = &spec.name;
        let var = format_ident!("__field{}", i);
        let sp = spec.span;
        let kind = match &spec.rule {
            Rule::Float {
                min,
                max,
                precision,
            } => {
                if eval(min).is_none() || eval(max).is_none() || eval(precision).is_none() {
                    let msg = format!("field `{fname}`: float needs min < max and precision > 0");
                    checks.push(quote_spanned! {sp=>
                        ::core::assert!((#min) < (#max), #msg);
                        ::core::assert!((#precision) > 0.0, #msg);
                    });
                }
                quote!(#krate::FieldKind::Float { min: #min, max: #max, precision: #precision })
            }
            Rule::Int { min, max } => {
                if eval_int(min).is_none() || eval_int(max).is_none() {
                    let msg = format!("field `{fname}`: int needs min <= max");
                    checks.push(quote_spanned! {sp=>
                        ::core::assert!((#min) <= (#max), #msg);
                    });
                }
                quote!(#krate::FieldKind::Int { min: #min, max: #max })
            }
            Rule::Bool => quote!(#krate::FieldKind::Bool),
            Rule::Quat { bits } => quote!(#krate::FieldKind::Quat { bits: #bits }),
            Rule::EnumType => {
                quote_spanned!(sp=> #krate::FieldKind::Enum {
                    variants: <#ty as #krate::ReplicateEnum>::COUNT
                })
            }
            Rule::EnumIndex { variants } => {
                if eval_int(variants).is_none() {
                    let msg = format!("field `{fname}`: enumeration needs variants >= 1");
                    checks.push(quote_spanned! {sp=>
                        ::core::assert!((#variants) >= 1, #msg);
                    });
                }
                quote!(#krate::FieldKind::Enum { variants: #variants })
            }
            Rule::Skip => {
                inits.push(quote!(#member: ::core::default::Default::default()));
                continue;
            }
        };
        fields.push(quote!(#krate::Field::new(#fname, #kind)));
        let (write, read) = match &spec.rule {
            Rule::Float { .. } => (
                quote_spanned!(sp=> w.f32(#private::Float::to_f32(self.#member))),
                quote_spanned!(sp=> <#ty as #private::Float>::from_f32(r.f32()?)),
            ),
            Rule::Int { .. } => (
                quote_spanned!(sp=> w.int(#private::Int::to_i64(self.#member))),
                quote_spanned!(sp=> <#ty as #private::Int>::from_i64(r.int()?)?),
            ),
            Rule::Bool => (
                quote_spanned!(sp=> w.bool(#private::Bool::to_bool(self.#member))),
                quote_spanned!(sp=> <#ty as #private::Bool>::from_bool(r.bool()?)),
            ),
            Rule::Quat { .. } => (
                quote_spanned!(sp=> w.quat(#private::Quat::to_quat(self.#member))),
                quote_spanned!(sp=> <#ty as #private::Quat>::from_quat(r.quat()?)),
            ),
            Rule::EnumType => (
                quote_spanned!(sp=> w.enumeration(#krate::ReplicateEnum::index(&self.#member))),
                quote_spanned!(sp=> <#ty as #krate::ReplicateEnum>::from_index(r.enumeration()?)?),
            ),
            Rule::EnumIndex { .. } => (
                quote_spanned!(sp=> w.enumeration(#private::index_to_u32(self.#member))),
                quote_spanned!(sp=> <#ty as #private::Int>::from_i64(
                    ::core::convert::From::from(r.enumeration()?))?),
            ),
            Rule::Skip => unreachable!("skipped above"),
        };
        writes.push(write);
        reads.push(quote!(let #var: #ty = #read;));
        inits.push(quote!(#member: #var));
    }
    let construct = match &data.fields {
        Fields::Unit => quote!(#ident),
        _ => quote!(#ident { #(#inits,)* }),
    };
    let checks = if checks.is_empty() {
        quote!()
    } else {
        quote! {
            // The rules' bounds, checked at compile time.
            #[allow(clippy::all)]
            const _: () = { #(#checks)* };
        }
    };
    let reader = if reads.is_empty() {
        quote!(_r)
    } else {
        quote!(r)
    };
    let writer = if writes.is_empty() {
        quote!(_w)
    } else {
        quote!(w)
    };
    let read_body = quote! {
        #(#reads)*
        ::core::option::Option::Some(#construct)
    };
    Ok(quote! {
        #checks
        #[automatically_derived]
        impl #krate::Replicate for #ident {
            const NAME: &'static str = #name;
            fn fields() -> ::std::vec::Vec<#krate::Field> {
                ::std::vec![#(#fields),*]
            }
            fn write(&self, #writer: &mut #krate::FieldWriter<'_>) {
                #(#writes;)*
            }
            fn read(#reader: &mut #krate::FieldReader<'_>) -> ::core::option::Option<Self> {
                #read_body
            }
        }
    })
}

fn expand_replicate_enum(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let Data::Enum(data) = &input.data else {
        return Err(keyword_error(
            &input.data,
            "#[derive(ReplicateEnum)] supports fieldless enums only; derive Replicate on a struct",
        ));
    };
    let container = container(input, "ReplicateEnum", false)?;
    let krate = &container.krate;
    let ident = &input.ident;
    if data.variants.is_empty() {
        return Err(syn::Error::new_spanned(
            ident,
            "#[derive(ReplicateEnum)] needs at least one variant",
        ));
    }
    if let Some(v) = data.variants.iter().find(|v| !v.fields.is_empty()) {
        return Err(syn::Error::new_spanned(
            v,
            format!(
                "variant `{}` carries data: #[derive(ReplicateEnum)] supports fieldless enums \
                 only (replicate the data as fields of a struct)",
                v.ident
            ),
        ));
    }
    let count = u32::try_from(data.variants.len())
        .map_err(|_| syn::Error::new_spanned(ident, "too many variants"))?;
    let names: Vec<_> = data.variants.iter().map(|v| &v.ident).collect();
    let indices: Vec<u32> = (0..count).collect();
    Ok(quote! {
        #[automatically_derived]
        impl #krate::ReplicateEnum for #ident {
            const COUNT: u32 = #count;
            fn index(&self) -> u32 {
                match self {
                    #(#ident::#names => #indices,)*
                }
            }
            fn from_index(index: u32) -> ::core::option::Option<Self> {
                match index {
                    #(#indices => ::core::option::Option::Some(#ident::#names),)*
                    _ => ::core::option::Option::None,
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_of(src: &str) -> String {
        error_with(src, expand_replicate)
    }

    fn error_with(src: &str, expand: fn(&DeriveInput) -> syn::Result<TokenStream2>) -> String {
        let input: DeriveInput = syn::parse_str(src).expect("valid item");
        match expand(&input) {
            Ok(tokens) => panic!("expected an error, got {tokens}"),
            Err(e) => e.to_string(),
        }
    }

    fn expands(src: &str) -> String {
        let input: DeriveInput = syn::parse_str(src).expect("valid item");
        expand_replicate(&input)
            .unwrap_or_else(|e| panic!("{e}"))
            .to_string()
    }

    #[test]
    fn missing_rule() {
        let e = error_of("struct P { x: f32 }");
        assert_eq!(e, missing_rule_message("x"));
        assert!(e.starts_with("field `x` has no quantization rule: add #[replicate(float("));
        assert_eq!(error_of("struct P(u8);"), missing_rule_message("0"));
    }

    #[test]
    fn bool_needs_no_rule() {
        assert!(expands("struct P { on: bool }").contains("FieldKind :: Bool"));
    }

    #[test]
    fn unknown_keys() {
        let e = error_of("struct P { #[replicate(fixed(min = 0.0))] x: f32 }");
        assert!(e.starts_with("unknown replicate attribute `fixed`"), "{e}");
        let e =
            error_of("struct P { #[replicate(float(min = 0.0, max = 1.0, step = 1.0))] x: f32 }");
        assert!(e.starts_with("unknown parameter `step` of `float`"), "{e}");
        let e = error_of("#[replicate(title = \"P\")] struct P;");
        assert!(
            e.starts_with("unknown replicate attribute `title` on the type"),
            "{e}"
        );
    }

    #[test]
    fn missing_and_invalid_parameters() {
        let e = error_of("struct P { #[replicate(float(min = 0.0, max = 1.0))] x: f32 }");
        assert!(e.starts_with("`float` needs `precision`"), "{e}");
        let e = error_of("struct P { #[replicate(int(max = 1))] x: i32 }");
        assert!(e.starts_with("`int` needs `min`"), "{e}");
        let e = error_of(
            "struct P { #[replicate(float(min = 1.0, max = -1.0, precision = 0.1))] x: f32 }",
        );
        assert!(e.starts_with("`float` needs min < max"), "{e}");
        let e = error_of(
            "struct P { #[replicate(float(min = 0.0, max = 1.0, precision = 0.0))] x: f32 }",
        );
        assert!(e.starts_with("`float` needs precision > 0"), "{e}");
        let e = error_of(
            "struct P { #[replicate(float(min = 0.0, max = 1e12, precision = 1.0))] x: f32 }",
        );
        assert!(e.contains("more than 32 bits"), "{e}");
        let e = error_of("struct P { #[replicate(int(min = 5, max = -5))] x: i32 }");
        assert!(e.starts_with("`int` needs min <= max"), "{e}");
        let e = error_of("struct P { #[replicate(quat(bits = 1))] q: [f32; 4] }");
        assert!(e.contains("2..=10"), "{e}");
        let e = error_of("struct P { #[replicate(enumeration(variants = 0))] t: u8 }");
        assert!(e.contains("variants"), "{e}");
        let e = error_of("struct P { #[replicate(bool, int(min = 0, max = 1))] x: bool }");
        assert!(e.contains("more than one quantization rule"), "{e}");
    }

    #[test]
    fn unsupported_shapes() {
        let e = error_of("struct P<T> { #[replicate(skip)] t: T }");
        assert!(e.contains("does not support generic types"), "{e}");
        let e = error_of("enum K { A, B }");
        assert!(e.contains("supports structs only"), "{e}");
        let e = error_with("enum E { A(u8), B }", expand_replicate_enum);
        assert!(e.starts_with("variant `A` carries data"), "{e}");
        let e = error_with("struct S;", expand_replicate_enum);
        assert!(e.contains("fieldless enums only"), "{e}");
        let e = error_with("enum E {}", expand_replicate_enum);
        assert!(e.contains("at least one variant"), "{e}");
    }

    #[test]
    fn non_literal_bounds_become_const_checks() {
        let out = expands(
            "struct F(#[replicate(float(min = 0.0, max = TAU, precision = TAU / 256.0))] f32);",
        );
        assert!(out.contains("const _ : () ="), "{out}");
        assert!(out.contains(":: core :: assert !"), "{out}");
        let out =
            expands("struct F(#[replicate(float(min = 0.0, max = 1.0, precision = 0.5))] f32);");
        assert!(!out.contains("assert"), "{out}");
    }
}
