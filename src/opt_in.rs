//! `oauth-token-operator opt-in <namespace>/<name>`: makes a credential's
//! existing client and refresh-token Secrets inputs the operator accepts.
//!
//! The operator uses a Secret as an input only if the Secret's `type` says it
//! is one (`oauth.tokenoperator.io/client`, `oauth.tokenoperator.io/refresh-token`).
//! Kubernetes fixes a Secret's type at creation, so an `Opaque` Secret made
//! before this rule must be re-created: this command reads it with the
//! person's own permissions, deletes it (only if unchanged since the read) and
//! creates it again with the input type and the same data, labels and
//! annotations. Only `Opaque` Secrets are converted; a Secret of any other
//! type (a service-account token, say) is refused. No value is printed.

use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, ObjectMeta, PostParams, Preconditions};
use kube::{Api, Client};
use thiserror::Error;

use crate::api_error::ApiError;
use crate::input_secrets::InputKind;
use crate::output_secret::{MANAGED_BY, MANAGED_BY_LABEL};
use crate::resource::OAuthCredential;

/// Field manager of the Secrets this command creates.
pub const FIELD_MANAGER: &str = "oauth-token-operator-opt-in";

#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error("OAuthCredential {0} does not exist")]
    NotFound(String),
    #[error(
        "Secret {secret} has type {actual}; only an Opaque Secret can be made an OAuth {noun} Secret. \
         Store the value in a new Secret of type {wanted} instead"
    )]
    NotOpaque {
        secret: String,
        actual: String,
        noun: &'static str,
        wanted: &'static str,
    },
    #[error("Secret {0} is an output Secret of the operator, not an input")]
    Output(String),
    #[error(
        "Secret {secret} was deleted but could not be created again as an input ({error}); it was \
         restored as it was{restored}"
    )]
    NotRecreated {
        secret: String,
        error: ApiError,
        restored: String,
    },
}

/// Converts the credential's input Secrets; prints one line per Secret.
pub async fn run(client: Client, namespace: &str, name: &str) -> Result<(), Error> {
    let target = format!("{namespace}/{name}");
    let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), namespace);
    let credential = credentials
        .get_opt(name)
        .await
        .map_err(|e| ApiError::new(format!("cannot read OAuthCredential {target}"), e))?
        .ok_or_else(|| Error::NotFound(target.clone()))?;
    let secrets: Api<Secret> = Api::namespaced(client, namespace);
    for (secret, kind) in [
        (&credential.spec.client_secret_ref.name, InputKind::Client),
        (
            &credential.spec.refresh_token_secret_ref.name,
            InputKind::RefreshToken,
        ),
    ] {
        let done = opt_in(&secrets, secret, kind).await?;
        println!("Secret {namespace}/{secret}: {done}");
    }
    Ok(())
}

/// Makes one Secret an input of `kind`; says what was done.
async fn opt_in(secrets: &Api<Secret>, name: &str, kind: InputKind) -> Result<&'static str, Error> {
    let context = |what: &str| format!("cannot {what} Secret {name}");
    let Some(secret) = secrets
        .get_opt(name)
        .await
        .map_err(|e| ApiError::new(context("read"), e))?
    else {
        return Ok(
            "does not exist; create it with the type it needs, or let `authorize` create it",
        );
    };
    if kind.accepts(&secret) {
        return Ok("already an input");
    }
    check_convertible(&secret, name, kind)?;
    let recreated = as_input(&secret, kind);
    // Permission to create is checked before anything is deleted.
    let dry_run = PostParams {
        dry_run: true,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    let mut renamed = recreated.clone();
    renamed.metadata.name = None;
    renamed.metadata.generate_name = Some(format!("{name}-opt-in-check-"));
    secrets
        .create(&dry_run, &renamed)
        .await
        .map_err(|e| ApiError::new(context("create"), e))?;
    let unchanged = DeleteParams {
        preconditions: Some(Preconditions {
            uid: secret.metadata.uid.clone(),
            resource_version: secret.metadata.resource_version.clone(),
        }),
        ..Default::default()
    };
    secrets
        .delete(name, &unchanged)
        .await
        .map_err(|e| ApiError::new(context("delete"), e))?;
    let params = PostParams {
        dry_run: false,
        field_manager: Some(FIELD_MANAGER.into()),
    };
    if let Err(error) = secrets.create(&params, &recreated).await {
        let restored = match secrets.create(&params, &as_before(&secret)).await {
            Ok(_) => String::new(),
            Err(e) => format!(" — restoring failed too: {}", ApiError::new("", e)),
        };
        return Err(Error::NotRecreated {
            secret: name.into(),
            error: ApiError::new("", error),
            restored,
        });
    }
    Ok(match kind {
        InputKind::Client => "re-created as an OAuth client Secret, data unchanged",
        InputKind::RefreshToken => "re-created as an OAuth refresh-token Secret, data unchanged",
    })
}

fn check_convertible(secret: &Secret, name: &str, kind: InputKind) -> Result<(), Error> {
    let actual = secret.type_.clone().unwrap_or_else(|| "Opaque".into());
    if actual != "Opaque" {
        return Err(Error::NotOpaque {
            secret: name.into(),
            actual,
            noun: kind.noun(),
            wanted: kind.secret_type(),
        });
    }
    let ours = secret
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(MANAGED_BY_LABEL))
        .is_some_and(|v| v == MANAGED_BY);
    if ours {
        return Err(Error::Output(name.into()));
    }
    Ok(())
}

/// The Secret with the input's type: same name, data, labels, annotations
/// and immutability; nothing the API server sets.
fn as_input(secret: &Secret, kind: InputKind) -> Secret {
    let mut annotations = secret.metadata.annotations.clone().unwrap_or_default();
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    Secret {
        metadata: ObjectMeta {
            name: secret.metadata.name.clone(),
            labels: secret.metadata.labels.clone(),
            annotations: (!annotations.is_empty()).then_some(annotations),
            ..Default::default()
        },
        type_: Some(kind.secret_type().into()),
        data: secret.data.clone(),
        immutable: secret.immutable,
        ..Default::default()
    }
}

/// The Secret as read, ready to be created again.
fn as_before(secret: &Secret) -> Secret {
    let mut before = secret.clone();
    before.metadata = ObjectMeta {
        name: secret.metadata.name.clone(),
        labels: secret.metadata.labels.clone(),
        annotations: secret.metadata.annotations.clone(),
        ..Default::default()
    };
    before
}
