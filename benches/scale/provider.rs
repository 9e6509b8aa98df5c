//! The benchmark's token endpoint on 127.0.0.1: it knows each credential's
//! refresh token, issues access tokens of a fixed lifetime, and records every
//! call with what the benchmark needs to judge it: when the operator had
//! scheduled it (from the credential's status, kept current by a watch) and
//! when the token it replaces expired. It also records when each TCP
//! connection was accepted, so that new connections per refresh can be told.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::serve::ListenerExt;
use tokio::net::TcpListener;

/// One token-endpoint call.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    /// Unix milliseconds when the call arrived.
    pub at: i64,
    pub credential: u32,
    /// `status.refreshAt` the operator had published for this call, in unix
    /// milliseconds; 0 when there was none (a first refresh, or a peer that
    /// publishes no schedule).
    pub scheduled: i64,
    /// When the token this call replaces expired; 0 for a first token.
    pub replaced_expiry: i64,
}

pub struct Provider {
    lifetime_secs: u64,
    /// Refresh token → credential index.
    index: HashMap<String, u32>,
    /// Per credential: `status.refreshAt` in unix ms (0: none yet).
    pub refresh_at: Vec<AtomicI64>,
    /// Per credential: expiry of the last token issued, unix ms (0: none).
    pub expiry: Vec<AtomicI64>,
    /// Per credential: whether its Ready condition is True (the operator's
    /// credentials), or its output Secret exists (the peer's).
    pub ready: Vec<AtomicBool>,
    /// Send the unchanged refresh token back in every success, as some
    /// providers do (it is no rotation, so it must cost no write).
    echo: AtomicBool,
    calls: Mutex<Vec<Call>>,
    /// Unix milliseconds of every TCP connection accepted.
    accepted: Arc<Mutex<Vec<i64>>>,
    counter: AtomicU64,
}

pub fn now_ms() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_millisecond()
}

/// The refresh token of credential `i`: unique, and fixed for a run.
pub fn refresh_token(i: usize) -> String {
    let seed = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!("bench-rt-{i}-{seed:016x}")
}

impl Provider {
    /// A provider for credentials `0..count`, whose refresh tokens are
    /// `refresh_token(i)`.
    pub fn new(count: usize, lifetime_secs: u64) -> Arc<Self> {
        Arc::new(Self {
            lifetime_secs,
            index: (0..count).map(|i| (refresh_token(i), i as u32)).collect(),
            refresh_at: (0..count).map(|_| AtomicI64::new(0)).collect(),
            expiry: (0..count).map(|_| AtomicI64::new(0)).collect(),
            ready: (0..count).map(|_| AtomicBool::new(false)).collect(),
            echo: AtomicBool::new(false),
            calls: Mutex::new(Vec::new()),
            accepted: Arc::new(Mutex::new(Vec::new())),
            counter: AtomicU64::new(0),
        })
    }

    /// Serves `POST /token`; returns the token endpoint's URL.
    pub async fn serve(self: &Arc<Self>) -> String {
        let accepted = self.accepted.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().unwrap();
        let listener = listener.tap_io(move |_| accepted.lock().unwrap().push(now_ms()));
        let app = axum::Router::new()
            .route("/token", axum::routing::post(token))
            .with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });
        format!("http://{address}/token")
    }

    pub fn set_echo(&self, echo: bool) {
        self.echo.store(echo, Ordering::Relaxed);
    }

    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// When each TCP connection was accepted (unix ms).
    pub fn accepted(&self) -> Vec<i64> {
        self.accepted.lock().unwrap().clone()
    }

    /// Whether every credential in `range` has its flag set.
    pub fn all_ready(&self, range: std::ops::Range<usize>) -> bool {
        self.ready[range].iter().all(|r| r.load(Ordering::Relaxed))
    }
}

async fn token(State(provider): State<Arc<Provider>>, body: String) -> Response {
    let at = now_ms();
    let refresh_token = url::form_urlencoded::parse(body.as_bytes())
        .find(|(k, _)| k == "refresh_token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let Some(&credential) = provider.index.get(&refresh_token) else {
        return (
            StatusCode::BAD_REQUEST,
            [("content-type", "application/json")],
            r#"{"error":"invalid_grant"}"#,
        )
            .into_response();
    };
    let i = credential as usize;
    let replaced_expiry =
        provider.expiry[i].swap(at + provider.lifetime_secs as i64 * 1000, Ordering::Relaxed);
    provider.calls.lock().unwrap().push(Call {
        at,
        credential,
        scheduled: provider.refresh_at[i].load(Ordering::Relaxed),
        replaced_expiry,
    });
    let n = provider.counter.fetch_add(1, Ordering::Relaxed);
    let echoed = if provider.echo.load(Ordering::Relaxed) {
        // The token is the benchmark's own (letters, digits, '-'): no JSON
        // escaping needed.
        format!(r#","refresh_token":"{refresh_token}""#)
    } else {
        String::new()
    };
    let body = format!(
        r#"{{"access_token":"bench-at-{credential}-{n}","expires_in":{},"token_type":"Bearer","scope":"https://www.googleapis.com/auth/gmail.send"{echoed}}}"#,
        provider.lifetime_secs
    );
    (StatusCode::OK, [("content-type", "application/json")], body).into_response()
}
