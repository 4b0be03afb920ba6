//! Test support shared by statewire's own tests: the component types that the core's
//! integration tests, the fuzz targets (`fuzz/`) and the benchmarks (`benches/`) all replicate,
//! declared once with `#[derive(Replicate)]`.
//!
//! Not published. The wire layout of every type here is fixed: tests assert byte counts and
//! fuzz corpora hold packets built with it, so changing a rule changes what they check.
//!
//! | type | fields | bits |
//! |---|---|---|
//! | [`Pos`] | two floats over ±512 at 1/64 | 17 + 17 |
//! | [`Rot`] | a smallest-three quaternion at 9 bits | 29 |
//! | [`Health`] | an int in -100..=1000, a bool, a 4-variant enum | 11 + 1 + 2 |

use statewire_core::{Registry, Replicate};

/// Planar position: two floats over ±512 at 1/64 (65,537 values: 17 bits each).
#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
pub struct Pos {
    /// East.
    #[replicate(float(min = -512.0, max = 512.0, precision = 1.0 / 64.0))]
    pub x: f32,
    /// North.
    #[replicate(float(min = -512.0, max = 512.0, precision = 1.0 / 64.0))]
    pub y: f32,
}

/// Orientation: a smallest-three quaternion `[x, y, z, w]` at 9 bits per component (29 bits).
#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
pub struct Rot(#[replicate(quat(bits = 9), name = "q")] pub [f32; 4]);

/// An int whose range is not a power of two, a bool, and an enum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Replicate)]
pub struct Health {
    /// Hit points, -100..=1000 (11 bits, max 1100).
    #[replicate(int(min = -100, max = 1000))]
    pub hp: i64,
    /// 1 bit.
    pub alive: bool,
    /// Team index, 0..4 (2 bits).
    #[replicate(enumeration(variants = 4))]
    pub team: u32,
}

/// A registry of [`Pos`], [`Rot`] and [`Health`], with ids 0, 1 and 2.
///
/// # Panics
///
/// Never: the schemas are valid.
#[must_use]
pub fn registry() -> Registry {
    let mut r = Registry::new();
    r.register::<Pos>().expect("valid schema");
    r.register::<Rot>().expect("valid schema");
    r.register::<Health>().expect("valid schema");
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use statewire_core::{Field, FieldKind};

    #[test]
    fn layouts_are_the_documented_ones() {
        let axis = FieldKind::Float {
            min: -512.0,
            max: 512.0,
            precision: 1.0 / 64.0,
        };
        assert_eq!(
            Pos::fields(),
            vec![Field::new("x", axis), Field::new("y", axis)]
        );
        assert_eq!(
            Rot::fields(),
            vec![Field::new("q", FieldKind::Quat { bits: 9 })]
        );
        assert_eq!(
            Health::fields(),
            vec![
                Field::new(
                    "hp",
                    FieldKind::Int {
                        min: -100,
                        max: 1000
                    }
                ),
                Field::new("alive", FieldKind::Bool),
                Field::new("team", FieldKind::Enum { variants: 4 }),
            ]
        );
        let reg = registry();
        let bits: Vec<u32> = (0..3)
            .map(|i| {
                reg.schema(statewire_core::ComponentId(i))
                    .unwrap()
                    .full_bits()
            })
            .collect();
        assert_eq!(bits, vec![34, 29, 14]);
    }
}
