//! Test support shared by statewire's own tests: the component types that the core's
//! integration tests, the endpoint tests, the bevy and hecs integrations' tests, the fuzz
//! targets (`fuzz/`) and the benchmarks (`benches/`) all replicate, declared once with
//! `#[derive(Replicate)]`.
//!
//! Not published. The wire layout of every type here is fixed: tests assert byte counts and
//! fuzz corpora hold packets built with it, so changing a rule changes what they check.
//!
//! | type | fields | bits |
//! |---|---|---|
//! | [`Pos`] | two floats over ±512 at 1/64 | 17 + 17 |
//! | [`Rot`] | a smallest-three quaternion at 9 bits | 29 |
//! | [`Health`] | an int in -100..=1000, a bool, a 4-variant enum | 11 + 1 + 2 |
//! | [`X`] | one float over ±512 at 1/64 (one axis of [`Pos`]) | 17 |
//! | [`Hp`] | an int in 0..=100 | 7 |
//! | [`Aim`] | one float over ±4 at 1/64 | 10 |
//! | [`Tag`] | a bool | 1 |
//!
//! With the feature `bevy`, every type is also a `bevy_ecs` `Component`. Any of them is a
//! `hecs` component as it is.

use statewire_core::{Registry, Replicate};

/// Planar position: two floats over ±512 at 1/64 (65,537 values: 17 bits each).
#[cfg_attr(feature = "bevy", derive(bevy_ecs::component::Component))]
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
#[cfg_attr(feature = "bevy", derive(bevy_ecs::component::Component))]
#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
pub struct Rot(#[replicate(quat(bits = 9), name = "q")] pub [f32; 4]);

/// An int whose range is not a power of two, a bool, and an enum.
#[cfg_attr(feature = "bevy", derive(bevy_ecs::component::Component))]
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

/// A position on one axis: a float over ±512 at 1/64, the rule of one [`Pos`] axis (17 bits).
#[cfg_attr(feature = "bevy", derive(bevy_ecs::component::Component))]
#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
pub struct X(
    #[replicate(float(min = -512.0, max = 512.0, precision = 1.0 / 64.0), name = "x")] pub f32,
);

/// Hit points: an int in 0..=100 (7 bits).
#[cfg_attr(feature = "bevy", derive(bevy_ecs::component::Component))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Replicate)]
pub struct Hp(#[replicate(int(min = 0, max = 100), name = "hp")] pub i64);

/// Where a player aims: a float over ±4 at 1/64 (513 values: 10 bits).
#[cfg_attr(feature = "bevy", derive(bevy_ecs::component::Component))]
#[derive(Debug, Clone, Copy, PartialEq, Replicate)]
pub struct Aim(
    #[replicate(float(min = -4.0, max = 4.0, precision = 1.0 / 64.0), name = "a")] pub f32,
);

/// A flag: one bool (1 bit).
#[cfg_attr(feature = "bevy", derive(bevy_ecs::component::Component))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Replicate)]
pub struct Tag(#[replicate(name = "on")] pub bool);

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

    #[test]
    fn the_small_types_have_the_documented_layouts() {
        let mut reg = Registry::new();
        let ids = [
            reg.register::<X>().unwrap(),
            reg.register::<Hp>().unwrap(),
            reg.register::<Aim>().unwrap(),
            reg.register::<Tag>().unwrap(),
        ];
        assert_eq!(
            X::fields(),
            vec![Field::new(
                "x",
                FieldKind::Float {
                    min: -512.0,
                    max: 512.0,
                    precision: 1.0 / 64.0,
                }
            )]
        );
        assert_eq!(
            Hp::fields(),
            vec![Field::new("hp", FieldKind::Int { min: 0, max: 100 })]
        );
        assert_eq!(
            Aim::fields(),
            vec![Field::new(
                "a",
                FieldKind::Float {
                    min: -4.0,
                    max: 4.0,
                    precision: 1.0 / 64.0,
                }
            )]
        );
        assert_eq!(Tag::fields(), vec![Field::new("on", FieldKind::Bool)]);
        let bits: Vec<u32> = ids
            .iter()
            .map(|&id| reg.schema(id).unwrap().full_bits())
            .collect();
        assert_eq!(bits, vec![17, 7, 10, 1]);
        assert_eq!(
            [X::NAME, Hp::NAME, Aim::NAME, Tag::NAME],
            ["X", "Hp", "Aim", "Tag"]
        );
    }
}
