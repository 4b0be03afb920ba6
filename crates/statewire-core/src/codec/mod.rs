//! Entropy-coding building blocks.
//!
//! - [`range`]: an adaptive range coder with context models ([`range::BitModel`],
//!   [`range::BitTree`], [`range::IntModel`], and the multi-symbol [`range::SymbolModel`] and
//!   [`range::ResidualModel`]).

pub mod range;
