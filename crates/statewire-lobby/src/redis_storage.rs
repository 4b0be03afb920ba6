//! Redis storage (being written).
