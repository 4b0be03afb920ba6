//! Server-side lag compensation (issue 12; being built).
