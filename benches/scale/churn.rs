//! The churn phase: with the run's own credentials deleted, credentials are
//! created (with their Secrets), refreshed once, and deleted again, round
//! after round. Whatever the operator keeps per credential, Secret or
//! endpoint must go with them: its RSS after each round should not climb, and
//! its `tracked_entries` gauges should all read 0 at the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::Client;

use crate::cluster::{self, Group};
use crate::operator;
use crate::provider::{Provider, now_ms};
use crate::sampler::Sampler;
use crate::say;

/// One round, or the deletion of the run's credentials before the rounds
/// (round 0).
#[derive(Clone, Debug)]
pub struct Round {
    pub round: usize,
    pub credentials: usize,
    pub started_at: i64,
    pub ended_at: i64,
    /// Median operator RSS over the 5 s before the round, and after it (once
    /// the tracked maps emptied and 10 s passed), in KiB.
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub rss_peak_kib: u64,
    /// Seconds from creation until every credential was Ready.
    pub seconds_to_ready: f64,
    /// Seconds from the start of the deletion until every tracked map was
    /// empty, and their sizes then.
    pub seconds_to_untracked: f64,
    pub tracked_after: Vec<(String, f64)>,
}

pub struct Churn<'a> {
    pub client: &'a Client,
    pub provider: &'a Arc<Provider>,
    pub endpoint: &'a str,
    pub admin: u16,
    pub sampler: &'a Sampler,
}

impl Churn<'_> {
    /// Deletes `existing` (round 0), then runs `rounds` rounds of `group`.
    pub async fn run(&self, existing: &Group, group: &Group, rounds: usize) -> Vec<Round> {
        let mut done = Vec::new();
        say(&format!(
            "churn: deleting the run's {} credentials",
            existing.count
        ));
        let before = self.rss_now().await;
        let started_at = now_ms();
        let deleting = Instant::now();
        cluster::delete_credentials(self.client, existing).await;
        let (untracked, tracked_after) = self.untracked(deleting).await;
        done.push(
            self.finish(
                0,
                existing.count,
                started_at,
                before,
                f64::NAN,
                untracked,
                tracked_after,
            )
            .await,
        );
        for round in 1..=rounds {
            say(&format!(
                "churn round {round}: creating and deleting {} credentials",
                group.count
            ));
            let before = self.rss_now().await;
            let started_at = now_ms();
            let created = Instant::now();
            cluster::create_credentials(self.client, self.endpoint, group).await;
            let ready = self.wait_ready(group, created).await;
            let deleting = Instant::now();
            cluster::delete_credentials(self.client, group).await;
            // The next round's credentials have the same names and tokens:
            // forget this round's Ready flags.
            for i in group.range() {
                self.provider.ready[i].store(false, std::sync::atomic::Ordering::Relaxed);
            }
            let (untracked, tracked_after) = self.untracked(deleting).await;
            let round = self
                .finish(
                    round,
                    group.count,
                    started_at,
                    before,
                    ready,
                    untracked,
                    tracked_after,
                )
                .await;
            say(&format!(
                "  RSS {:.1} MiB before, {:.1} MiB peak, {:.1} MiB after; maps empty {:.0} s after the deletion began",
                round.rss_before_kib as f64 / 1024.0,
                round.rss_peak_kib as f64 / 1024.0,
                round.rss_after_kib as f64 / 1024.0,
                round.seconds_to_untracked
            ));
            done.push(round);
        }
        done
    }

    async fn wait_ready(&self, group: &Group, created: Instant) -> f64 {
        while created.elapsed() < Duration::from_secs(3600) {
            if self.provider.all_ready(group.range()) {
                return created.elapsed().as_secs_f64();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("churn credentials were not all Ready within an hour");
    }

    async fn untracked(&self, since: Instant) -> (f64, Vec<(String, f64)>) {
        let tracked = operator::wait_untracked(self.admin, Duration::from_secs(300)).await;
        (since.elapsed().as_secs_f64(), tracked)
    }

    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        round: usize,
        credentials: usize,
        started_at: i64,
        rss_before_kib: u64,
        seconds_to_ready: f64,
        seconds_to_untracked: f64,
        tracked_after: Vec<(String, f64)>,
    ) -> Round {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let rss_after_kib = self.rss_now().await;
        let ended_at = now_ms();
        let rss_peak_kib = self
            .sampler
            .samples()
            .iter()
            .filter(|s| s.who == "operator" && s.at >= started_at)
            .map(|s| s.rss_kib)
            .max()
            .unwrap_or(0);
        Round {
            round,
            credentials,
            started_at,
            ended_at,
            rss_before_kib,
            rss_after_kib,
            rss_peak_kib,
            seconds_to_ready,
            seconds_to_untracked,
            tracked_after,
        }
    }

    /// The median of the operator's RSS over the next 5 s.
    async fn rss_now(&self) -> u64 {
        let from = now_ms();
        tokio::time::sleep(Duration::from_millis(5_500)).await;
        let mut rss: Vec<u64> = self
            .sampler
            .samples()
            .iter()
            .filter(|s| s.who == "operator" && s.at >= from)
            .map(|s| s.rss_kib)
            .collect();
        rss.sort_unstable();
        rss.get(rss.len() / 2).copied().unwrap_or(0)
    }
}
