//! The relay (being written).
