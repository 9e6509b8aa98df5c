//! The `OAuthCredential` custom resource: its spec, its status and the CRD
//! generated from them (`oauth-token-operator crd`, committed in `crds/`).
//!
//! Every reference is to a Secret in the credential's own namespace: no field
//! can name another namespace. Schema rules and CEL rules reject invalid input
//! at admission with messages meant for people.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every resource this operator serves.
pub const GROUP: &str = "oauth.tokenoperator.io";

/// Annotation that asks for a refresh now, whatever the schedule and backoff
/// say. Its value is free-form (a timestamp by convention); each new value is
/// one request, remembered in `status.lastForcedRefresh`.
pub const FORCE_REFRESH_ANNOTATION: &str = "oauth.tokenoperator.io/refresh-requested-at";

/// Label put on every output Secret, naming the credential that owns it.
pub const CREDENTIAL_LABEL: &str = "oauth.tokenoperator.io/credential";

/// Finalizer the operator puts on a credential whose deletion has work to
/// do first: orphaning its output Secret (`output.deletionPolicy: Orphan`)
/// or revoking its refresh token (`revokeOnDelete`). Only such credentials
/// carry it.
pub const FINALIZER: &str = "oauth.tokenoperator.io/cleanup";

/// Annotation on a refresh-token Secret: when the refresh token itself
/// expires (RFC 3339), as the provider said at consent (`authorize` writes
/// it for Google's time-limited grants).
pub const REFRESH_TOKEN_EXPIRES_AT_ANNOTATION: &str =
    "oauth.tokenoperator.io/refresh-token-expires-at";

/// Condition types.
pub const READY: &str = "Ready";
pub const REAUTH_REQUIRED: &str = "ReauthRequired";

/// Keeps a current OAuth access token in a Secret: the operator exchanges the
/// refresh token at the provider's token endpoint before the access token
/// expires and writes the result into `spec.output.secretName`.
// clippy reads the repeated keys of the printcolumn(...) groups below as
// duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "oauth.tokenoperator.io",
    version = "v1alpha1",
    kind = "OAuthCredential",
    plural = "oauthcredentials",
    singular = "oauthcredential",
    shortname = "oauthcred",
    // `kubectl get oauth-token-operator` lists every kind of this operator.
    category = "oauth-token-operator",
    namespaced,
    status = "OAuthCredentialStatus",
    derive = "PartialEq",
    doc = "OAuthCredential keeps a fresh OAuth access token in a Secret, refreshed from a stored refresh token before it expires.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the output Secret holds a valid access token"
    ),
    printcolumn(
        name = "Reauth",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"ReauthRequired\")].status",
        description = "Whether a person must grant consent again (run `oauth-token-operator authorize`)"
    ),
    printcolumn(
        name = "Expires",
        type_ = "string",
        json_path = ".status.expiresAt",
        description = "When the current access token expires"
    ),
    printcolumn(
        name = "Next Refresh",
        type_ = "string",
        json_path = ".status.refreshAt",
        description = "When the next call to the token endpoint is scheduled"
    ),
    printcolumn(
        name = "Sealed With",
        type_ = "string",
        priority = 1,
        json_path = ".status.refreshToken.sealedWith",
        description = "Id of the seal key protecting the stored refresh token"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        priority = 1,
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Reason of the Ready condition"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "self.output.secretName != self.refreshTokenSecretRef.name && self.output.secretName != self.clientSecretRef.name",
        "message": "output.secretName must differ from the refresh-token and client Secrets: the operator owns and rewrites the output Secret"
    },
    {
        "rule": "!has(self.revokeOnDelete) || !self.revokeOnDelete || has(self.provider.google) || has(self.provider.revocationEndpoint)",
        "message": "revokeOnDelete needs provider.revocationEndpoint with a generic provider (Google's is built in)"
    }
]))]
pub struct OAuthCredentialSpec {
    /// The OAuth 2.0 provider: either `google: {}` or a generic RFC 6749
    /// token endpoint.
    pub provider: Provider,

    /// The Secret, in this namespace, holding the OAuth client's ID and secret.
    pub client_secret_ref: ClientSecretRef,

    /// The Secret, in this namespace, holding the refresh token. Put the token
    /// there in plain text (or let `oauth-token-operator authorize` do it).
    pub refresh_token_secret_ref: RefreshTokenSecretRef,

    /// The OAuth scopes the grant must cover. `authorize` asks for exactly
    /// these, and status reports which the provider granted.
    #[schemars(length(min = 1, max = 64), inner(length(min = 1, max = 512)))]
    pub scopes: Vec<String>,

    /// Where the access token is written.
    pub output: Output,

    /// How long before expiry to refresh, as a duration such as `20m`,
    /// `1h30m` or `90s`. Default: when one third of the token's lifetime is
    /// left (about 20 minutes for Google's one-hour tokens). Keep it well
    /// above two minutes: kubelet takes 60-90 s to update mounted Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        regex(pattern = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"),
        length(min = 2, max = 16)
    )]
    pub refresh_before: Option<String>,

    /// Revoke the refresh token at the provider's revocation endpoint
    /// (RFC 7009) when the credential is deleted. Off by default. Google
    /// revokes the whole grant: every token of that user's consent to that
    /// OAuth client, in every credential and on every machine. A failed
    /// revocation is retried a few times, then the credential goes anyway
    /// (with an event).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub revoke_on_delete: bool,
}

/// The token endpoint and how to authenticate the client to it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "has(self.google) != has(self.tokenEndpoint)",
        "message": "set exactly one of provider.google or provider.tokenEndpoint"
    },
    {
        "rule": "!has(self.google) || (!has(self.clientAuthentication) && !has(self.authorizationEndpoint) && !has(self.revocationEndpoint))",
        "message": "provider.clientAuthentication, provider.authorizationEndpoint and provider.revocationEndpoint apply only to a generic provider (tokenEndpoint), not to google"
    }
]))]
pub struct Provider {
    /// Google's OAuth 2.0 endpoints (https://oauth2.googleapis.com/token).
    /// Write `google: {}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub google: Option<GoogleProvider>,

    /// The token endpoint of a generic RFC 6749 provider. Must be https; the
    /// operator accepts http only for loopback addresses and only when started
    /// with `--allow-insecure-loopback-http` (tests and demos).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",
            "message": "tokenEndpoint must be an absolute https URL"
        }
    ]))]
    pub token_endpoint: Option<String>,

    /// The authorization endpoint of a generic provider, used only by
    /// `oauth-token-operator authorize` to obtain consent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",
            "message": "authorizationEndpoint must be an absolute https URL"
        }
    ]))]
    pub authorization_endpoint: Option<String>,

    /// The revocation endpoint (RFC 7009) of a generic provider, used only
    /// with `revokeOnDelete`; same transport and allowlist rules as
    /// `tokenEndpoint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "isURL(self) && url(self).getScheme() in ['https', 'http'] && url(self).getHostname() != ''",
            "message": "revocationEndpoint must be an absolute https URL"
        }
    ]))]
    pub revocation_endpoint: Option<String>,

    /// How the client authenticates to a generic token endpoint:
    /// `client_secret_basic` (HTTP Basic, the default every RFC 6749 server
    /// must support) or `client_secret_post` (in the form body).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_authentication: Option<ClientAuthentication>,
}

/// Google's preset endpoints. Has no fields today.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct GoogleProvider {}

/// Client authentication method at the token endpoint (RFC 6749 §2.3.1).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ClientAuthentication {
    /// HTTP Basic authentication with the client ID and secret.
    #[serde(rename = "client_secret_basic")]
    ClientSecretBasic,
    /// Client ID and secret in the form-encoded request body.
    #[serde(rename = "client_secret_post")]
    ClientSecretPost,
}

/// A Secret in the credential's namespace holding the OAuth client.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientSecretRef {
    /// Name of the Secret, in the same namespace as the credential.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key holding the client ID. Default: `client_id`.
    #[serde(default = "default_client_id_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub client_id_key: String,
    /// Key holding the client secret. Default: `client_secret`.
    #[serde(default = "default_client_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub client_secret_key: String,
}

/// A Secret in the credential's namespace holding the refresh token.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshTokenSecretRef {
    /// Name of the Secret, in the same namespace as the credential.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Key holding the refresh token. Default: `refresh_token`.
    #[serde(default = "default_refresh_token_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

/// The Secret the operator creates, owns and keeps current.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "(self.type == 'kubernetes.io/dockerconfigjson') == (has(self.registries) && size(self.registries) > 0)",
        "message": "output.registries is required with type kubernetes.io/dockerconfigjson, and only then"
    },
    {
        "rule": "self.type == 'Opaque' || (!has(self.keys) && !has(self.template))",
        "message": "output.keys and output.template apply only to type Opaque"
    },
    {
        "rule": "self.type == oldSelf.type || self.secretName != oldSelf.secretName",
        "message": "output.type cannot change for the same secretName: Kubernetes fixes a Secret's type when it is created; change secretName with it"
    },
    {
        "rule": "!has(self.keys) || !has(self.template)",
        "message": "set output.keys or output.template, not both: a template names its own keys"
    },
    {
        "rule": "!has(self.labels) || self.labels.all(k, k != 'app.kubernetes.io/managed-by' && !k.startsWith('oauth.tokenoperator.io/'))",
        "message": "output.labels may not set app.kubernetes.io/managed-by or oauth.tokenoperator.io/ labels: the operator sets them"
    },
    {
        "rule": "!has(self.annotations) || self.annotations.all(k, !k.startsWith('oauth.tokenoperator.io/'))",
        "message": "output.annotations may not set oauth.tokenoperator.io/ annotations: the operator sets them"
    }
]))]
pub struct Output {
    /// Name of the Secret to write, in the same namespace. By default it gets
    /// the keys `access_token`, `token_type`, `expiry` (RFC 3339) and
    /// `scope`. A Secret of this name that the operator does not own is never
    /// overwritten. Mount it as a volume: `subPath` mounts and environment
    /// variables never see a refreshed token.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub secret_name: String,

    /// The Secret's type: `Opaque` (the default; keys per `keys` or
    /// `template`), or `kubernetes.io/dockerconfigjson`, whose
    /// `.dockerconfigjson` lets image pulls from `registries` use the access
    /// token as the password of `oauth2accesstoken` (as Google's Artifact
    /// Registry expects).
    #[serde(default, rename = "type")]
    pub type_: OutputType,

    /// With `kubernetes.io/dockerconfigjson`: the registries the token is
    /// for, e.g. `europe-docker.pkg.dev`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 16),
        inner(
            length(min = 1, max = 253),
            regex(pattern = r"^[a-zA-Z0-9.-]+(:[0-9]+)?(/[-a-zA-Z0-9._/]*)?$")
        )
    )]
    pub registries: Vec<String>,

    /// Other names for the standard keys of an `Opaque` output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<OutputKeys>,

    /// Instead of the standard keys: the Secret's keys, each rendered from a
    /// small Jinja template with the variables `access_token`, `token_type`,
    /// `expiry` (RFC 3339) and `scope`. The template language can read
    /// nothing else: no file, no environment, no other Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<OutputTemplate>,

    /// Labels to put on the output Secret (for admission policies,
    /// backups, selection), besides the operator's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub labels: BTreeMap<String, String>,

    /// Annotations to put on the output Secret, besides the operator's own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub annotations: BTreeMap<String, String>,

    /// What happens to the output Secret when the credential is deleted:
    /// `Delete` (the default: it is garbage-collected with the credential)
    /// or `Orphan` (it stays, labelled `oauth.tokenoperator.io/orphaned`,
    /// until it expires or a new credential of the same name adopts it).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
}

/// The type of the output Secret.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OutputType {
    #[default]
    Opaque,
    #[serde(rename = "kubernetes.io/dockerconfigjson")]
    DockerConfigJson,
}

/// Names of the standard keys of an `Opaque` output.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputKeys {
    /// Key of the access token. Default: `access_token`.
    #[serde(default = "default_access_token_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub access_token: String,
    /// Key of the token type. Default: `token_type`.
    #[serde(default = "default_token_type_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub token_type: String,
    /// Key of the expiry (RFC 3339). Default: `expiry`.
    #[serde(default = "default_expiry_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub expiry: String,
    /// Key of the granted scopes. Default: `scope`.
    #[serde(default = "default_scope_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub scope: String,
}

/// Templated keys of an `Opaque` output.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutputTemplate {
    /// Key → template, e.g. `token.env: "ACCESS_TOKEN={{ access_token }}"`
    /// or `token.json: '{"token": {{ access_token | tojson }}}'`.
    #[schemars(extend("minProperties" = 1, "maxProperties" = 16))]
    #[schemars(extend("x-kubernetes-validations" = [
        {
            "rule": "self.all(k, k.matches('^[-._a-zA-Z0-9]+$') && size(k) <= 253)",
            "message": "output.template.data keys must be Secret keys: letters, digits, '-', '_', '.'"
        },
        {
            "rule": "self.all(k, size(self[k]) <= 4096)",
            "message": "each output.template.data template may be at most 4096 characters"
        }
    ]))]
    pub data: BTreeMap<String, String>,
}

/// What happens to the output Secret when its credential is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Delete,
    Orphan,
}

fn default_access_token_key() -> String {
    "access_token".into()
}
fn default_token_type_key() -> String {
    "token_type".into()
}
fn default_expiry_key() -> String {
    "expiry".into()
}
fn default_scope_key() -> String {
    "scope".into()
}

fn default_client_id_key() -> String {
    "client_id".into()
}
fn default_client_secret_key() -> String {
    "client_secret".into()
}
fn default_refresh_token_key() -> String {
    "refresh_token".into()
}

/// What the operator last did and will do next. Never holds a token.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OAuthCredentialStatus {
    /// The `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`: the output Secret holds an access token that has not expired.
    /// `ReauthRequired`: only a person can fix this credential, by supplying
    /// a new refresh token (for example with `oauth-token-operator authorize`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,

    /// When the access token in the output Secret expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,

    /// When the operator will next call the token endpoint: the scheduled
    /// refresh, or the end of the current backoff after a failure. Absent
    /// while nothing is scheduled (ReauthRequired, waiting for a person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_at: Option<Time>,

    /// When the access token in the output Secret was obtained.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refresh_time: Option<Time>,

    /// Failed refresh attempts since the last success; drives the backoff.
    #[serde(default, skip_serializing_if = "is_zero")]
    #[schemars(extend("format" = "int32", "minimum" = 0))]
    pub failed_attempts: u32,

    /// The most recent failed attempt. Kept after a later success, for the
    /// record; `failedAttempts` tells whether it is current.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    // Boxed: absent on most credentials, and the largest field of a cached one.
    pub last_failure: Option<Box<Failure>>,

    /// The scopes the provider reported for the current access token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub granted_scopes: Vec<String>,

    /// The last value of the force-refresh annotation that was acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_forced_refresh: Option<String>,

    /// The stored refresh token as the operator last saw or wrote it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<RefreshTokenState>,

    /// While a credential with `revokeOnDelete` is being deleted: the
    /// revocation attempts that failed so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<Revocation>,
}

/// Revocation at deletion, while it is being retried.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revocation {
    /// Attempts that failed; after the last allowed one the credential is
    /// deleted anyway, with a `RevocationFailed` event.
    #[schemars(extend("format" = "int32", "minimum" = 0))]
    pub failed_attempts: u32,
    /// Why the last attempt failed, for a person.
    pub message: String,
    /// When the next attempt is made.
    pub retry_at: Time,
}

/// What the operator knows of the refresh-token Secret, never its value.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshTokenState {
    /// `resourceVersion` of the refresh-token Secret when the operator last
    /// read or wrote it.
    pub secret_version: String,
    /// Id of the seal key the stored refresh token is sealed with. During a
    /// key rotation, the ids still listed here are the keys still in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_with: Option<String>,
    /// When the refresh token itself expires, when the provider said so
    /// (Google's time-limited grants: `refresh_token_expires_in`). The
    /// credential warns (`RefreshTokenExpiring`) a while before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<Time>,
    /// Format of the sealed value: `v2` binds it to the credential, its token
    /// endpoint and its client id; values the operator finds in the older
    /// `v1` format (bound to the credential only) are re-sealed as `v2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A failed refresh attempt. Carries the provider's error code and
/// description, never a token and never a raw response body.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// When the attempt failed.
    pub time: Time,
    /// Who can fix it: `Transient` (retried with backoff), `Configuration`
    /// (fix the client Secret or the spec), `ReauthRequired` (a person must
    /// supply a new refresh token).
    pub category: FailureCategory,
    /// A CamelCase reason, the same as the Ready condition's reason.
    pub reason: String,
    /// What happened and what to do, for a person.
    pub message: String,
    /// The provider's `error` code (RFC 6749 §5.2), when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The provider's `error_description`, when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    /// Google's `error_subtype` (e.g. `invalid_rapt`), when it sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_subtype: Option<String>,
    /// HTTP status of the token endpoint's answer, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int32"))]
    pub http_status: Option<u16>,
    /// The inputs the attempt used. While a failure that needs a person or a
    /// configuration change holds, the operator calls the provider again only
    /// once one of these has changed.
    pub inputs: Inputs,
}

/// Who can fix a failure.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum FailureCategory {
    /// Retried with exponential backoff: rate limits, provider errors, network.
    Transient,
    /// Retried after a long backoff, or at once when the client Secret or the
    /// spec changes: the client or the request is wrong.
    Configuration,
    /// Not retried until the refresh-token Secret or the spec changes: only a
    /// person can fix it, by granting consent again.
    ReauthRequired,
}

/// Versions of what a refresh attempt read: a change to any of them is a new
/// chance to succeed.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Inputs {
    /// `metadata.generation` of the credential.
    pub generation: i64,
    /// `resourceVersion` of the client Secret.
    pub client_secret_version: String,
    /// `resourceVersion` of the refresh-token Secret.
    pub refresh_token_secret_version: String,
    /// The seal key ring's key ids, recorded only with a
    /// `SealedTokenUnreadable` failure: a key restored to the ring (`keys
    /// import`) may open the value, so a change of the ring retries it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key_ring: String,
}

/// A condition with `metav1.Condition` semantics.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready` or `ReauthRequired`.
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    /// CamelCase reason; see the README for every reason and what to do.
    pub reason: String,
    /// A sentence for a person.
    pub message: String,
    /// When `status` last changed.
    pub last_transition_time: Time,
    /// The `metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

impl OAuthCredentialStatus {
    /// The condition of the given type, if set.
    pub fn condition(&self, type_: &str) -> Option<&Condition> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    /// Whether the condition of the given type has status `True`.
    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status == "True")
    }
}
