//! oauth-token-operator keeps OAuth access tokens fresh in Kubernetes Secrets.
//!
//! Where things live. The pure core (no client, no wall clock):
//! - `resource`: the `OAuthCredential` custom resource (spec, status, CRD).
//! - `input_secrets`: the layout of the client and refresh-token Secrets,
//!   and what sealing should do with what is stored.
//! - `endpoint`: where tokens may be sent (https, or loopback behind a flag).
//! - `validate`: whether the gathered inputs allow a token-endpoint call.
//! - `decision`: whether to call the token endpoint now.
//! - `schedule`: when to refresh and how long to back off.
//! - `classify`: what a token endpoint's answer means.
//! - `status`: the status and events an outcome calls for.
//! - `output_secret`: the Secret workloads mount, and whether it is ours.
//! - `seal`: sealing refresh tokens; `backlog`: earliest expiry first while a
//!   rate limit binds; `breaker`: each endpoint's share of the calls in
//!   flight, and its circuit breaker; `consent`: the authorization-code flow's pure parts;
//!   `summary`: what the `status` command prints; `clock`: the injected clock.
//!
//! The I/O shell:
//! - `reconcile`: watches, caches and the staged reconcile loop, output
//!   drift and adoption, and the deletion finalizer.
//! - `token_client`: the HTTP call to the token endpoint.
//! - `refresh_token_store`: guarded writes of a refresh-token Secret.
//! - `references`: which credentials name a given Secret.
//! - `keys`: the seal key ring's source; `leader`: the Lease fence;
//!   `shards`: shard Leases, when several replicas share the work.
//! - `metrics`, `admin`: metrics and health; `supervisor`: long-lived tasks.
//! - `runtime`: the composition root of `run`.
//! - `authorize`: the `authorize` command; `opt_in`: the `opt-in` command;
//!   `force_refresh`: the `refresh` command (and authorize's wait);
//!   `cli`: subcommands and flags;
//!   `api_error`: API errors for people; `tls`: the rustls provider.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api_error;
pub mod authorize;
pub mod backlog;
pub mod breaker;
pub mod classify;
pub mod cli;
pub mod clock;
pub mod consent;
pub mod decision;
pub mod endpoint;
pub mod force_refresh;
pub mod input_secrets;
pub mod keys;
pub mod keys_command;
pub mod leader;
pub mod metrics;
pub mod opt_in;
pub mod output_secret;
pub mod reconcile;
pub mod references;
pub mod refresh_token_store;
pub mod resource;
pub mod runtime;
pub mod schedule;
pub mod seal;
pub mod shards;
pub mod status;
pub mod summary;
pub mod supervisor;
pub mod tls;
pub mod token_client;
pub mod validate;
