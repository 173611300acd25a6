//! Shared pieces of the integration tests: signed metadata, an in-test config service
//! (the protocol peer, speaking real gRPC on 127.0.0.1), and the controller process.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod process;
pub use trust::test_repo as repo;
pub mod service;
