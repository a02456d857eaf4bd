//! OIDC / Microsoft Entra ID access-token verification and claim mapping.
//!
//! Not built yet: this crate is reserved by the workspace layout and is
//! filled in by the identity issue. Nothing uses it so far.
