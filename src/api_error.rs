//! A Kubernetes API error as the command-line tools report it: what we were
//! doing, then what the API server said and its HTTP code.

use thiserror::Error;

/// `context: what the API server said (HTTP code)`.
#[derive(Debug, Error)]
#[error("{context}: {detail}")]
pub struct ApiError {
    context: String,
    detail: String,
}

impl ApiError {
    pub fn new(context: impl Into<String>, error: kube::Error) -> Self {
        let detail = match error {
            kube::Error::Api(status) => format!("{} (HTTP {})", status.message, status.code),
            other => other.to_string(),
        };
        Self {
            context: context.into(),
            detail,
        }
    }

    /// An error that did not come from the API server.
    pub fn other(context: impl Into<String>, error: &dyn std::fmt::Display) -> Self {
        Self {
            context: context.into(),
            detail: error.to_string(),
        }
    }

    /// The same error with every occurrence of `secret` replaced: an API
    /// server may quote a rejected value back.
    pub fn redacted(mut self, secret: &str) -> Self {
        if !secret.is_empty() {
            self.detail = self.detail.replace(secret, "<redacted>");
        }
        self
    }
}
