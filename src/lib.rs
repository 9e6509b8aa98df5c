//! oauth-token-operator keeps OAuth access tokens fresh in Kubernetes Secrets.
//!
//! The controller, the `OAuthCredential` resource and the token client live in
//! this library; the `oauth-token-operator` binary wires them together.
#![forbid(unsafe_code)]

