//! Writes to a refresh-token Secret, shared by the reconcile loop (sealing in
//! place, storing a rotated token) and `authorize` (storing a new consent).
//!
//! A refresh token is a value where a lost update is fatal, so every write is
//! a read-modify-write under the `resourceVersion` precondition of the read
//! (never a blind apply). On a conflict the Secret is read again and `edit`
//! decides afresh what to write, or that nothing should be written.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::PostParams;
use thiserror::Error;

/// Why a write did not happen.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    Kube(#[from] kube::Error),
    #[error("the Secret kept changing: {0} writes in a row conflicted")]
    Conflicts(u32),
}

/// Writes the Secret `name` as `edit` makes it from `current` (the Secret
/// as just read, `None` when absent; `edit` returns `None` to write nothing,
/// and then so does this); on a conflict reads it again and edits again, up
/// to `attempts` writes in all. Returns the Secret as written.
pub async fn write(
    secrets: &Api<Secret>,
    name: &str,
    params: &PostParams,
    mut current: Option<Secret>,
    attempts: u32,
    mut edit: impl FnMut(Option<Secret>) -> Option<Secret>,
) -> Result<Option<Secret>, StoreError> {
    for _ in 0..attempts {
        let existed = current.is_some();
        let Some(mut secret) = edit(current.take()) else {
            return Ok(None);
        };
        secret.metadata.managed_fields = None;
        let result = if existed {
            secrets.replace(name, params, &secret).await
        } else {
            secrets.create(params, &secret).await
        };
        match result {
            Ok(written) => return Ok(Some(written)),
            Err(kube::Error::Api(status)) if status.code == 409 => {
                current = secrets.get_opt(name).await?;
            }
            Err(error) => return Err(error.into()),
        }
    }
    Err(StoreError::Conflicts(attempts))
}
