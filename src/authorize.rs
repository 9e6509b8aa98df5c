//! `oauth-token-operator authorize <namespace>/<name>`: obtains a person's
//! consent with the authorization-code flow (PKCE S256 and a `state` check,
//! redirect to a listener on 127.0.0.1), stores the refresh token in the
//! credential's refresh-token Secret, where the operator seals it, asks the
//! operator to refresh with it, and waits until the credential is `Ready`.
//!
//! Nothing is half-written: both writes are tried server-side (dry run)
//! before the person is asked anything; after consent, every check (state,
//! code exchange, refresh token present, scopes) passes before the one write
//! of the Secret. Neither the code nor any token is ever printed.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use secrecy::{ExposeSecret, SecretString};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use url::Url;

use crate::api_error::ApiError;
use crate::consent::{self, ConsentError, Pkce};
use crate::endpoint::{self, EndpointError, TokenEndpoint};
use crate::force_refresh;
use crate::input_secrets::{self, ClientCredentials, ClientSecretError, InputKind};
use crate::refresh_token_store::{self, StoreError};
use crate::resource::{OAuthCredential, READY, REFRESH_TOKEN_EXPIRES_AT_ANNOTATION};
use crate::schedule;
use crate::status::reason;
use crate::summary::short;
use crate::token_client::{TokenClient, TokenClientConfig};

/// Field manager of the writes `authorize` makes.
pub const FIELD_MANAGER: &str = "oauth-token-operator-authorize";

/// What `authorize` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    pub namespace: String,
    pub name: String,
    /// Print the address instead of opening a browser.
    pub no_browser: bool,
    /// How long to wait for the person's consent.
    pub timeout: Duration,
    /// How long to wait for the operator to report on the new token; zero
    /// does not wait.
    pub wait: Duration,
    pub allow_insecure_loopback_http: bool,
    /// The loopback redirect's port; 0 takes any free one.
    pub port: u16,
    /// How the person invoked us, for messages (`kubectl oauth-token`, ...).
    pub program: String,
}

/// Why `authorize` did not finish. Every message says whether anything was
/// written; none holds a code or a token.
#[derive(Debug, Error)]
pub enum Error {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(
        "OAuthCredential {target} does not exist (`kubectl get oauthcredentials -n {namespace}`)"
    )]
    NotFound { target: String, namespace: String },
    #[error("{target}: {source}")]
    Endpoint {
        target: String,
        source: EndpointError,
    },
    #[error(transparent)]
    ClientSecret(#[from] ClientSecretError),
    #[error(transparent)]
    NotAnInput(Box<NotAnInput>),
    #[error(
        "the operator refuses {target} ({reason}: {message}); fix that first; nothing was asked of anyone"
    )]
    Refused {
        target: String,
        reason: String,
        message: String,
    },
    #[error(
        "the operator has not checked {target} as it is now (generation {generation}) within {waited}; \
         its token and authorization endpoints are used only once the operator has allowed them. Is the \
         operator running and watching namespace {namespace}? Nothing was asked of anyone"
    )]
    NotChecked {
        target: String,
        generation: i64,
        waited: String,
        namespace: String,
    },
    #[error("{0}; nothing was asked of anyone")]
    WouldFail(ApiError),
    #[error(
        "cannot listen on 127.0.0.1:{0} for the redirect (`--port`; 0 takes any free port): {1}; nothing was written"
    )]
    Listen(u16, std::io::Error),
    #[error("no consent arrived within {0}; nothing was written")]
    NoConsent(String),
    #[error("the redirect listener stopped; nothing was written")]
    ListenerStopped,
    #[error(transparent)]
    Consent(#[from] ConsentError),
    #[error("cannot build the HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error(
        "the token endpoint did not accept the authorization code ({reason}: {provider}); nothing was written"
    )]
    CodeRejected {
        reason: &'static str,
        provider: String,
    },
    #[error("consent was given, but {0}; nothing was written. Fix that and run this command again")]
    NotStored(ApiError),
    #[error(
        "the refresh token is stored, but the operator did not act on it within {wait}. Is the \
         operator running and watching namespace {namespace}? See `kubectl describe oauthcredential -n {namespace} {name}`"
    )]
    NotActedOn {
        wait: String,
        namespace: String,
        name: String,
    },
    #[error("the refresh token is stored, but {0} was deleted")]
    Deleted(String),
    #[error(
        "the refresh token is stored, but the operator's refresh with it failed ({failure}). \
         Check with `{program} status -n {namespace}`"
    )]
    RefreshFailed {
        failure: String,
        program: String,
        namespace: String,
    },
}

/// A Secret the credential names that did not opt in as its input.
#[derive(Debug, Error)]
#[error(
    "Secret {namespace}/{secret} is not an OAuth {noun} Secret (its type is {actual:?}), so the \
     operator would not use it; opt it in first with `{program} opt-in {namespace}/{credential}`; \
     nothing was asked of anyone"
)]
pub struct NotAnInput {
    namespace: String,
    secret: String,
    noun: &'static str,
    actual: String,
    program: String,
    credential: String,
}

/// What the redirect listener or the terminal received.
struct Arrival {
    query: String,
    /// For the browser: whether to show the success page.
    reply: Option<oneshot::Sender<bool>>,
}

/// Everything read and checked before a person is asked anything.
struct Prepared {
    target: String,
    credential: OAuthCredential,
    credentials: Api<OAuthCredential>,
    token_endpoint: TokenEndpoint,
    authorization_endpoint: Url,
    client: ClientCredentials,
    store: Store,
}

pub async fn run(client: Client, options: Options) -> Result<(), Error> {
    let prepared = prepare(client, &options).await?;
    let listener = TcpListener::bind(("127.0.0.1", options.port))
        .await
        .map_err(|e| Error::Listen(options.port, e))?;
    let redirect_uri = format!(
        "http://127.0.0.1:{}/",
        listener
            .local_addr()
            .map_err(|e| Error::Listen(options.port, e))?
            .port()
    );
    let pkce = Pkce::generate();
    let state = consent::new_state();
    let (arrivals, mut arrived) = mpsc::channel::<Arrival>(4);
    let server = tokio::spawn(serve_redirect(listener, arrivals.clone()));
    read_pasted_addresses(arrivals, redirect_uri.clone());
    offer_consent(&prepared, &options, &redirect_uri, &state, &pkce);

    let arrival = next_redirect(&mut arrived, &state, options.timeout).await?;
    let outcome = exchange_and_store(
        &prepared,
        &options,
        &arrival.query,
        &state,
        &pkce,
        &redirect_uri,
    )
    .await;
    if let Some(reply) = arrival.reply {
        let _ = reply.send(outcome.is_ok());
    }
    // Give the browser its page before the listener goes away.
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.abort();
    let granted = outcome?;

    eprintln!(
        "Consent given{}. Stored the refresh token in Secret {}/{} (key {}); the operator seals it.",
        granted
            .map(|scopes| format!(" for {scopes}"))
            .unwrap_or_default(),
        options.namespace,
        prepared.store.name,
        prepared.store.key
    );
    let requested = force_refresh::new_value();
    force_refresh::request(&prepared.credentials, &options.name, &requested, false)
        .await
        .map_err(|e| {
            let context = format!(
                "the refresh token is stored, but asking the operator to refresh {} failed",
                prepared.target
            );
            ApiError::new(context, e)
        })?;
    if options.wait.is_zero() {
        println!(
            "{}: refresh token stored; the operator refreshes with it next",
            prepared.target
        );
        return Ok(());
    }
    eprintln!(
        "Asked the operator to refresh with it; waiting up to {}.",
        short(options.wait.as_secs() as i64)
    );
    wait_for_refresh(&prepared.credentials, &options, &requested).await
}

/// Reads the credential and its client, and tries both writes as dry runs.
async fn prepare(client: Client, options: &Options) -> Result<Prepared, Error> {
    let target = format!("{}/{}", options.namespace, options.name);
    let credentials: Api<OAuthCredential> = Api::namespaced(client.clone(), &options.namespace);
    let credential = credentials
        .get_opt(&options.name)
        .await
        .map_err(|e| ApiError::new(format!("cannot read OAuthCredential {target}"), e))?
        .ok_or_else(|| Error::NotFound {
            target: target.clone(),
            namespace: options.namespace.clone(),
        })?;
    let credential = admitted(&credentials, credential, options, &target).await?;
    let spec = &credential.spec;
    let allow_http = options.allow_insecure_loopback_http;
    let endpoint_error = |source| Error::Endpoint {
        target: target.clone(),
        source,
    };
    let token_endpoint =
        TokenEndpoint::from_provider(&spec.provider, allow_http).map_err(endpoint_error)?;
    let authorization_endpoint =
        endpoint::authorization_endpoint(&spec.provider, allow_http).map_err(endpoint_error)?;
    let secrets: Api<Secret> = Api::namespaced(client, &options.namespace);
    let client_secret_name = &spec.client_secret_ref.name;
    let client_secret = secrets.get_opt(client_secret_name).await.map_err(|e| {
        let context = format!(
            "cannot read the client Secret {}/{client_secret_name}",
            options.namespace
        );
        ApiError::new(context, e)
    })?;
    let client =
        input_secrets::client_credentials(client_secret.as_ref(), &spec.client_secret_ref)?;
    let store = Store {
        secrets,
        name: spec.refresh_token_secret_ref.name.clone(),
        key: spec.refresh_token_secret_ref.key.clone(),
        namespace: options.namespace.clone(),
    };
    // Before a person is asked anything: is the refresh-token Secret one the
    // operator uses, and would both writes be accepted?
    let refresh_secret = store
        .secrets
        .get_opt(&store.name)
        .await
        .map_err(|e| ApiError::new(store.context(), e))?;
    if let Some(secret) = &refresh_secret {
        require_input(secret, InputKind::RefreshToken, options)?;
    }
    store
        .write(&SecretString::from("dry-run"), None, true)
        .await
        .map_err(Error::WouldFail)?;
    force_refresh::request(&credentials, &options.name, "dry-run", true)
        .await
        .map_err(|e| {
            let context = format!(
                "cannot annotate OAuthCredential {target} to ask for a refresh; nothing was asked of anyone"
            );
            ApiError::new(context, e)
        })?;
    Ok(Prepared {
        target,
        credential,
        credentials,
        token_endpoint,
        authorization_endpoint,
        client,
        store,
    })
}

/// Reasons with which the operator refuses a credential before using any of
/// its Secrets or endpoints.
const REFUSALS: [&str; 5] = [
    reason::NAMESPACE_NOT_SERVED,
    reason::OUTPUT_NAME_IN_USE,
    reason::ENDPOINT_NOT_ALLOWED,
    reason::INVALID_TOKEN_ENDPOINT,
    reason::REFRESH_TOKEN_SECRET_SHARED,
];
/// How long to wait for the operator to check a credential's current spec.
const ADMISSION_WAIT: Duration = Duration::from_secs(10);

/// The credential once the operator has checked its current spec and not
/// refused it. A generic provider's endpoints come from the spec, which
/// whoever may edit the credential controls: the client secret and the
/// authorization code go to them only once the operator, which knows the
/// platform's allowlist, has admitted them. Google's endpoints are fixed.
async fn admitted(
    credentials: &Api<OAuthCredential>,
    mut credential: OAuthCredential,
    options: &Options,
    target: &str,
) -> Result<OAuthCredential, Error> {
    let deadline = tokio::time::Instant::now() + ADMISSION_WAIT;
    loop {
        let generation = credential.metadata.generation.unwrap_or(0);
        let status = credential.status.clone().unwrap_or_default();
        if let Some(failure) = status
            .last_failure
            .as_ref()
            .filter(|f| status.failed_attempts > 0 && REFUSALS.contains(&f.reason.as_str()))
            && status.observed_generation == Some(generation)
        {
            return Err(Error::Refused {
                target: target.into(),
                reason: failure.reason.clone(),
                message: failure.message.clone(),
            });
        }
        let checked = status.observed_generation == Some(generation);
        if checked || credential.spec.provider.google.is_some() {
            return Ok(credential);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::NotChecked {
                target: target.into(),
                generation,
                waited: short(ADMISSION_WAIT.as_secs() as i64),
                namespace: options.namespace.clone(),
            });
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        credential = credentials
            .get_opt(&options.name)
            .await
            .map_err(|e| ApiError::new(format!("cannot read OAuthCredential {target}"), e))?
            .ok_or_else(|| Error::NotFound {
                target: target.into(),
                namespace: options.namespace.clone(),
            })?;
    }
}

/// Refuses a Secret that did not opt in as `kind`.
fn require_input(secret: &Secret, kind: InputKind, options: &Options) -> Result<(), Error> {
    if kind.accepts(secret) {
        return Ok(());
    }
    Err(Error::NotAnInput(Box::new(NotAnInput {
        namespace: options.namespace.clone(),
        secret: secret.metadata.name.clone().unwrap_or_default(),
        noun: kind.noun(),
        actual: secret.type_.clone().unwrap_or_else(|| "Opaque".into()),
        program: options.program.clone(),
        credential: options.name.clone(),
    })))
}

/// Opens (or prints) the consent page and says what to do.
fn offer_consent(
    prepared: &Prepared,
    options: &Options,
    redirect_uri: &str,
    state: &str,
    pkce: &Pkce,
) {
    let spec = &prepared.credential.spec;
    let url = consent::authorization_url(&consent::Request {
        endpoint: &prepared.authorization_endpoint,
        google: spec.provider.google.is_some(),
        client_id: &prepared.client.client_id,
        redirect_uri,
        scopes: &spec.scopes,
        state,
        code_challenge: pkce.challenge(),
    });
    let target = &prepared.target;
    if !options.no_browser && open_browser(url.as_str()) {
        eprintln!(
            "Opened the consent page for {target} in your browser. If it did not appear, open:\n"
        );
    } else {
        eprintln!(
            "Open this address in a browser and sign in with the account that grants access for {target}:\n"
        );
    }
    eprintln!("  {url}\n");
    eprintln!(
        "Waiting up to {} for consent. If the browser runs on another machine, it ends on an \
         address starting with {redirect_uri} that does not load there: copy that whole \
         address and paste it here, then press Enter.",
        short(options.timeout.as_secs() as i64)
    );
}

/// The first redirect (from the browser or pasted) that carries this
/// request's `state`. One with another `state` (a stray request, another
/// tab, a forgery) is refused and the wait goes on: it cannot end a consent
/// it does not belong to.
async fn next_redirect(
    arrived: &mut mpsc::Receiver<Arrival>,
    state: &str,
    timeout: Duration,
) -> Result<Arrival, Error> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let arrival = tokio::time::timeout_at(deadline, arrived.recv())
            .await
            .map_err(|_| Error::NoConsent(short(timeout.as_secs() as i64)))?
            .ok_or(Error::ListenerStopped)?;
        if !matches!(
            consent::read_redirect(&arrival.query, state),
            Err(ConsentError::StateMismatch)
        ) {
            return Ok(arrival);
        }
        eprintln!(
            "Ignored a redirect: {}. Still waiting for consent.",
            ConsentError::StateMismatch
        );
        if let Some(reply) = arrival.reply {
            let _ = reply.send(false);
        }
    }
}

/// Checks the redirect, exchanges the code, checks the answer, and only
/// then stores the refresh token. Returns the granted scopes.
async fn exchange_and_store(
    prepared: &Prepared,
    options: &Options,
    query: &str,
    state: &str,
    pkce: &Pkce,
    redirect_uri: &str,
) -> Result<Option<String>, Error> {
    let code = consent::read_redirect(query, state)?;
    let token_client = TokenClient::new(&TokenClientConfig {
        allow_insecure_loopback_http: options.allow_insecure_loopback_http,
        ..Default::default()
    })?;
    let token = token_client
        .exchange_code(
            &prepared.token_endpoint,
            &prepared.client,
            &code,
            pkce.verifier(),
            redirect_uri,
            Timestamp::now,
        )
        .await
        .map_err(|failure| Error::CodeRejected {
            reason: failure.reason,
            provider: failure.provider.summary(),
        })?;
    let refresh_token = token.refresh_token.ok_or(ConsentError::NoRefreshToken)?;
    let spec = &prepared.credential.spec;
    let google = spec.provider.google.is_some();
    let missing = consent::missing_scopes(&spec.scopes, token.scope.as_deref(), google);
    if !missing.is_empty() {
        return Err(ConsentError::MissingScopes(missing).into());
    }
    // A time-limited grant says when it ends: kept on the Secret, so that the
    // operator warns before then even if refreshes do not repeat it.
    let grant_expiry = token.refresh_token_expires_in.and_then(|lifetime| {
        let lifetime = k8s_openapi::jiff::SignedDuration::try_from(lifetime).ok()?;
        Timestamp::now().checked_add(lifetime).ok()
    });
    prepared
        .store
        .write(&refresh_token, grant_expiry, false)
        .await
        .map_err(|e| Error::NotStored(e.redacted(refresh_token.expose_secret())))?;
    // Shown to the person: provider text, so made printable first.
    Ok(token.scope.as_deref().and_then(crate::classify::clean_str))
}

/// Waits until the operator has acted on the force-refresh value `requested`
/// and reports what came of it.
async fn wait_for_refresh(
    credentials: &Api<OAuthCredential>,
    options: &Options,
    requested: &str,
) -> Result<(), Error> {
    let target = format!("{}/{}", options.namespace, options.name);
    let client = credentials.clone().into_client();
    let mut seen = force_refresh::wait_for(
        &client,
        std::slice::from_ref(&target),
        requested,
        options.wait,
    )
    .await
    .map_err(|e| {
        ApiError::new(
            format!("the refresh token is stored, but reading {target} failed"),
            e,
        )
    })?;
    let credential = seen
        .remove(&target)
        .ok_or_else(|| Error::NotActedOn {
            wait: short(options.wait.as_secs() as i64),
            namespace: options.namespace.clone(),
            name: options.name.clone(),
        })?
        .ok_or_else(|| Error::Deleted(target.clone()))?;
    report_refresh(credential, options, &target)
}

/// Success when the operator's refresh with the new token left it Ready.
fn report_refresh(
    credential: OAuthCredential,
    options: &Options,
    target: &str,
) -> Result<(), Error> {
    let status = credential.status.unwrap_or_default();
    match status.condition(READY) {
        Some(ready) if ready.status == "True" && status.failed_attempts == 0 => {
            let expires = status
                .expires_at
                .map(|t| {
                    let left = t.0.duration_since(Timestamp::now()).as_secs();
                    format!("; the access token expires at {} (in {})", t.0, short(left))
                })
                .unwrap_or_default();
            println!(
                "{target} is Ready: the operator refreshed with the new refresh token{expires}"
            );
            Ok(())
        }
        _ => Err(Error::RefreshFailed {
            failure: status
                .last_failure
                .map(|f| format!("{}: {}", f.reason, f.message))
                .unwrap_or_else(|| "no failure recorded".into()),
            program: options.program.clone(),
            namespace: options.namespace.clone(),
        }),
    }
}

/// The refresh-token Secret, where the new token goes.
struct Store {
    secrets: Api<Secret>,
    namespace: String,
    name: String,
    key: String,
}

impl Store {
    fn context(&self) -> String {
        format!(
            "the refresh token cannot be stored in Secret {}/{}",
            self.namespace, self.name
        )
    }

    /// Puts `token` in plain text under the key (the operator seals it on
    /// sight) and removes a sealed value of an earlier token; other keys are
    /// kept. Creates the Secret when it does not exist. Guarded by the
    /// `resourceVersion` read just before, retried on conflict.
    async fn write(
        &self,
        token: &SecretString,
        expires_at: Option<Timestamp>,
        dry_run: bool,
    ) -> Result<(), ApiError> {
        let params = PostParams {
            dry_run,
            field_manager: Some(FIELD_MANAGER.into()),
        };
        let context = || {
            format!(
                "the refresh token cannot be stored in Secret {}/{}",
                self.namespace, self.name
            )
        };
        let current = self
            .secrets
            .get_opt(&self.name)
            .await
            .map_err(|e| ApiError::new(context(), e))?;
        let stored =
            refresh_token_store::write(&self.secrets, &self.name, &params, current, 5, |read| {
                let mut secret = input_secrets::with_new_token(read, &self.name, &self.key, token);
                let annotations = secret
                    .metadata
                    .annotations
                    .get_or_insert_with(Default::default);
                match expires_at {
                    Some(at) => annotations.insert(
                        REFRESH_TOKEN_EXPIRES_AT_ANNOTATION.into(),
                        schedule::whole_seconds(at).to_string(),
                    ),
                    None => annotations.remove(REFRESH_TOKEN_EXPIRES_AT_ANNOTATION),
                };
                Some(secret)
            })
            .await;
        match stored {
            Ok(_) => Ok(()),
            Err(StoreError::Kube(e)) => Err(ApiError::new(context(), e)),
            Err(conflicts @ StoreError::Conflicts(_)) => {
                Err(ApiError::other(context(), &conflicts))
            }
        }
    }
}

/// Serves the redirect on `listener` until aborted: the first request to `/`
/// that looks like an OAuth redirect is handed over; the browser gets a page
/// saying how it went. Other requests (a favicon, say) get 404.
async fn serve_redirect(listener: TcpListener, arrivals: mpsc::Sender<Arrival>) {
    use axum::extract::State;
    use axum::http::{StatusCode, Uri};
    use axum::response::{Html, IntoResponse, Response};

    async fn redirect(State(arrivals): State<mpsc::Sender<Arrival>>, uri: Uri) -> Response {
        let query = uri.query().unwrap_or_default();
        if uri.path() != "/" || !consent::looks_like_redirect(query) {
            return (StatusCode::NOT_FOUND, "not the OAuth redirect").into_response();
        }
        let (reply, outcome) = oneshot::channel();
        let arrival = Arrival {
            query: query.to_string(),
            reply: Some(reply),
        };
        if arrivals.send(arrival).await.is_err() {
            return (StatusCode::GONE, "this authorization is already over").into_response();
        }
        // Fixed texts only: nothing from the request is reflected.
        let page = match outcome.await {
            Ok(true) => {
                "Consent received and the refresh token stored. You can close this tab; \
                         the terminal shows the rest."
            }
            _ => "Authorization failed. The terminal says why; nothing was stored.",
        };
        Html(format!(
            "<!doctype html><meta charset=utf-8><title>oauth-token-operator</title><p>{page}</p>"
        ))
        .into_response()
    }

    let app = axum::Router::new().fallback(redirect).with_state(arrivals);
    let _ = axum::serve(listener, app).await;
}

/// Reads addresses a person pastes into the terminal. A plain thread: a
/// blocking read of stdin must not hold up the runtime's shutdown.
fn read_pasted_addresses(arrivals: mpsc::Sender<Arrival>, redirect_uri: String) {
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            let Ok(line) = line else { return };
            if line.trim().is_empty() {
                continue;
            }
            match consent::pasted_query(&line) {
                Some(query) => {
                    let arrival = Arrival { query, reply: None };
                    if arrivals.blocking_send(arrival).is_err() {
                        return;
                    }
                }
                None => eprintln!(
                    "That is not the address the browser ended on; paste the whole address, \
                     starting with {redirect_uri}"
                ),
            }
        }
    });
}

/// Opens `url` in the person's browser: `$BROWSER`, else the platform's
/// opener (xdg-open and the desktops' own, WSL's Windows browser, macOS
/// `open`, Windows' default). Whether one started; the address is printed
/// either way.
fn open_browser(url: &str) -> bool {
    webbrowser::open(url).is_ok()
}
