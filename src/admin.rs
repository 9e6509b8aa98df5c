//! The admin HTTP server: `/metrics` (Prometheus text), `/livez` and
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
/// watch failing for longer than the grace.
pub struct Health {
    ready: AtomicBool,
    clock: SharedClock,
    /// How long a watch may keep failing before the replica reports unready.
    watch_failure_grace: Duration,
    /// Watches failing now, and since when.
    failing: Mutex<HashMap<&'static str, Instant>>,
}

impl Health {
    pub fn new(clock: SharedClock, watch_failure_grace: Duration) -> Self {
        Self {
            ready: AtomicBool::new(false),
            clock,
            watch_failure_grace,
            failing: Mutex::new(HashMap::new()),
        }
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
            .route("/livez", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .with_state(AdminState { metrics, health });
        info!(address = %self.address, "admin server listening");
        axum::serve(self.listener, app).await
    }
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.encode(),
    )
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
        let health = Health::new(clock.clone(), Duration::from_secs(60));
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
}
