//! oauth-token-operator keeps OAuth access tokens fresh in Kubernetes Secrets.
//!
//! Where things live:
//! - `resource`: the `OAuthCredential` custom resource (spec, status, CRD).
//! - `schedule`: when to refresh and how long to back off (pure).
//! - `decision`: whether to call the token endpoint now (pure).
//! - `classify`: what a token endpoint's answer means (pure).
//! - `status`: the status and events an outcome calls for (pure).
//! - `output_secret`: the Secret workloads mount, and whether it is ours (pure).
//! - `token_client`: the HTTP call to the token endpoint.
//! - `backlog`: earliest expiry first while a rate limit binds (pure).
//! - `references`: which credentials name a given Secret.
//! - `controller`: watches, caches and the reconcile loop that ties it together.
//! - `consent`: the authorization-code flow with PKCE, its pure parts.
//! - `authorize`: the `authorize` command: consent, storing the refresh token.
//! - `summary`: what the `status` command prints (pure).
//! - `cli`: subcommands and flags; `tls`: the process-wide rustls provider.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authorize;
pub mod backlog;
pub mod classify;
pub mod cli;
pub mod consent;
pub mod controller;
pub mod decision;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod output_secret;
pub mod references;
pub mod resource;
pub mod schedule;
pub mod seal;
pub mod status;
pub mod summary;
pub mod tls;
pub mod token_client;
