//! Entropy-coding building blocks and the 901-cube scenario codecs.
//!
//! - [`range`]: an adaptive range coder with context models ([`range::BitModel`],
//!   [`range::BitTree`], [`range::IntModel`], and the multi-symbol [`range::SymbolModel`] and
//!   [`range::ResidualModel`]).
//! - [`cubes`]: the classic 901-cube snapshot-compression scenario: the frame layout and a
//!   strict file reader, a deterministic physics generator, and two codecs (bit-packed and
//!   entropy-coded with prediction).

pub mod cubes;
pub mod range;
