//! The one integration-test crate. Modules that need a Kubernetes API server
//! use the real control plane started by `scripts/control-plane up` (the test
//! command `scripts/test` does that) and fail, never skip, when it is missing.

mod admin;
mod authorize;
mod chart;
mod cli;
mod control_plane_smoke;
mod crash;
mod crd;
mod image;
mod leader;
mod lifecycle;
mod node;
mod operator;
mod rbac;
mod resilience;
mod runtime;
mod sealing;
mod security;
mod shards;
mod support;
mod tls;
mod token_client;
