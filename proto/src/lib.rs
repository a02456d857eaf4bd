//! Airlock's public contract, generated from `proto/airlock/v1`: the event
//! envelope and vocabulary written to the log, and the gRPC services of the
//! control plane (proxy `Attach`, reviewer, audit stream).
//!
//! Hand-written code stays out of this crate, which re-exports what
//! tonic-prost-build generates, with two exceptions, as much a part of the
//! wire contract as the messages: [`error`], the refusal codes both ends of
//! a call must agree on, and [`bounds`], the row bounds an approval has
//! unless its reviewer sets others.

pub mod bounds;
pub mod error;

pub use error::ErrorCode;

/// Package `airlock.v1`.
pub mod v1 {
    #![allow(clippy::all, missing_debug_implementations)]
    include!(concat!(env!("OUT_DIR"), "/airlock.v1.rs"));
}

/// Encoded `FileDescriptorSet` of every file in the package, for gRPC server
/// reflection (so `grpcurl` works without the .proto files).
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/airlock_descriptor.bin"));
