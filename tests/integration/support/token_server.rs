//! A real OAuth 2.0 token endpoint on 127.0.0.1 for tests: it checks the
//! client, honours refresh tokens it issued, optionally rotates them (and, like
//! standard servers, revokes the whole grant when a rotated token is replayed),
//! and can be told to answer the next requests with scripted responses.
//! It records every call and every token it issued, so tests can count calls
//! and search the operator's output for leaked tokens.
//!
//! It serves plain http on a loopback port (`start`), or https with a
//! certificate from a test CA on any address the test chooses
//! (`start_https`), for example the local node's bridge address.
//!
//! It is also the authorization server for `authorize`: `GET /authorize`
//! checks the request (PKCE S256 required) and redirects like a browser
//! would be redirected after consent (or refusal, see `Consent`), and the
//! token endpoint exchanges the code once, checking the verifier and the
//! redirect URI.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use tokio::net::TcpListener;

use super::tls::{ServerCert, TlsListener};

pub const CLIENT_ID: &str = "test-client.apps.example";
/// Reserved characters on purpose: HTTP Basic must form-encode them first
/// (RFC 6749 §2.3.1), and the server decodes them.
pub const CLIENT_SECRET: &str = "test:client+secret/value%2F=&x";

/// A canned answer for the next request.
#[derive(Clone, Debug)]
pub struct Scripted {
    pub status: u16,
    pub body: String,
    pub content_type: &'static str,
    pub retry_after: Option<String>,
    pub location: Option<String>,
    pub delay: Duration,
}

impl Scripted {
    pub fn json(status: u16, body: &str) -> Self {
        Self {
            status,
            body: body.into(),
            content_type: "application/json",
            retry_after: None,
            location: None,
            delay: Duration::ZERO,
        }
    }
    pub fn html(status: u16, body: &str) -> Self {
        Self {
            status,
            body: body.into(),
            content_type: "text/html",
            retry_after: None,
            location: None,
            delay: Duration::ZERO,
        }
    }
    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.into());
        self
    }
    pub fn redirect_to(mut self, location: &str) -> Self {
        self.location = Some(location.into());
        self
    }
    pub fn delayed(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// How the next consents go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Consent {
    /// Grant every requested scope, with a refresh token.
    #[default]
    Grant,
    /// The person refuses: redirect with `error=access_denied`.
    Deny,
    /// Grant only these scopes (space-separated), as when a person unticks
    /// a box on Google's consent page.
    GrantOnly(String),
    /// Grant, but answer the code exchange without a refresh token.
    WithoutRefreshToken,
}

/// A code issued by `/authorize`, waiting for its exchange.
#[derive(Clone, Debug)]
struct IssuedCode {
    challenge: String,
    redirect_uri: String,
    scope: String,
    refresh_token: bool,
}

/// One request the server received.
#[derive(Clone, Debug)]
pub struct Call {
    pub at: SystemTime,
    pub grant_type: String,
    pub refresh_token: String,
    pub status: u16,
    /// The grant the presented refresh token belongs to, if it is known.
    pub grant: Option<u64>,
}

#[derive(Default)]
struct Inner {
    lifetime_secs: u64,
    rotate: bool,
    scope: String,
    /// Refresh tokens that currently work.
    live: HashSet<String>,
    /// Rotated-away tokens and when; presenting one revokes its whole grant,
    /// unless within `reuse_grace` of its rotation.
    retired: std::collections::HashMap<String, std::time::Instant>,
    revoked_grants: u32,
    /// Like the reuse interval or rotation grace period of real providers
    /// (Auth0, Okta, Keycloak): a rotated-away token still works this long.
    /// Zero (the default) is strict.
    reuse_grace: Duration,
    /// For each accepted reuse: how long after its rotation it came.
    reuses: Vec<Duration>,
    /// Refresh token → the grant it belongs to (rotation keeps the grant).
    grants: std::collections::HashMap<String, u64>,
    scripted: VecDeque<Scripted>,
    /// Answer every token request with an error that repeats the request.
    echo: bool,
    /// Send the refresh token back unchanged in every success.
    echo_refresh_token: bool,
    /// Never answer a token request (the connection stays open).
    black_hole: bool,
    calls: Vec<Call>,
    issued: Vec<String>,
    consent: Consent,
    codes: std::collections::HashMap<String, IssuedCode>,
    /// Query parameters of every authorization request.
    authorization_requests: Vec<Vec<(String, String)>>,
    /// Refresh tokens issued by code exchanges.
    consented: Vec<String>,
    /// `refresh_token_expires_in` to put in every success, as Google does
    /// for time-limited grants.
    refresh_token_expires_in: Option<u64>,
    /// Revocation requests (RFC 7009): the token each presented.
    revocations: Vec<String>,
    /// Revocation requests still to answer with 503.
    failing_revocations: u32,
}

#[derive(Clone)]
pub struct TokenServer {
    pub addr: SocketAddr,
    scheme: &'static str,
    inner: Arc<Mutex<Inner>>,
    counter: Arc<AtomicU64>,
    handshake_failures: Arc<AtomicU64>,
}

impl TokenServer {
    /// Starts a plain-http server on a loopback port issuing access tokens
    /// that live `lifetime`.
    pub async fn start(lifetime: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind token server");
        let server = Self::new(lifetime, listener.local_addr().unwrap(), "http");
        let app = server.app();
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("token server");
        });
        server
    }

    /// Starts an https server on `bind` (port 0: any free port) with the
    /// certificate `cert`.
    pub async fn start_https(lifetime: Duration, bind: SocketAddr, cert: &ServerCert) -> Self {
        let tcp = TcpListener::bind(bind)
            .await
            .unwrap_or_else(|e| panic!("bind the https token server on {bind}: {e}"));
        let server = Self::new(lifetime, tcp.local_addr().unwrap(), "https");
        let listener = TlsListener::new(tcp, cert.acceptor(), server.handshake_failures.clone());
        let app = server.app();
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("token server");
        });
        server
    }

    fn new(lifetime: Duration, addr: SocketAddr, scheme: &'static str) -> Self {
        TokenServer {
            addr,
            scheme,
            inner: Arc::new(Mutex::new(Inner {
                lifetime_secs: lifetime.as_secs(),
                scope: "https://www.googleapis.com/auth/gmail.send".into(),
                ..Default::default()
            })),
            counter: Arc::new(AtomicU64::new(1)),
            handshake_failures: Arc::new(AtomicU64::new(0)),
        }
    }

    fn app(&self) -> Router {
        Router::new()
            .route("/token", post(token))
            .route("/revoke", post(revoke))
            .route("/authorize", axum::routing::get(authorize))
            .with_state(self.clone())
    }

    pub fn url(&self) -> String {
        format!("{}://{}/token", self.scheme, self.addr)
    }

    pub fn revocation_url(&self) -> String {
        format!("{}://{}/revoke", self.scheme, self.addr)
    }

    /// Puts `refresh_token_expires_in` (seconds) in every success from now.
    pub fn refresh_token_expires_in(&self, seconds: Option<u64>) {
        self.inner.lock().unwrap().refresh_token_expires_in = seconds;
    }

    /// Answers the next `count` revocation requests with 503.
    pub fn fail_revocations(&self, count: u32) {
        self.inner.lock().unwrap().failing_revocations = count;
    }

    /// The token of every revocation request so far.
    pub fn revocations(&self) -> Vec<String> {
        self.inner.lock().unwrap().revocations.clone()
    }

    /// Whether a refresh token still works.
    pub fn is_live(&self, refresh_token: &str) -> bool {
        self.inner.lock().unwrap().live.contains(refresh_token)
    }

    pub fn authorization_url(&self) -> String {
        format!("{}://{}/authorize", self.scheme, self.addr)
    }

    /// Access tokens issued from now on live `lifetime`.
    pub fn set_lifetime(&self, lifetime: Duration) {
        self.inner.lock().unwrap().lifetime_secs = lifetime.as_secs();
    }

    /// TLS handshakes that failed or timed out (https only).
    pub fn handshake_failures(&self) -> u64 {
        self.handshake_failures.load(Ordering::Relaxed)
    }

    /// How the next consents go.
    pub fn consent(&self, consent: Consent) {
        self.inner.lock().unwrap().consent = consent;
    }

    /// Query parameters of every authorization request so far.
    pub fn authorization_requests(&self) -> Vec<Vec<(String, String)>> {
        self.inner.lock().unwrap().authorization_requests.clone()
    }

    /// Refresh tokens issued in exchange for a code, oldest first.
    pub fn consented_refresh_tokens(&self) -> Vec<String> {
        self.inner.lock().unwrap().consented.clone()
    }

    /// Turns refresh-token rotation on: every success returns a new refresh
    /// token and retires the presented one.
    pub fn rotate(&self, on: bool) {
        self.inner.lock().unwrap().rotate = on;
    }

    /// Issues a new grant and returns its refresh token.
    pub fn new_grant(&self) -> String {
        let token = self.fresh("rt");
        let grant = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut inner = self.inner.lock().unwrap();
        inner.live.insert(token.clone());
        inner.grants.insert(token.clone(), grant);
        token
    }

    /// Revokes every refresh token issued so far.
    pub fn revoke_all(&self) {
        self.inner.lock().unwrap().live.clear();
    }

    /// Revokes a refresh token: the next use gets `invalid_grant`.
    pub fn revoke(&self, refresh_token: &str) {
        self.inner.lock().unwrap().live.remove(refresh_token);
    }

    /// Makes every token request fail with an error whose description
    /// repeats the request (body and Authorization header), as some servers
    /// do, wrapped in a right-to-left override.
    pub fn echo(&self, on: bool) {
        self.inner.lock().unwrap().echo = on;
    }

    /// Makes every success carry the same refresh token back, unchanged, as
    /// some servers do: not a rotation.
    pub fn echo_refresh_token(&self, on: bool) {
        self.inner.lock().unwrap().echo_refresh_token = on;
    }

    /// Makes the endpoint never answer: requests are read and held.
    pub fn black_hole(&self, on: bool) {
        self.inner.lock().unwrap().black_hole = on;
    }

    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) {
        self.inner.lock().unwrap().scripted.extend(answers);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    pub fn call_count(&self) -> usize {
        self.inner.lock().unwrap().calls.len()
    }

    /// Accept a rotated-away token for this long after its rotation.
    pub fn allow_reuse_within(&self, grace: Duration) {
        self.inner.lock().unwrap().reuse_grace = grace;
    }

    /// How long after its rotation each accepted reuse came.
    pub fn reuses(&self) -> Vec<Duration> {
        self.inner.lock().unwrap().reuses.clone()
    }

    pub fn revoked_grants(&self) -> u32 {
        self.inner.lock().unwrap().revoked_grants
    }

    /// Every access and refresh token this server handed out.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.inner.lock().unwrap().issued.clone()
    }

    fn fresh(&self, prefix: &str) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let token = format!(
            "{prefix}-{n}-{nanos:09}-{:016x}",
            ((n as u128 * 0x9e37_79b9_7f4a_7c15) ^ nanos as u128) as u64
        );
        self.inner.lock().unwrap().issued.push(token.clone());
        token
    }
}

fn form_field<'a>(form: &'a [(String, String)], key: &str) -> Option<&'a str> {
    form.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get("authorization")?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (id, secret) = text.split_once(':')?;
    let unescape = |s: &str| url_decode(s);
    Some((unescape(id), unescape(secret)))
}

fn url_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = format!(r#"{{"error":"{error}","error_description":"{description}"}}"#);
    (status, [("content-type", "application/json")], body).into_response()
}

async fn token(State(server): State<TokenServer>, headers: HeaderMap, body: String) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let refresh_token = form_field(&form, "refresh_token")
        .unwrap_or_default()
        .to_string();
    let grant_type = form_field(&form, "grant_type")
        .unwrap_or_default()
        .to_string();
    let (scripted, echo, black_hole) = {
        let mut inner = server.inner.lock().unwrap();
        (inner.scripted.pop_front(), inner.echo, inner.black_hole)
    };
    if black_hole {
        server.inner.lock().unwrap().calls.push(Call {
            at: SystemTime::now(),
            grant_type: grant_type.clone(),
            refresh_token: refresh_token.clone(),
            status: 0,
            grant: None,
        });
        std::future::pending::<()>().await;
    }
    let response = match scripted {
        Some(answer) => {
            tokio::time::sleep(answer.delay).await;
            let mut response = (
                StatusCode::from_u16(answer.status).unwrap(),
                [("content-type", answer.content_type)],
                answer.body,
            )
                .into_response();
            if let Some(retry_after) = answer.retry_after {
                response
                    .headers_mut()
                    .insert("retry-after", HeaderValue::from_str(&retry_after).unwrap());
            }
            if let Some(location) = answer.location {
                response
                    .headers_mut()
                    .insert("location", HeaderValue::from_str(&location).unwrap());
            }
            response
        }
        None if echo => echoed(&headers, &body),
        None if grant_type == "authorization_code" => exchange(&server, &headers, &form),
        None => answer(&server, &headers, &form, &refresh_token),
    };
    let mut inner = server.inner.lock().unwrap();
    let grant = inner.grants.get(&refresh_token).copied();
    inner.calls.push(Call {
        at: SystemTime::now(),
        grant_type,
        refresh_token,
        status: response.status().as_u16(),
        grant,
    });
    drop(inner);
    response
}

/// `POST /revoke` (RFC 7009): revokes the presented refresh token for a
/// known client; 200 also for an unknown token, as the RFC says.
async fn revoke(State(server): State<TokenServer>, headers: HeaderMap, body: String) -> Response {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let token = form_field(&form, "token").unwrap_or_default().to_string();
    let mut inner = server.inner.lock().unwrap();
    inner.revocations.push(token.clone());
    if inner.failing_revocations > 0 {
        inner.failing_revocations -= 1;
        return oauth_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "try later",
        );
    }
    drop(inner);
    if !client_is_known(&headers, &form) {
        return unknown_client();
    }
    server.inner.lock().unwrap().live.remove(&token);
    StatusCode::OK.into_response()
}

fn echoed(headers: &HeaderMap, body: &str) -> Response {
    let authorization = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    let decoded: Vec<String> = form.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    let answer = serde_json::json!({
        "error": "invalid_request",
        "error_description": format!(
            "\u{202e}bad request {body} ({}) {authorization}\u{200b}",
            decoded.join(", ")
        ),
        "error_subtype": form_field(&form, "refresh_token").unwrap_or("none"),
    });
    (
        StatusCode::BAD_REQUEST,
        [("content-type", "application/json")],
        answer.to_string(),
    )
        .into_response()
}

fn client_is_known(headers: &HeaderMap, form: &[(String, String)]) -> bool {
    let client = basic_credentials(headers).or_else(|| {
        Some((
            form_field(form, "client_id")?.to_string(),
            form_field(form, "client_secret")?.to_string(),
        ))
    });
    client == Some((CLIENT_ID.to_string(), CLIENT_SECRET.to_string()))
}

fn unknown_client() -> Response {
    oauth_error(
        StatusCode::UNAUTHORIZED,
        "invalid_client",
        "The OAuth client was not found.",
    )
}

/// `GET /authorize`: what the browser meets. Consent is immediate; the
/// answer is the redirect back to the client.
async fn authorize(
    State(server): State<TokenServer>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let params: Vec<(String, String)> =
        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
            .into_owned()
            .collect();
    let get = |key: &str| form_field(&params, key).unwrap_or_default().to_string();
    let consent = {
        let mut inner = server.inner.lock().unwrap();
        inner.authorization_requests.push(params.clone());
        inner.consent.clone()
    };
    let redirect_uri = get("redirect_uri");
    // An authorization server never redirects to an unchecked address.
    if get("client_id") != CLIENT_ID || !redirect_uri.starts_with("http://127.0.0.1:") {
        return (StatusCode::BAD_REQUEST, "unknown client or redirect_uri").into_response();
    }
    let mut back = url::Url::parse(&redirect_uri).unwrap();
    {
        let mut query = back.query_pairs_mut();
        if get("response_type") != "code"
            || get("code_challenge_method") != "S256"
            || get("code_challenge").len() < 43
        {
            query.append_pair("error", "invalid_request");
            query.append_pair("error_description", "PKCE S256 is required");
        } else if consent == Consent::Deny {
            query.append_pair("error", "access_denied");
            query.append_pair("error_description", "The user denied the request.");
        } else {
            let scope = match &consent {
                Consent::GrantOnly(scope) => scope.clone(),
                _ => get("scope"),
            };
            let code = server.fresh("code");
            server.inner.lock().unwrap().codes.insert(
                code.clone(),
                IssuedCode {
                    challenge: get("code_challenge"),
                    redirect_uri: redirect_uri.clone(),
                    scope: scope.clone(),
                    refresh_token: consent != Consent::WithoutRefreshToken,
                },
            );
            query.append_pair("code", &code);
            query.append_pair("scope", &scope);
        }
        query.append_pair("state", &get("state"));
    }
    (StatusCode::FOUND, [("location", back.to_string())]).into_response()
}

/// The authorization-code grant: each code once, for the verifier and the
/// redirect URI it was issued for.
fn exchange(server: &TokenServer, headers: &HeaderMap, form: &[(String, String)]) -> Response {
    if !client_is_known(headers, form) {
        return unknown_client();
    }
    let code = form_field(form, "code").unwrap_or_default();
    let Some(issued) = server.inner.lock().unwrap().codes.remove(code) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "unknown or used code",
        );
    };
    let verifier = form_field(form, "code_verifier").unwrap_or_default();
    let challenge = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        verifier.as_bytes(),
    ));
    if challenge != issued.challenge
        || form_field(form, "redirect_uri") != Some(issued.redirect_uri.as_str())
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "code_verifier or redirect_uri does not match",
        );
    }
    let (lifetime, grant_lifetime) = {
        let inner = server.inner.lock().unwrap();
        (inner.lifetime_secs, inner.refresh_token_expires_in)
    };
    let mut body = serde_json::json!({
        "access_token": server.fresh("at"),
        "expires_in": lifetime,
        "token_type": "Bearer",
        "scope": issued.scope,
    });
    if let Some(seconds) = grant_lifetime {
        body["refresh_token_expires_in"] = seconds.into();
    }
    if issued.refresh_token {
        let refresh_token = server.new_grant();
        server
            .inner
            .lock()
            .unwrap()
            .consented
            .push(refresh_token.clone());
        body["refresh_token"] = serde_json::Value::String(refresh_token);
    }
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn answer(
    server: &TokenServer,
    headers: &HeaderMap,
    form: &[(String, String)],
    refresh_token: &str,
) -> Response {
    if !client_is_known(headers, form) {
        return unknown_client();
    }
    if form_field(form, "grant_type") != Some("refresh_token") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "only refresh_token",
        );
    }
    let (rotate, lifetime, scope, echo_refresh_token, grant_lifetime) = {
        let mut inner = server.inner.lock().unwrap();
        let grant = inner.grants.get(refresh_token).copied();
        if let Some(retired_at) = inner.retired.get(refresh_token).copied() {
            // The grant's newer tokens are void either way.
            let grants = inner.grants.clone();
            inner.live.retain(|t| grants.get(t) != grant.as_ref());
            let since = retired_at.elapsed();
            if since > inner.reuse_grace {
                // Replay of a rotated token: revoke the whole grant.
                inner.revoked_grants += 1;
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "refresh token replayed; grant revoked",
                );
            }
            inner.reuses.push(since);
            inner.live.insert(refresh_token.to_string());
        }
        if !inner.live.contains(refresh_token) {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_grant",
                "Token has been expired or revoked.",
            );
        }
        (
            inner.rotate,
            inner.lifetime_secs,
            inner.scope.clone(),
            inner.echo_refresh_token,
            inner.refresh_token_expires_in,
        )
    };
    let access = server.fresh("at");
    let mut body = serde_json::json!({
        "access_token": access,
        "expires_in": lifetime,
        "token_type": "Bearer",
        "scope": scope,
    });
    if let Some(seconds) = grant_lifetime {
        body["refresh_token_expires_in"] = seconds.into();
    }
    if rotate {
        let next = server.fresh("rt");
        let mut inner = server.inner.lock().unwrap();
        inner.live.remove(refresh_token);
        inner
            .retired
            .insert(refresh_token.to_string(), std::time::Instant::now());
        inner.live.insert(next.clone());
        if let Some(grant) = inner.grants.get(refresh_token).copied() {
            inner.grants.insert(next.clone(), grant);
        }
        body["refresh_token"] = serde_json::Value::String(next);
    } else if echo_refresh_token {
        body["refresh_token"] = serde_json::Value::String(refresh_token.to_string());
    }
    (
        StatusCode::OK,
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response()
}
