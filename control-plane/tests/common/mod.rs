//! Helpers shared by the control plane's integration tests.

pub mod synth;
