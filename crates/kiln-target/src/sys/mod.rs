//! The only place with `unsafe` code: small, checked wrappers over the system.
pub(crate) mod call;
pub(crate) mod dl;
pub(crate) mod eh;
pub(crate) mod mem;
pub mod tls;
