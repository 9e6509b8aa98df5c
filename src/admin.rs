//! The admin HTTP server: `/metrics` (OpenMetrics text), `/livez` and
//! `/readyz`. It serves no token and no Secret data.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::clock::SharedClock;
use crate::metrics::Metrics;

/// Readiness: caches synced (leader), or leadership known (standby); and no
/// watch failing for longer than the grace. Liveness: the controller is not
/// stalled (see `stalled`).
pub struct Health {
    ready: AtomicBool,
    clock: SharedClock,
    /// How long a watch may keep failing before the replica reports unready.
    watch_failure_grace: Duration,
    /// Watches failing now, and since when.
    failing: Mutex<HashMap<&'static str, Instant>>,
    /// How long the controller may go without finishing a reconcile while a
    /// credential is due before `/livez` fails; zero never fails.
    stall_timeout: Duration,
    progress: Mutex<Progress>,
}

/// What liveness is judged on, on the monotonic clock.
#[derive(Clone, Copy, Debug)]
struct Progress {
    /// When a reconcile last finished (or the controller started).
    last: Instant,
    /// Since when the earliest due credential has been due; `None` while no
    /// controller runs here or nothing is due.
    due_since: Option<Instant>,
}

/// Why `/livez` fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stalled {
    /// Since the last finished reconcile.
    pub idle: Duration,
    /// How long the earliest due credential has been due.
    pub due_for: Duration,
}

impl Health {
    pub fn new(clock: SharedClock, watch_failure_grace: Duration, stall_timeout: Duration) -> Self {
        let progress = Progress {
            last: clock.instant(),
            due_since: None,
        };
        Self {
            ready: AtomicBool::new(false),
            clock,
            watch_failure_grace,
            failing: Mutex::new(HashMap::new()),
            stall_timeout,
            progress: Mutex::new(progress),
        }
    }

    /// A reconcile finished (whatever its result: a controller that keeps
    /// finishing reconciles is not stuck, and a restart would not help it).
    pub fn reconciled(&self) {
        self.progress.lock().expect("health lock").last = self.clock.instant();
    }

    /// The controller starts or stops: the stall clock starts afresh, and
    /// nothing is due until the cache says so (a standby has no work due).
    pub fn restart_stall_clock(&self) {
        let mut progress = self.progress.lock().expect("health lock");
        progress.last = self.clock.instant();
        progress.due_since = None;
    }

    /// How long the earliest due credential has been due (`None`: none is).
    pub fn set_overdue(&self, overdue: Option<Duration>) {
        let now = self.clock.instant();
        let mut progress = self.progress.lock().expect("health lock");
        progress.due_since = overdue.map(|by| now.checked_sub(by).unwrap_or(now));
    }

    /// Stalled: a credential has been due for longer than the stall timeout
    /// and no reconcile has finished within it. (A long start-up pass or a
    /// rate limit keeps finishing reconciles; a hung call or a deadlock does
    /// not.)
    pub fn stalled(&self) -> Option<Stalled> {
        if self.stall_timeout.is_zero() {
            return None;
        }
        let now = self.clock.instant();
        let progress = *self.progress.lock().expect("health lock");
        let due_for = now.saturating_duration_since(progress.due_since?);
        let idle = now.saturating_duration_since(progress.last);
        (due_for > self.stall_timeout && idle > self.stall_timeout)
            .then_some(Stalled { idle, due_for })
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    /// Records one result of the watch `name`: an error starts (or continues)
    /// a failing streak, anything else ends it.
    pub fn observe_watch(&self, name: &'static str, ok: bool) {
        let mut failing = self.failing.lock().expect("health lock");
        if ok {
            failing.remove(name);
        } else if !failing.contains_key(name) {
            warn!(watch = name, "watch failing; retrying with backoff");
            failing.insert(name, self.clock.instant());
        }
    }

    /// The watch failing for longest, if longer than the grace.
    pub fn failing_watch(&self) -> Option<&'static str> {
        let now = self.clock.instant();
        let failing = self.failing.lock().expect("health lock");
        failing
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) > self.watch_failure_grace)
            .min_by_key(|(_, since)| **since)
            .map(|(name, _)| *name)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.failing_watch().is_none()
    }
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

/// The admin server, bound and not yet serving.
pub struct Admin {
    listener: TcpListener,
    address: SocketAddr,
}

impl Admin {
    /// Binds `address` (port 0 picks a free port).
    pub async fn bind(address: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(address).await?;
        let address = listener.local_addr()?;
        Ok(Self { listener, address })
    }

    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Serves until the process ends; returns only on an error.
    pub async fn serve(self, metrics: Arc<Metrics>, health: Arc<Health>) -> std::io::Result<()> {
        let app = Router::new()
            .route("/metrics", get(metrics_text))
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .with_state(AdminState { metrics, health });
        info!(address = %self.address, "admin server listening");
        axum::serve(self.listener, app).await
    }
}

/// The body is OpenMetrics text (prometheus-client writes nothing else), so
/// it says so: served as `text/plain; version=0.0.4`, Prometheus parses it
/// with the older format's rules and counters lose their HELP and TYPE.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
}

async fn livez(State(state): State<AdminState>) -> impl IntoResponse {
    match state.health.stalled() {
        None => (StatusCode::OK, "ok".to_string()),
        Some(stalled) => {
            let message = format!(
                "stalled: no reconcile finished for {} s while a credential has been due for {} s",
                stalled.idle.as_secs(),
                stalled.due_for.as_secs()
            );
            warn!("{message}; /livez fails so that the replica is restarted");
            (StatusCode::SERVICE_UNAVAILABLE, message)
        }
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if let Some(watch) = state.health.failing_watch() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the {watch} watch keeps failing"),
        );
    }
    if state.health.is_ready() {
        (StatusCode::OK, "ok".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: caches not synced or leadership not known yet".to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn a_watch_failing_longer_than_the_grace_makes_the_replica_unready() {
        let clock = Arc::new(ManualClock::new("2026-11-21T19:00:00Z".parse().unwrap()));
        let health = Health::new(clock.clone(), Duration::from_secs(60), Duration::ZERO);
        health.set_ready(true);
        health.observe_watch("credentials", false);
        clock.advance(Duration::from_secs(30));
        health.observe_watch("credentials", false);
        assert!(health.is_ready(), "within the grace");
        clock.advance(Duration::from_secs(31));
        assert!(!health.is_ready());
        assert_eq!(health.failing_watch(), Some("credentials"));
        health.observe_watch("credentials", true);
        assert!(health.is_ready(), "a success ends the streak");
    }

    #[test]
    fn livez_fails_only_when_work_is_due_and_nothing_finishes_for_the_stall_timeout() {
        let clock = Arc::new(ManualClock::new("2026-11-21T19:00:00Z".parse().unwrap()));
        let health = Health::new(
            clock.clone(),
            Duration::from_secs(60),
            Duration::from_secs(300),
        );
        health.restart_stall_clock();
        clock.advance(Duration::from_secs(600));
        assert_eq!(health.stalled(), None, "idle, but nothing is due");
        health.set_overdue(Some(Duration::from_secs(200)));
        assert_eq!(health.stalled(), None, "due for 200 s only");
        clock.advance(Duration::from_secs(101));
        assert_eq!(
            health.stalled(),
            Some(Stalled {
                idle: Duration::from_secs(701),
                due_for: Duration::from_secs(301),
            })
        );
        health.reconciled();
        assert_eq!(health.stalled(), None, "a finished reconcile is progress");
        clock.advance(Duration::from_secs(301));
        assert!(health.stalled().is_some(), "and then none for 301 s");
        health.set_overdue(None);
        assert_eq!(health.stalled(), None, "nothing due any more");
        health.set_overdue(Some(Duration::from_secs(3600)));
        health.restart_stall_clock();
        assert_eq!(health.stalled(), None, "no controller here: a standby");
        let never = Health::new(clock.clone(), Duration::from_secs(60), Duration::ZERO);
        never.set_overdue(Some(Duration::from_secs(3600)));
        clock.advance(Duration::from_secs(3600));
        assert_eq!(never.stalled(), None, "a zero timeout never fails");
    }
}
