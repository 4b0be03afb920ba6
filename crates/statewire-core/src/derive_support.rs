//! What `#[derive(Replicate)]` builds on: the [`ReplicateEnum`] trait, and the conversions the
//! generated code calls (hidden; not a stable API).

/// A fieldless enum replicated as a [`FieldKind::Enum`](crate::FieldKind::Enum) field: its
/// variants are numbered `0..COUNT`.
///
/// `#[derive(ReplicateEnum)]` (feature `derive`) numbers the variants in declaration order; a
/// field of such a type is marked `#[replicate(enumeration)]` in a `#[derive(Replicate)]`
/// struct. By hand:
///
/// ```
/// use statewire_core::ReplicateEnum;
///
/// #[derive(Clone, Copy)]
/// enum Kind { Player, Enemy }
///
/// impl ReplicateEnum for Kind {
///     const COUNT: u32 = 2;
///     fn index(&self) -> u32 {
///         *self as u32
///     }
///     fn from_index(index: u32) -> Option<Self> {
///         [Kind::Player, Kind::Enemy].get(index as usize).copied()
///     }
/// }
/// ```
pub trait ReplicateEnum: Sized {
    /// Number of variants (at least 1).
    const COUNT: u32;
    /// This variant's number, below [`ReplicateEnum::COUNT`].
    fn index(&self) -> u32;
    /// The variant numbered `index`; `None` from [`ReplicateEnum::COUNT`] on.
    fn from_index(index: u32) -> Option<Self>;
}

/// Conversions between field types and the values a `FieldWriter`/`FieldReader` takes. Used by
/// the derive's generated code only.
#[doc(hidden)]
pub mod private {
    /// A field type a `float(...)` rule applies to.
    #[diagnostic::on_unimplemented(
        message = "a `float(...)` field must be an `f32` or an `f64`, not `{Self}`"
    )]
    pub trait Float: Copy {
        /// The value to quantize.
        fn to_f32(self) -> f32;
        /// The dequantized value.
        fn from_f32(v: f32) -> Self;
    }

    impl Float for f32 {
        fn to_f32(self) -> f32 {
            self
        }
        fn from_f32(v: f32) -> Self {
            v
        }
    }

    impl Float for f64 {
        fn to_f32(self) -> f32 {
            self as f32
        }
        fn from_f32(v: f32) -> Self {
            f64::from(v)
        }
    }

    /// A field type an `int(...)` or `enumeration(variants = ..)` rule applies to.
    #[diagnostic::on_unimplemented(
        message = "an `int(...)` or `enumeration(variants = ..)` field must be of a primitive \
                   integer type, not `{Self}`"
    )]
    pub trait Int: Copy {
        /// The value, saturated to the `i64` range (the writer then clamps it to the field's).
        fn to_i64(self) -> i64;
        /// The value as `Self`; `None` if it does not fit.
        fn from_i64(v: i64) -> Option<Self>;
    }

    macro_rules! int {
        ($($t:ty),*) => {$(
            impl Int for $t {
                #[allow(irrefutable_let_patterns, unused_comparisons)]
                fn to_i64(self) -> i64 {
                    match i64::try_from(self) {
                        Ok(v) => v,
                        Err(_) if self < 0 => i64::MIN,
                        Err(_) => i64::MAX,
                    }
                }
                fn from_i64(v: i64) -> Option<Self> {
                    <$t>::try_from(v).ok()
                }
            }
        )*};
    }
    int!(
        i8, i16, i32, i64, i128, isize, u8, u16, u32, u64, u128, usize
    );

    /// A variant index for the writer: negative values become 0, values past `u32::MAX`
    /// saturate (the writer clamps to the last variant).
    pub fn index_to_u32<T: Int>(v: T) -> u32 {
        u32::try_from(v.to_i64().max(0)).unwrap_or(u32::MAX)
    }

    /// A field type a `bool` rule applies to.
    #[diagnostic::on_unimplemented(message = "a `bool` field must be a `bool`, not `{Self}`")]
    pub trait Bool: Copy {
        /// The value.
        fn to_bool(self) -> bool;
        /// From the value.
        fn from_bool(v: bool) -> Self;
    }

    impl Bool for bool {
        fn to_bool(self) -> bool {
            self
        }
        fn from_bool(v: bool) -> Self {
            v
        }
    }

    /// A field type a `quat` rule applies to.
    #[diagnostic::on_unimplemented(
        message = "a `quat` field must be an `[f32; 4]` (x, y, z, w), not `{Self}`"
    )]
    pub trait Quat: Copy {
        /// `[x, y, z, w]`.
        fn to_quat(self) -> [f32; 4];
        /// From `[x, y, z, w]`.
        fn from_quat(q: [f32; 4]) -> Self;
    }

    impl Quat for [f32; 4] {
        fn to_quat(self) -> [f32; 4] {
            self
        }
        fn from_quat(q: [f32; 4]) -> Self {
            q
        }
    }
}
