//! Tick and clock synchronisation for clients (issue 12; being built).
