//! Client-side prediction and reconciliation (issue 12; being built).
