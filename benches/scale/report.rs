//! Turns what the benchmark recorded into figures: `results.json` (every
//! figure), `summary.md` (the table for the README), and the time series
//! `refreshes.csv` and `memory.csv` that `scripts/bench-plot` draws.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::Args;
use crate::audit::Write;
use crate::churn::Round;
use crate::provider::{Call, now_ms};
use crate::sampler::{Load, Sample};

#[derive(Clone, Debug)]
pub struct Phase {
    pub name: &'static str,
    pub start: i64,
    pub end: i64,
}

impl Phase {
    pub fn begin(name: &'static str) -> Self {
        Phase {
            name,
            start: now_ms(),
            end: 0,
        }
    }
    pub fn end(mut self) -> Self {
        self.end = now_ms();
        self
    }
    pub fn contains(&self, at: i64) -> bool {
        self.start <= at && at <= self.end
    }
}

pub struct Results {
    pub args: Args,
    pub started_at: i64,
    pub finished_at: i64,
    pub machine: Value,
    pub ceiling: Vec<(usize, f64)>,
    pub create_seconds: f64,
    pub start_to_scheduled: f64,
    pub start_to_ready: f64,
    pub restart_to_scheduled: f64,
    pub outage_recovery: f64,
    /// Expiry of every credential's token when the outage ended.
    pub outage_expiries: Vec<i64>,
    pub phases: Vec<Phase>,
    pub calls: Vec<Call>,
    pub writes: Vec<Write>,
    pub samples: Vec<Sample>,
    /// When the token endpoint accepted each TCP connection (unix ms).
    pub accepted: Vec<i64>,
    pub load: Vec<Load>,
    pub churn: Vec<Round>,
    pub peer: Option<Peer>,
    /// API reads (GET, LIST) served during a phase, by phase name.
    pub reads: HashMap<&'static str, f64>,
}

/// What the peer's run recorded.
pub struct Peer {
    /// The peer's credentials (indices into the provider's).
    pub range: std::ops::Range<usize>,
    pub refresh_interval: u64,
    pub create_seconds: f64,
    pub start_to_present: f64,
    pub restart_to_reconciled: f64,
    pub phases: Vec<Phase>,
    pub writes: Vec<Write>,
    /// API reads (every client's) during the peer's steady phase.
    pub reads: f64,
}

impl Peer {
    pub fn new(range: std::ops::Range<usize>, refresh_interval: u64) -> Self {
        Peer {
            range,
            refresh_interval,
            create_seconds: 0.0,
            start_to_present: 0.0,
            restart_to_reconciled: 0.0,
            phases: Vec::new(),
            writes: Vec::new(),
            reads: f64::NAN,
        }
    }
}

/// The machine the run is on, from /proc.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    json!({
        "cpu": model,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "memory_gib": (memory_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
    })
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

impl Results {
    pub fn new(args: &Args) -> Self {
        Results {
            args: args.clone(),
            started_at: 0,
            finished_at: 0,
            machine: Value::Null,
            ceiling: Vec::new(),
            create_seconds: 0.0,
            start_to_scheduled: 0.0,
            start_to_ready: 0.0,
            restart_to_scheduled: 0.0,
            outage_recovery: 0.0,
            outage_expiries: Vec::new(),
            phases: Vec::new(),
            calls: Vec::new(),
            writes: Vec::new(),
            samples: Vec::new(),
            accepted: Vec::new(),
            load: Vec::new(),
            churn: Vec::new(),
            peer: None,
            reads: HashMap::new(),
        }
    }

    fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    fn calls_in(&self, phase: &Phase) -> Vec<Call> {
        self.calls
            .iter()
            .filter(|c| phase.contains(c.at))
            .copied()
            .collect()
    }

    fn writes_in(&self, phase: &Phase) -> Vec<&Write> {
        self.writes
            .iter()
            .filter(|w| phase.contains(w.at))
            .collect()
    }

    /// Writes, grouped by resource.
    fn by_resource(writes: &[&Write]) -> Value {
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for write in writes {
            *counts.entry(write.resource.as_str()).or_default() += 1;
        }
        json!(counts)
    }

    /// Calls that came less than half a lifetime after the previous call for
    /// the same credential: a second call for one refresh.
    fn repeats(&self, calls: &[Call]) -> usize {
        let mut last: HashMap<u32, i64> = HashMap::new();
        let mut repeats = 0;
        let half = self.args.lifetime as i64 * 500;
        let mut sorted: Vec<&Call> = self.calls.iter().collect();
        sorted.sort_by_key(|c| c.at);
        let wanted: HashSet<(u32, i64)> = calls.iter().map(|c| (c.credential, c.at)).collect();
        for call in sorted {
            if let Some(previous) = last.insert(call.credential, call.at)
                && call.at - previous < half
                && wanted.contains(&(call.credential, call.at))
            {
                repeats += 1;
            }
        }
        repeats
    }

    fn lateness(calls: &[Call]) -> Vec<f64> {
        let mut late: Vec<f64> = calls
            .iter()
            .filter(|c| c.scheduled > 0)
            .map(|c| (c.at - c.scheduled) as f64 / 1000.0)
            .collect();
        late.sort_by(f64::total_cmp);
        late
    }

    fn expired(calls: &[Call]) -> usize {
        calls
            .iter()
            .filter(|c| c.replaced_expiry > 0 && c.at > c.replaced_expiry)
            .count()
    }

    /// How long each token replaced after it expired had been expired, sorted.
    fn expired_for(calls: &[Call]) -> Vec<f64> {
        let mut gaps: Vec<f64> = calls
            .iter()
            .filter(|c| c.replaced_expiry > 0 && c.at > c.replaced_expiry)
            .map(|c| (c.at - c.replaced_expiry) as f64 / 1000.0)
            .collect();
        gaps.sort_by(f64::total_cmp);
        gaps
    }

    fn samples_of(&self, who: &str, phase: &Phase) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| s.who == who && phase.contains(s.at))
            .copied()
            .collect()
    }

    /// CPU seconds `who` used during `phase` (summed over its processes).
    fn cpu(&self, who: &str, phase: &Phase) -> f64 {
        let mut by_pid: HashMap<u32, (f64, f64)> = HashMap::new();
        for sample in self.samples_of(who, phase) {
            let entry = by_pid
                .entry(sample.pid)
                .or_insert((sample.cpu_seconds, sample.cpu_seconds));
            entry.1 = sample.cpu_seconds;
        }
        if by_pid.is_empty() {
            return f64::NAN;
        }
        by_pid.values().map(|(first, last)| last - first).sum()
    }

    /// Peak RSS of `who` in `phase`, and the median over its second half, MiB.
    fn rss(&self, who: &str, phase: &Phase) -> (f64, f64) {
        let samples = self.samples_of(who, phase);
        let peak = samples
            .iter()
            .map(|s| s.rss_kib as f64 / 1024.0)
            .fold(0.0, f64::max);
        let mut second_half: Vec<f64> = samples
            .iter()
            .skip(samples.len() / 2)
            .map(|s| s.rss_kib as f64 / 1024.0)
            .collect();
        second_half.sort_by(f64::total_cmp);
        (peak, percentile(&second_half, 50.0))
    }

    /// Mean and maximum of the 1-minute load average during `phase`.
    fn load_in(&self, phase: &Phase) -> Value {
        let loads: Vec<f64> = self
            .load
            .iter()
            .filter(|l| phase.contains(l.at))
            .map(|l| l.one_minute)
            .collect();
        if loads.is_empty() {
            return json!({"mean": null, "max": null});
        }
        let mean = loads.iter().sum::<f64>() / loads.len() as f64;
        json!({
            "mean": round(mean, 2),
            "max": round(loads.iter().copied().fold(0.0, f64::max), 2),
        })
    }

    fn connections_in(&self, phase: &Phase) -> usize {
        self.accepted.iter().filter(|a| phase.contains(**a)).count()
    }

    /// The control plane's share of the work in `phase`: CPU cores used by
    /// the API server and etcd, and their CPU seconds per token call.
    fn control_plane(&self, phase: &Phase, calls: usize) -> Value {
        let seconds = ((phase.end - phase.start) as f64 / 1000.0).max(1.0);
        let apiserver = self.cpu("kube-apiserver", phase);
        let etcd = self.cpu("etcd", phase);
        json!({
            "kube_apiserver_cores": round(apiserver / seconds, 3),
            "etcd_cores": round(etcd / seconds, 3),
            "kube_apiserver_cpu_seconds_per_refresh": round(apiserver / calls.max(1) as f64, 5),
            "etcd_cpu_seconds_per_refresh": round(etcd / calls.max(1) as f64, 5),
        })
    }

    /// The highest write rate over any 10-second window, per second.
    fn peak_write_rate(&self) -> f64 {
        let mut per_second: HashMap<i64, usize> = HashMap::new();
        for write in &self.writes {
            *per_second.entry(write.at / 1000).or_default() += 1;
        }
        let Some(first) = per_second.keys().min().copied() else {
            return 0.0;
        };
        let last = per_second.keys().max().copied().unwrap_or(first);
        (first..=last)
            .map(|s| {
                (s..s + 10)
                    .map(|t| per_second.get(&t).copied().unwrap_or(0))
                    .sum::<usize>()
            })
            .max()
            .unwrap_or(0) as f64
            / 10.0
    }

    /// Everything, as JSON.
    pub fn figures(&self) -> Value {
        let n = self.args.credentials;
        let calls_main: Vec<Call> = self
            .calls
            .iter()
            .filter(|c| (c.credential as usize) < n)
            .copied()
            .collect();
        let outside_outage: Vec<Call> = calls_main
            .iter()
            .filter(|c| self.phase("outage").is_none_or(|o| !o.contains(c.at)))
            .copied()
            .collect();
        let peak_rss = self
            .samples
            .iter()
            .filter(|s| s.who == "operator")
            .map(|s| s.rss_kib as f64 / 1024.0)
            .fold(0.0, f64::max);
        let ceiling = self
            .ceiling
            .iter()
            .map(|(_, rate)| *rate)
            .fold(0.0, f64::max);
        let peak_writes = self.peak_write_rate();
        let phases: serde_json::Map<String, Value> = self
            .phases
            .iter()
            .chain(self.peer.iter().flat_map(|p| p.phases.iter()))
            .map(|p| {
                (
                    p.name.to_string(),
                    json!({
                        "seconds": round((p.end - p.start) as f64 / 1000.0, 1),
                        "load_average_1m": self.load_in(p),
                    }),
                )
            })
            .collect();
        json!({
            "machine": self.machine,
            "parameters": {
                "credentials": n,
                "token_lifetime_seconds": self.args.lifetime,
                "steady_seconds": self.args.steady,
                "echo_seconds": self.args.echo(),
                "token_endpoint_rate": self.args.rate,
                "token_endpoint_burst": self.args.burst,
                "concurrency": self.args.concurrency,
                "churn_rounds": self.args.churn_rounds,
                "churn_credentials": self.args.churn_credentials,
                "peer": self.args.peer,
            },
            "run": {"started_at_ms": self.started_at, "finished_at_ms": self.finished_at},
            "phases": phases,
            "create": {"seconds": round(self.create_seconds, 1)},
            "api_server_ceiling": {
                "writes_per_second_by_in_flight": self.ceiling.iter().map(|(k, r)| json!({"in_flight": k, "writes_per_second": round(*r, 0)})).collect::<Vec<_>>(),
                "writes_per_second": round(ceiling, 0),
                "operator_peak_writes_per_second_10s": round(peak_writes, 1),
                "operator_peak_fraction_of_ceiling": round(peak_writes / ceiling, 3),
            },
            "start": self.start_figures(),
            "steady": self.phase("steady").map(|p| self.steady_figures(p)),
            "echo": self.phase("echo").map(|p| self.echo_figures(p)),
            "restart": self.phase("restart").map(|p| self.restart_figures(p)),
            "outage": self.phase("outage").map(|p| self.outage_figures(p)),
            "churn": self.churn_figures(),
            "overall": {
                "refreshes": calls_main.len(),
                "refreshes_after_expiry_outside_the_outage": Self::expired(&outside_outage),
                "peak_rss_mib": round(peak_rss, 1),
            },
            "peer": self.peer.as_ref().map(|p| self.peer_figures(p)),
        })
    }

    fn start_figures(&self) -> Value {
        let Some(start) = self.phase("start") else {
            return Value::Null;
        };
        let n = self.args.credentials;
        let calls = self.calls_in(start);
        let writes = self.writes_in(start);
        json!({
            "seconds_to_every_credential_scheduled": round(self.start_to_scheduled, 1),
            "seconds_to_every_credential_ready": round(self.start_to_ready, 1),
            "rate_limit_floor_seconds": round(n as f64 / f64::from(self.args.rate), 1),
            "token_endpoint_calls": calls.len(),
            "new_connections": self.connections_in(start),
            "writes": writes.len(),
            "writes_by_resource": Self::by_resource(&writes),
            "peak_rss_mib": round(self.rss("operator", start).0, 1),
            "control_plane": self.control_plane(start, calls.len()),
        })
    }

    fn steady_figures(&self, steady: &Phase) -> Value {
        let n = self.args.credentials;
        let calls = self.calls_in(steady);
        let late = Self::lateness(&calls);
        let writes = self.writes_in(steady);
        let cpu = self.cpu("operator", steady);
        let (_, rss_median) = self.rss("operator", steady);
        let seconds = (steady.end - steady.start) as f64 / 1000.0;
        let connections = self.connections_in(steady);
        json!({
            "seconds": round(seconds, 0),
            "refreshes": calls.len(),
            "refreshes_after_expiry": Self::expired(&calls),
            "lateness_seconds": {
                "count": late.len(),
                "p50": round(percentile(&late, 50.0), 3),
                "p99": round(percentile(&late, 99.0), 3),
                "max": round(late.last().copied().unwrap_or(f64::NAN), 3),
                "min": round(late.first().copied().unwrap_or(f64::NAN), 3),
            },
            "writes": writes.len(),
            "writes_refused": writes.iter().filter(|w| w.code >= 300).count(),
            "writes_by_resource": Self::by_resource(&writes),
            "writes_per_refresh": round(writes.len() as f64 / calls.len() as f64, 3),
            "api_reads_per_refresh_all_clients": round(self.reads.get("steady").copied().unwrap_or(f64::NAN) / calls.len() as f64, 2),
            "token_endpoint_calls_per_refresh": round(calls.len() as f64 / (calls.len() - self.repeats(&calls)) as f64, 3),
            "token_endpoint_calls_per_hour_per_credential": round(calls.len() as f64 / n as f64 / (seconds / 3600.0), 2),
            "new_connections": connections,
            "new_connections_per_refresh": round(connections as f64 / calls.len().max(1) as f64, 3),
            "rss_mib_median_second_half": round(rss_median, 1),
            "rss_kib_per_credential": round(rss_median * 1024.0 / n as f64, 2),
            "cpu_seconds": round(cpu, 2),
            "cpu_seconds_per_refresh": round(cpu / calls.len() as f64, 5),
            "control_plane": self.control_plane(steady, calls.len()),
        })
    }

    fn echo_figures(&self, echo: &Phase) -> Value {
        let calls = self.calls_in(echo);
        let writes = self.writes_in(echo);
        let cpu = self.cpu("operator", echo);
        json!({
            "seconds": round((echo.end - echo.start) as f64 / 1000.0, 0),
            "refreshes": calls.len(),
            "refreshes_after_expiry": Self::expired(&calls),
            "writes": writes.len(),
            "writes_by_resource": Self::by_resource(&writes),
            "writes_per_refresh": round(writes.len() as f64 / calls.len().max(1) as f64, 3),
            "new_connections_per_refresh": round(self.connections_in(echo) as f64 / calls.len().max(1) as f64, 3),
            "cpu_seconds_per_refresh": round(cpu / calls.len().max(1) as f64, 5),
        })
    }

    fn restart_figures(&self, restart: &Phase) -> Value {
        let n = self.args.credentials;
        let calls = self.calls_in(restart);
        let early = calls
            .iter()
            .filter(|c| c.scheduled > 0 && c.at < c.scheduled - 1000)
            .count();
        let refreshed: HashSet<u32> = calls.iter().map(|c| c.credential).collect();
        let writes = self.writes_in(restart);
        let idle_writes: Vec<&Write> = writes
            .iter()
            .filter(|w| w.credential().is_some_and(|c| !refreshed.contains(&c)))
            .copied()
            .collect();
        let other_writes: Vec<&Write> = writes
            .iter()
            .filter(|w| w.credential().is_none())
            .copied()
            .collect();
        let idle_reconciles = n.saturating_sub(refreshed.len());
        json!({
            "seconds_to_every_credential_scheduled": round(self.restart_to_scheduled, 1),
            "token_endpoint_calls": calls.len(),
            "calls_before_their_scheduled_time": early,
            "idle_reconciles": idle_reconciles,
            "writes": writes.len(),
            "writes_for_idle_credentials": idle_writes.len(),
            "writes_per_idle_reconcile": round(idle_writes.len() as f64 / idle_reconciles.max(1) as f64, 4),
            "writes_for_refreshed_credentials": writes.len() - idle_writes.len() - other_writes.len(),
            "other_writes_by_resource": Self::by_resource(&other_writes),
            "peak_rss_mib": round(self.rss("operator", restart).0, 1),
        })
    }

    fn outage_figures(&self, outage: &Phase) -> Value {
        let n = self.args.credentials;
        let t0 = outage.start;
        let rate = f64::from(self.args.rate);
        let burst = self.args.burst as usize;
        let already_expired = self.outage_expiries.iter().filter(|e| **e <= t0).count();
        let mut pending: Vec<i64> = self
            .outage_expiries
            .iter()
            .copied()
            .filter(|e| *e > t0)
            .collect();
        pending.sort_unstable();
        let mut calls = self.calls_in(outage);
        calls.sort_by_key(|c| c.at);
        // Earliest-expiry-first at the rate limit, from the operator's first
        // call on: the best any order can do.
        let first_call = calls.first().map_or(t0, |c| c.at);
        let ideal_expired = pending
            .iter()
            .enumerate()
            .filter(|(k, expiry)| {
                let slot =
                    first_call + ((k + 1).saturating_sub(burst) as f64 / rate * 1000.0) as i64;
                slot > **expiry
            })
            .count();
        let mut first_after: HashMap<u32, Call> = HashMap::new();
        for call in &calls {
            first_after.entry(call.credential).or_insert(*call);
        }
        let expired = first_after
            .values()
            .filter(|c| c.replaced_expiry > t0 && c.at > c.replaced_expiry)
            .count();
        let mut per_second: HashMap<i64, usize> = HashMap::new();
        for call in &calls {
            *per_second.entry((call.at - t0) / 1000).or_default() += 1;
        }
        let late = Self::lateness(&calls);
        // After the burst and the first 20 s, the rate the recovery kept up.
        let last = calls.last().map_or(t0, |c| c.at);
        let after_20 = calls.iter().filter(|c| c.at >= first_call + 20_000).count();
        let after_20_rate =
            after_20 as f64 / ((last - first_call - 20_000) as f64 / 1000.0).max(1.0);
        json!({
            "credentials_due": n,
            "tokens_expired_before_restart": already_expired,
            "seconds_to_first_call": round((first_call - t0) as f64 / 1000.0, 1),
            "seconds_to_every_credential_refreshed": round(self.outage_recovery, 1),
            "max_calls_in_one_second": per_second.values().copied().max().unwrap_or(0),
            "calls_per_second_after_the_first_20_s": round(after_20_rate, 1),
            "tokens_expired_before_their_refresh": expired,
            "tokens_an_earliest_expiry_first_order_would_lose_at_the_rate_limit": ideal_expired,
            "new_connections": self.connections_in(outage),
            "lateness_seconds": {
                "p50": round(percentile(&late, 50.0), 1),
                "p99": round(percentile(&late, 99.0), 1),
                "max": round(late.last().copied().unwrap_or(f64::NAN), 1),
            },
            "control_plane": self.control_plane(outage, calls.len()),
            "operator_cores": round(self.cpu("operator", outage) / ((outage.end - outage.start) as f64 / 1000.0).max(1.0), 3),
            "timeline_10s": self.timeline(outage, &calls),
        })
    }

    /// Per 10 s of `phase`: calls, writes, and the cores the operator, the API
    /// server and etcd used, with the machine's load.
    fn timeline(&self, phase: &Phase, calls: &[Call]) -> Vec<Value> {
        let mut rows = Vec::new();
        let mut from = phase.start;
        while from < phase.end {
            let window = Phase {
                name: "window",
                start: from,
                end: (from + 10_000).min(phase.end),
            };
            let seconds = ((window.end - window.start) as f64 / 1000.0).max(0.001);
            let cores = |who| round(self.cpu(who, &window) / seconds, 2);
            rows.push(json!({
                "from_second": (from - phase.start) / 1000,
                "calls_per_second": round(calls.iter().filter(|c| window.contains(c.at)).count() as f64 / seconds, 1),
                "writes_per_second": round(self.writes_in(&window).len() as f64 / seconds, 1),
                "operator_cores": cores("operator"),
                "kube_apiserver_cores": cores("kube-apiserver"),
                "etcd_cores": cores("etcd"),
                "load_average_1m": self.load_in(&window)["max"],
            }));
            from += 10_000;
        }
        rows
    }

    fn churn_figures(&self) -> Value {
        if self.churn.is_empty() {
            return Value::Null;
        }
        let mib = |kib: u64| round(kib as f64 / 1024.0, 1);
        let rounds: Vec<Value> = self
            .churn
            .iter()
            .map(|r| {
                json!({
                    "round": r.round,
                    "credentials": r.credentials,
                    "rss_mib_before": mib(r.rss_before_kib),
                    "rss_mib_peak": mib(r.rss_peak_kib),
                    "rss_mib_after": mib(r.rss_after_kib),
                    "seconds": round((r.ended_at - r.started_at) as f64 / 1000.0, 1),
                    "seconds_to_ready": round(r.seconds_to_ready, 1),
                    "seconds_from_deletion_to_empty_maps": round(r.seconds_to_untracked, 1),
                    "tracked_entries_after": r.tracked_after.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
                })
            })
            .collect();
        let last = self.churn.last().unwrap();
        json!({
            "rounds": rounds,
            "tracked_entries_after_churn": last.tracked_after.iter().map(|(k, v)| (k.clone(), json!(v))).collect::<serde_json::Map<_, _>>(),
            "all_maps_empty_after_churn": !last.tracked_after.is_empty() && last.tracked_after.iter().all(|(_, v)| *v == 0.0),
        })
    }

    fn peer_figures(&self, peer: &Peer) -> Value {
        let n = peer.range.len();
        let find = |name: &str| peer.phases.iter().find(|p| p.name == name);
        let ours = |c: &&Call| peer.range.contains(&(c.credential as usize));
        let all: Vec<Call> = self.calls.iter().filter(ours).copied().collect();
        let interval_ms = peer.refresh_interval as i64 * 1000;
        // The peer publishes no schedule: its refresh is due one
        // refreshInterval after the previous one.
        let mut previous: HashMap<u32, i64> = HashMap::new();
        let mut sorted = all.clone();
        sorted.sort_by_key(|c| c.at);
        let mut due_of: HashMap<(u32, i64), i64> = HashMap::new();
        for call in &sorted {
            if let Some(before) = previous.insert(call.credential, call.at) {
                due_of.insert((call.credential, call.at), before + interval_ms);
            }
        }
        let mut out = serde_json::Map::new();
        out.insert(
            "refresh_interval_seconds".into(),
            json!(peer.refresh_interval),
        );
        out.insert(
            "create_seconds".into(),
            json!(round(peer.create_seconds, 1)),
        );
        out.insert("refreshes".into(), json!(all.len()));
        out.insert("refreshes_after_expiry".into(), json!(Self::expired(&all)));
        let peak = self
            .samples
            .iter()
            .filter(|s| s.who == "eso")
            .map(|s| s.rss_kib as f64 / 1024.0)
            .fold(0.0, f64::max);
        out.insert("peak_rss_mib".into(), json!(round(peak, 1)));
        if let Some(start) = find("eso-start") {
            let calls: Vec<Call> = all
                .iter()
                .filter(|c| start.contains(c.at))
                .copied()
                .collect();
            let writes: Vec<&Write> = peer
                .writes
                .iter()
                .filter(|w| start.contains(w.at))
                .collect();
            out.insert(
                "start".into(),
                json!({
                    "seconds_to_every_secret_present": round(peer.start_to_present, 1),
                    "token_endpoint_calls": calls.len(),
                    "writes": writes.len(),
                    "writes_by_resource": Self::by_resource(&writes),
                    "peak_rss_mib": round(self.rss("eso", start).0, 1),
                    "control_plane": self.control_plane(start, calls.len()),
                }),
            );
        }
        if let Some(steady) = find("eso-steady") {
            let calls: Vec<Call> = all
                .iter()
                .filter(|c| steady.contains(c.at))
                .copied()
                .collect();
            let writes: Vec<&Write> = peer
                .writes
                .iter()
                .filter(|w| steady.contains(w.at))
                .collect();
            let mut late: Vec<f64> = calls
                .iter()
                .filter_map(|c| {
                    due_of
                        .get(&(c.credential, c.at))
                        .map(|due| (c.at - due) as f64 / 1000.0)
                })
                .collect();
            late.sort_by(f64::total_cmp);
            let gaps = Self::expired_for(&calls);
            let cpu = self.cpu("eso", steady);
            let seconds = (steady.end - steady.start) as f64 / 1000.0;
            let (_, rss_median) = self.rss("eso", steady);
            out.insert("steady".into(), json!({
                "seconds": round(seconds, 0),
                "refreshes": calls.len(),
                "refreshes_after_expiry": Self::expired(&calls),
                "seconds_expired_before_refresh": {"p50": round(percentile(&gaps, 50.0), 1), "max": round(gaps.last().copied().unwrap_or(0.0), 1)},
                "lateness_seconds": {
                    "count": late.len(),
                    "p50": round(percentile(&late, 50.0), 3),
                    "p99": round(percentile(&late, 99.0), 3),
                    "max": round(late.last().copied().unwrap_or(f64::NAN), 3),
                },
                "writes": writes.len(),
                "writes_by_resource": Self::by_resource(&writes),
                "writes_per_refresh": round(writes.len() as f64 / calls.len().max(1) as f64, 3),
                "api_reads_per_refresh_all_clients": round(self.reads.get("eso-steady").copied().unwrap_or(f64::NAN) / calls.len().max(1) as f64, 2),
                "token_endpoint_calls_per_hour_per_credential": round(calls.len() as f64 / n as f64 / (seconds / 3600.0), 2),
                "new_connections_per_refresh": round(self.connections_in(steady) as f64 / calls.len().max(1) as f64, 3),
                "rss_mib_median_second_half": round(rss_median, 1),
                "rss_kib_per_credential": round(rss_median * 1024.0 / n as f64, 2),
                "cpu_seconds": round(cpu, 2),
                "cpu_seconds_per_refresh": round(cpu / calls.len().max(1) as f64, 5),
                "control_plane": self.control_plane(steady, calls.len()),
            }));
        }
        if let Some(restart) = find("eso-restart") {
            let calls: Vec<Call> = all
                .iter()
                .filter(|c| restart.contains(c.at))
                .copied()
                .collect();
            let early = calls
                .iter()
                .filter(|c| {
                    due_of
                        .get(&(c.credential, c.at))
                        .is_some_and(|due| c.at < due - 1000)
                })
                .count();
            let writes: Vec<&Write> = peer
                .writes
                .iter()
                .filter(|w| restart.contains(w.at))
                .collect();
            let refreshed: HashSet<u32> = calls.iter().map(|c| c.credential).collect();
            let idle_writes = writes
                .iter()
                .filter(|w| w.credential().is_some_and(|c| !refreshed.contains(&c)))
                .count();
            out.insert("restart".into(), json!({
                "seconds_to_every_external_secret_reconciled": round(peer.restart_to_reconciled, 1),
                "token_endpoint_calls": calls.len(),
                "calls_before_their_refresh_interval": early,
                "writes": writes.len(),
                "writes_by_resource": Self::by_resource(&writes),
                "writes_for_idle_credentials": idle_writes,
                "idle_reconciles": n.saturating_sub(refreshed.len()),
            }));
        }
        Value::Object(out)
    }

    /// Writes every output; returns the Markdown summary.
    pub fn write(&self, out: &Path) -> String {
        let figures = self.figures();
        std::fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(&figures).unwrap(),
        )
        .unwrap();
        let seconds = |at: i64| (at - self.started_at) as f64 / 1000.0;
        let all_phases: Vec<&Phase> = self
            .phases
            .iter()
            .chain(self.peer.iter().flat_map(|p| p.phases.iter()))
            .collect();
        let mut csv = String::from("seconds,phase,lateness_seconds,after_expiry\n");
        let mut calls = self.calls.clone();
        calls.sort_by_key(|c| c.at);
        for call in calls.iter().filter(|c| c.scheduled > 0) {
            let phase = all_phases
                .iter()
                .find(|p| p.contains(call.at))
                .map_or("between", |p| p.name);
            let _ = writeln!(
                csv,
                "{:.3},{phase},{:.3},{}",
                seconds(call.at),
                (call.at - call.scheduled) as f64 / 1000.0,
                u8::from(call.replaced_expiry > 0 && call.at > call.replaced_expiry)
            );
        }
        std::fs::write(out.join("refreshes.csv"), csv).unwrap();
        // Every call, with whose it was, for the peer's plots.
        let peer_range = self.peer.as_ref().map(|p| p.range.clone()).unwrap_or(0..0);
        let mut csv = String::from("seconds,who,after_expiry,expired_seconds\n");
        for call in &calls {
            let who = if peer_range.contains(&(call.credential as usize)) {
                "eso"
            } else {
                "operator"
            };
            let expired = call.replaced_expiry > 0 && call.at > call.replaced_expiry;
            let _ = writeln!(
                csv,
                "{:.3},{who},{},{:.3}",
                seconds(call.at),
                u8::from(expired),
                if expired {
                    (call.at - call.replaced_expiry) as f64 / 1000.0
                } else {
                    0.0
                }
            );
        }
        std::fs::write(out.join("calls.csv"), csv).unwrap();
        let mut csv = String::from("seconds,pid,rss_mib,cpu_seconds\n");
        let mut processes = String::from("seconds,who,pid,rss_mib,cpu_seconds\n");
        for sample in &self.samples {
            if sample.who == "operator" {
                let _ = writeln!(
                    csv,
                    "{:.1},{},{:.1},{:.2}",
                    seconds(sample.at),
                    sample.pid,
                    sample.rss_kib as f64 / 1024.0,
                    sample.cpu_seconds
                );
            }
            let _ = writeln!(
                processes,
                "{:.1},{},{},{:.1},{:.2}",
                seconds(sample.at),
                sample.who,
                sample.pid,
                sample.rss_kib as f64 / 1024.0,
                sample.cpu_seconds
            );
        }
        std::fs::write(out.join("memory.csv"), csv).unwrap();
        std::fs::write(out.join("processes.csv"), processes).unwrap();
        let mut csv = String::from("seconds,load_1m,runnable\n");
        for load in &self.load {
            let _ = writeln!(
                csv,
                "{:.1},{:.2},{}",
                seconds(load.at),
                load.one_minute,
                load.runnable
            );
        }
        std::fs::write(out.join("load.csv"), csv).unwrap();
        let mut csv = String::from("phase,start_seconds,end_seconds\n");
        for phase in &all_phases {
            let _ = writeln!(
                csv,
                "{},{:.1},{:.1}",
                phase.name,
                seconds(phase.start),
                seconds(phase.end)
            );
        }
        std::fs::write(out.join("phases.csv"), csv).unwrap();
        let mut summary = summary(&figures);
        if !figures["peer"].is_null() {
            summary.push('\n');
            summary.push_str(&side_by_side(&figures));
        }
        std::fs::write(out.join("summary.md"), &summary).unwrap();
        summary
    }
}

fn num(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn verdict(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

/// The Markdown table: each figure, its target, and whether it was met.
pub fn summary(f: &Value) -> String {
    let p = &f["parameters"];
    let m = &f["machine"];
    let mut rows: Vec<[String; 4]> = Vec::new();
    let mut row = |what: &str, value: String, target: &str, verdict: &str| {
        rows.push([what.into(), value, target.into(), verdict.into()]);
    };
    let s = &f["steady"];
    let r = &f["restart"];
    let o = &f["outage"];
    let st = &f["start"];
    let c = &f["api_server_ceiling"];
    let e = &f["echo"];
    row(
        "refreshes (steady phase / whole run)",
        format!("{} / {}", s["refreshes"], f["overall"]["refreshes"]),
        "",
        "",
    );
    let after = f["overall"]["refreshes_after_expiry_outside_the_outage"]
        .as_u64()
        .unwrap_or(u64::MAX);
    row(
        "refreshes after the token had expired (outside the outage)",
        after.to_string(),
        "0",
        verdict(after == 0),
    );
    let l = &s["lateness_seconds"];
    row(
        "lateness against the scheduled time, p50 / p99 / max",
        format!("{} s / {} s / {} s", l["p50"], l["p99"], l["max"]),
        "p99 < 2 s",
        verdict(num(&l["p99"]) < 2.0),
    );
    row(
        "API writes per refresh",
        format!("{} ({})", s["writes_per_refresh"], s["writes_by_resource"]),
        "≤ 2.0",
        verdict(num(&s["writes_per_refresh"]) <= 2.0),
    );
    if !e.is_null() {
        row(
            "API writes per refresh, provider echoing the refresh token",
            format!(
                "{} ({} refreshes; {})",
                e["writes_per_refresh"], e["refreshes"], e["writes_by_resource"]
            ),
            "2.0",
            verdict(num(&e["writes_per_refresh"]) <= 2.0),
        );
    }
    row(
        "API writes per reconcile with nothing to do (restart)",
        format!(
            "{} ({} writes, {} idle reconciles)",
            r["writes_per_idle_reconcile"], r["writes_for_idle_credentials"], r["idle_reconciles"]
        ),
        "0",
        verdict(r["writes_for_idle_credentials"].as_u64() == Some(0)),
    );
    row(
        "token-endpoint calls per refresh",
        s["token_endpoint_calls_per_refresh"].to_string(),
        "1.0",
        verdict(num(&s["token_endpoint_calls_per_refresh"]) <= 1.0),
    );
    row(
        "calls during the restart for tokens not yet due",
        format!(
            "{} of the {} calls in the start-up pass",
            r["calls_before_their_scheduled_time"], r["token_endpoint_calls"]
        ),
        "0",
        verdict(r["calls_before_their_scheduled_time"].as_u64() == Some(0)),
    );
    let peak = num(&f["overall"]["peak_rss_mib"]);
    row(
        "operator RSS, peak / steady median (per credential)",
        format!(
            "{peak} MiB / {} MiB ({} KiB)",
            s["rss_mib_median_second_half"], s["rss_kib_per_credential"]
        ),
        "",
        "",
    );
    row(
        "CPU seconds per refresh (steady): operator / API server / etcd",
        format!(
            "{} / {} / {} (operator {} s in all)",
            s["cpu_seconds_per_refresh"],
            s["control_plane"]["kube_apiserver_cpu_seconds_per_refresh"],
            s["control_plane"]["etcd_cpu_seconds_per_refresh"],
            s["cpu_seconds"]
        ),
        "",
        "",
    );
    row(
        "new TCP connections to the token endpoint per refresh: steady / start / outage",
        format!(
            "{} / {} ({} for {} calls) / {}",
            s["new_connections_per_refresh"],
            round(
                num(&st["new_connections"]) / num(&st["token_endpoint_calls"]).max(1.0),
                3
            ),
            st["new_connections"],
            st["token_endpoint_calls"],
            if o.is_null() {
                "-".to_string()
            } else {
                format!("{} connections", o["new_connections"])
            }
        ),
        "",
        "",
    );
    row(
        "start to every credential scheduled: restart / first start",
        format!(
            "{} s / {} s (first start needs a refresh each: rate-limit floor {} s; all Ready at {} s)",
            r["seconds_to_every_credential_scheduled"],
            st["seconds_to_every_credential_scheduled"],
            st["rate_limit_floor_seconds"],
            st["seconds_to_every_credential_ready"]
        ),
        "< 60 s",
        verdict(num(&r["seconds_to_every_credential_scheduled"]) < 60.0),
    );
    row(
        "API server write ceiling (plain client) / operator peak",
        format!(
            "{} writes/s / {} writes/s ({:.0} %)",
            c["writes_per_second"],
            c["operator_peak_writes_per_second_10s"],
            num(&c["operator_peak_fraction_of_ceiling"]) * 100.0
        ),
        "",
        "",
    );
    if !o.is_null() {
        outage_rows(o, p, &mut row);
    }
    if !f["churn"].is_null() {
        churn_rows(&f["churn"], &mut row);
    }
    let loads: Vec<String> = f["phases"]
        .as_object()
        .map(|phases| {
            phases
                .iter()
                .map(|(name, v)| {
                    format!(
                        "{name} {}/{}",
                        v["load_average_1m"]["mean"], v["load_average_1m"]["max"]
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    row(
        "machine load (1-min load average, mean/max per phase; 2 cores, shared)",
        loads.join(", "),
        "",
        "",
    );
    let mut out = format!(
        "{} credentials, {} s tokens, rate limit {}/s (burst {}), concurrency {}; \
         {} ({} cores, {} GiB), Linux {}.\n\n| figure | value | target | |\n|---|---|---|---|\n",
        p["credentials"],
        p["token_lifetime_seconds"],
        p["token_endpoint_rate"],
        p["token_endpoint_burst"],
        p["concurrency"],
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?"),
    );
    for [what, value, target, verdict] in rows {
        let _ = writeln!(out, "| {what} | {value} | {target} | {verdict} |");
    }
    out
}

fn outage_rows(o: &Value, p: &Value, row: &mut impl FnMut(&str, String, &str, &str)) {
    row(
        "outage: all due at once, time to refresh all / max calls in 1 s / calls/s after the first 20 s",
        format!(
            "{} s / {} / {} (limit {}/s, burst {})",
            o["seconds_to_every_credential_refreshed"],
            o["max_calls_in_one_second"],
            o["calls_per_second_after_the_first_20_s"],
            p["token_endpoint_rate"],
            p["token_endpoint_burst"]
        ),
        "",
        "",
    );
    row(
        "outage: cores used by the operator / API server / etcd",
        format!(
            "{} / {} / {}",
            o["operator_cores"],
            o["control_plane"]["kube_apiserver_cores"],
            o["control_plane"]["etcd_cores"]
        ),
        "",
        "",
    );
    let lost = o["tokens_expired_before_their_refresh"]
        .as_u64()
        .unwrap_or(0);
    let ideal = o["tokens_an_earliest_expiry_first_order_would_lose_at_the_rate_limit"]
        .as_u64()
        .unwrap_or(0);
    row(
        "outage: tokens that expired before their refresh / that the rate limit made unavoidable",
        format!("{lost} / {ideal}"),
        "no more than unavoidable",
        verdict(lost <= ideal),
    );
}

fn churn_rows(churn: &Value, row: &mut impl FnMut(&str, String, &str, &str)) {
    let rounds = churn["rounds"].as_array().cloned().unwrap_or_default();
    let text: Vec<String> = rounds
        .iter()
        .map(|r| {
            format!(
                "{} {} → {} MiB",
                if r["round"] == 0 {
                    "delete the run's".to_string()
                } else {
                    format!("round {}", r["round"])
                },
                r["rss_mib_before"],
                r["rss_mib_after"]
            )
        })
        .collect();
    let afters: Vec<f64> = rounds
        .iter()
        .filter(|r| r["round"] != 0)
        .map(|r| num(&r["rss_mib_after"]))
        .collect();
    let flat = afters.len() < 2
        || afters.last().unwrap() - afters.first().unwrap() <= afters.first().unwrap() * 0.1;
    row(
        "churn: operator RSS before → after each round (create, refresh and delete)",
        text.join("; "),
        "flat",
        verdict(flat),
    );
    let empty = churn["all_maps_empty_after_churn"].as_bool() == Some(true);
    row(
        "churn: tracked entries after churn",
        churn["tracked_entries_after_churn"].to_string(),
        "all 0",
        verdict(empty),
    );
}

/// The operator and its peer, figure by figure.
pub fn side_by_side(f: &Value) -> String {
    let p = &f["parameters"];
    let e = &f["peer"];
    let s = &f["steady"];
    let es = &e["steady"];
    let r = &f["restart"];
    let er = &e["restart"];
    let rows: Vec<[String; 3]> = vec![
        [
            "configuration".into(),
            format!(
                "refresh when a third of the lifetime is left; concurrency {}, rate limit {}/s",
                p["concurrency"], p["token_endpoint_rate"]
            ),
            format!(
                "Webhook generator + ExternalSecret per credential, refreshInterval {} s; chart defaults (--concurrent=1, client QPS 50, burst 100)",
                e["refresh_interval_seconds"]
            ),
        ],
        [
            "time from start to every Secret present".into(),
            format!("{} s", f["start"]["seconds_to_every_credential_ready"]),
            format!("{} s", e["start"]["seconds_to_every_secret_present"]),
        ],
        [
            "RSS peak / steady median".into(),
            format!(
                "{} MiB / {} MiB",
                f["overall"]["peak_rss_mib"], s["rss_mib_median_second_half"]
            ),
            format!(
                "{} MiB / {} MiB",
                e["peak_rss_mib"], es["rss_mib_median_second_half"]
            ),
        ],
        [
            "CPU seconds per refresh (steady)".into(),
            s["cpu_seconds_per_refresh"].to_string(),
            es["cpu_seconds_per_refresh"].to_string(),
        ],
        [
            "API server + etcd CPU seconds per refresh (steady)".into(),
            format!(
                "{} + {}",
                s["control_plane"]["kube_apiserver_cpu_seconds_per_refresh"],
                s["control_plane"]["etcd_cpu_seconds_per_refresh"]
            ),
            format!(
                "{} + {}",
                es["control_plane"]["kube_apiserver_cpu_seconds_per_refresh"],
                es["control_plane"]["etcd_cpu_seconds_per_refresh"]
            ),
        ],
        [
            "API writes per refresh (steady)".into(),
            format!("{} ({})", s["writes_per_refresh"], s["writes_by_resource"]),
            format!("{} ({})", es["writes_per_refresh"], es["writes_by_resource"]),
        ],
        [
            "API reads (GET, LIST) per refresh, every client of the API server (steady)".into(),
            s["api_reads_per_refresh_all_clients"].to_string(),
            es["api_reads_per_refresh_all_clients"].to_string(),
        ],
        [
            "token-endpoint calls per hour per credential (steady)".into(),
            s["token_endpoint_calls_per_hour_per_credential"].to_string(),
            es["token_endpoint_calls_per_hour_per_credential"].to_string(),
        ],
        [
            "refreshes that landed after the token expired (steady / whole run)".into(),
            format!(
                "{} / {}",
                s["refreshes_after_expiry"],
                f["overall"]["refreshes_after_expiry_outside_the_outage"]
            ),
            if es["refreshes_after_expiry"].as_u64().unwrap_or(0) == 0 {
                format!(
                    "{} / {}",
                    es["refreshes_after_expiry"], e["refreshes_after_expiry"]
                )
            } else {
                format!(
                    "{} / {} (the Secret held an expired token for p50 {} s, max {} s)",
                    es["refreshes_after_expiry"],
                    e["refreshes_after_expiry"],
                    es["seconds_expired_before_refresh"]["p50"],
                    es["seconds_expired_before_refresh"]["max"]
                )
            },
        ],
        [
            "lateness, p50 / p99 / max (operator: against status.refreshAt; ESO: against the previous refresh + refreshInterval)".into(),
            format!(
                "{} s / {} s / {} s",
                s["lateness_seconds"]["p50"], s["lateness_seconds"]["p99"], s["lateness_seconds"]["max"]
            ),
            format!(
                "{} s / {} s / {} s",
                es["lateness_seconds"]["p50"], es["lateness_seconds"]["p99"], es["lateness_seconds"]["max"]
            ),
        ],
        [
            "restart: time to every object reconciled / calls / writes".into(),
            format!(
                "{} s / {} calls ({} not yet due) / {} writes",
                r["seconds_to_every_credential_scheduled"],
                r["token_endpoint_calls"],
                r["calls_before_their_scheduled_time"],
                r["writes"]
            ),
            format!(
                "{} s / {} calls ({} not yet due) / {} writes",
                er["seconds_to_every_external_secret_reconciled"],
                er["token_endpoint_calls"],
                er["calls_before_their_refresh_interval"],
                er["writes"]
            ),
        ],
        [
            "refresh token revoked: a state that says a person must act".into(),
            "`ReauthRequired=True`, one event, no more calls".into(),
            "n/a (the ExternalSecret reports a sync error and retries)".into(),
        ],
        [
            "refresh token at rest".into(),
            "sealed (XChaCha20-Poly1305, bound to credential, endpoint and client)".into(),
            "n/a (plain in a Secret the generator reads)".into(),
        ],
        [
            "refresh scheduled from the token's expiry".into(),
            "yes".into(),
            "n/a (fixed refreshInterval)".into(),
        ],
    ];
    let mut out = format!(
        "{} credentials each, {} s tokens, same control plane and token endpoint, one after the other.\n\n| | oauth-token-operator | External Secrets Operator v0.19.2 |\n|---|---|---|\n",
        p["credentials"], p["token_lifetime_seconds"]
    );
    for [what, ours, theirs] in rows {
        let _ = writeln!(out, "| {what} | {ours} | {theirs} |");
    }
    out
}
