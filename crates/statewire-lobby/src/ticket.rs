//! Relay tickets (being written).
