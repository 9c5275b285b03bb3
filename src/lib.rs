//! The `shardq` command's building blocks, as a library so the end-to-end tests can drive them:
//! the local-cluster supervisor, admin commands, the run verifier and the benchmark.

pub mod admin;
pub mod bench;
pub mod up;
pub mod verify;
