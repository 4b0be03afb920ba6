//! Interpolation of remote entities (issue 12; being built).
