//! Turns what the benchmark recorded into figures: `results.json` (every
//! figure), `summary.md` (the table for the README), and the time series
//! `refreshes.csv` and `memory.csv` that `scripts/bench-plot` draws.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use serde_json::{Value, json};

use crate::Args;
use crate::audit::Write;
use crate::provider::{Call, now_ms};
use crate::sampler::Sample;

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
    fn contains(&self, at: i64) -> bool {
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
        }
    }

    fn phase(&self, name: &str) -> &Phase {
        self.phases
            .iter()
            .find(|p| p.name == name)
            .expect("every phase ran")
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

    fn samples_in(&self, phase: &Phase) -> Vec<Sample> {
        self.samples
            .iter()
            .filter(|s| phase.contains(s.at))
            .copied()
            .collect()
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
        let start = self.phase("start");
        let steady = self.phase("steady");
        let restart = self.phase("restart");
        let outage = self.phase("outage");

        // Steady state.
        let steady_calls = self.calls_in(steady);
        let late = Self::lateness(&steady_calls);
        let steady_writes = self.writes_in(steady);
        let steady_samples = self.samples_in(steady);
        let cpu = match (steady_samples.first(), steady_samples.last()) {
            (Some(a), Some(b)) if a.pid == b.pid => b.cpu_seconds - a.cpu_seconds,
            _ => f64::NAN,
        };
        let mut steady_rss: Vec<f64> = steady_samples
            .iter()
            .skip(steady_samples.len() / 2)
            .map(|s| s.rss_kib as f64 / 1024.0)
            .collect();
        steady_rss.sort_by(f64::total_cmp);
        let peak_rss = self
            .samples
            .iter()
            .map(|s| s.rss_kib as f64 / 1024.0)
            .fold(0.0, f64::max);
        let all_outside_outage: Vec<Call> = self
            .calls
            .iter()
            .filter(|c| !outage.contains(c.at))
            .copied()
            .collect();

        // Restart with every token valid.
        let restart_calls = self.calls_in(restart);
        let early = restart_calls
            .iter()
            .filter(|c| c.scheduled > 0 && c.at < c.scheduled - 1000)
            .count();
        let refreshed: HashSet<u32> = restart_calls.iter().map(|c| c.credential).collect();
        let restart_writes = self.writes_in(restart);
        let idle_writes: Vec<&Write> = restart_writes
            .iter()
            .filter(|w| w.credential().is_some_and(|c| !refreshed.contains(&c)))
            .copied()
            .collect();
        let other_writes: Vec<&Write> = restart_writes
            .iter()
            .filter(|w| w.credential().is_none())
            .copied()
            .collect();
        let idle_reconciles = n.saturating_sub(refreshed.len());

        // Outage: all due at once.
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
        let mut outage_calls = self.calls_in(outage);
        outage_calls.sort_by_key(|c| c.at);
        // Earliest-expiry-first at the rate limit, from the operator's first
        // call on: the best any order can do.
        let first_call = outage_calls.first().map_or(t0, |c| c.at);
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
        for call in &outage_calls {
            first_after.entry(call.credential).or_insert(*call);
        }
        let outage_expired = first_after
            .values()
            .filter(|c| c.replaced_expiry > t0 && c.at > c.replaced_expiry)
            .count();
        let mut per_second: HashMap<i64, usize> = HashMap::new();
        for call in &outage_calls {
            *per_second.entry((call.at - t0) / 1000).or_default() += 1;
        }
        let outage_late = Self::lateness(&outage_calls);

        let ceiling = self
            .ceiling
            .iter()
            .map(|(_, rate)| *rate)
            .fold(0.0, f64::max);
        let peak_writes = self.peak_write_rate();
        let start_calls = self.calls_in(start);
        let start_writes = self.writes_in(start);

        json!({
            "machine": self.machine,
            "parameters": {
                "credentials": n,
                "token_lifetime_seconds": self.args.lifetime,
                "steady_seconds": self.args.steady,
                "token_endpoint_rate": self.args.rate,
                "token_endpoint_burst": self.args.burst,
                "concurrency": self.args.concurrency,
            },
            "run": {"started_at_ms": self.started_at, "finished_at_ms": self.finished_at},
            "create": {"seconds": round(self.create_seconds, 1)},
            "api_server_ceiling": {
                "writes_per_second_by_in_flight": self.ceiling.iter().map(|(k, r)| json!({"in_flight": k, "writes_per_second": round(*r, 0)})).collect::<Vec<_>>(),
                "writes_per_second": round(ceiling, 0),
                "operator_peak_writes_per_second_10s": round(peak_writes, 1),
                "operator_peak_fraction_of_ceiling": round(peak_writes / ceiling, 3),
            },
            "start": {
                "seconds_to_every_credential_scheduled": round(self.start_to_scheduled, 1),
                "seconds_to_every_credential_ready": round(self.start_to_ready, 1),
                "rate_limit_floor_seconds": round(n as f64 / rate, 1),
                "token_endpoint_calls": start_calls.len(),
                "writes": start_writes.len(),
                "writes_by_resource": Self::by_resource(&start_writes),
                "peak_rss_mib": round(self.samples_in(start).iter().map(|s| s.rss_kib as f64 / 1024.0).fold(0.0, f64::max), 1),
            },
            "steady": {
                "seconds": round((steady.end - steady.start) as f64 / 1000.0, 0),
                "refreshes": steady_calls.len(),
                "refreshes_after_expiry": Self::expired(&steady_calls),
                "lateness_seconds": {
                    "count": late.len(),
                    "p50": round(percentile(&late, 50.0), 3),
                    "p99": round(percentile(&late, 99.0), 3),
                    "max": round(late.last().copied().unwrap_or(f64::NAN), 3),
                    "min": round(late.first().copied().unwrap_or(f64::NAN), 3),
                },
                "writes": steady_writes.len(),
                "writes_refused": steady_writes.iter().filter(|w| w.code >= 300).count(),
                "writes_by_resource": Self::by_resource(&steady_writes),
                "writes_per_refresh": round(steady_writes.len() as f64 / steady_calls.len() as f64, 3),
                "token_endpoint_calls_per_refresh": round(steady_calls.len() as f64 / (steady_calls.len() - self.repeats(&steady_calls)) as f64, 3),
                "rss_mib_median_second_half": round(percentile(&steady_rss, 50.0), 1),
                "cpu_seconds": round(cpu, 2),
                "cpu_seconds_per_refresh": round(cpu / steady_calls.len() as f64, 5),
            },
            "restart": {
                "seconds_to_every_credential_scheduled": round(self.restart_to_scheduled, 1),
                "token_endpoint_calls": restart_calls.len(),
                "calls_before_their_scheduled_time": early,
                "idle_reconciles": idle_reconciles,
                "writes_for_idle_credentials": idle_writes.len(),
                "writes_per_idle_reconcile": round(idle_writes.len() as f64 / idle_reconciles.max(1) as f64, 4),
                "writes_for_refreshed_credentials": restart_writes.len() - idle_writes.len() - other_writes.len(),
                "other_writes_by_resource": Self::by_resource(&other_writes),
            },
            "outage": {
                "credentials_due": n,
                "tokens_expired_before_restart": already_expired,
                "seconds_to_first_call": round((first_call - t0) as f64 / 1000.0, 1),
                "seconds_to_every_credential_refreshed": round(self.outage_recovery, 1),
                "max_calls_in_one_second": per_second.values().copied().max().unwrap_or(0),
                "tokens_expired_before_their_refresh": outage_expired,
                "tokens_an_earliest_expiry_first_order_would_lose_at_the_rate_limit": ideal_expired,
                "lateness_seconds": {
                    "p50": round(percentile(&outage_late, 50.0), 1),
                    "p99": round(percentile(&outage_late, 99.0), 1),
                    "max": round(outage_late.last().copied().unwrap_or(f64::NAN), 1),
                },
            },
            "overall": {
                "refreshes": self.calls.len(),
                "refreshes_after_expiry_outside_the_outage": Self::expired(&all_outside_outage),
                "peak_rss_mib": round(peak_rss, 1),
            },
        })
    }

    /// Writes every output; returns the Markdown summary.
    pub fn write(&self, out: &Path) -> String {
        let figures = self.figures();
        std::fs::write(
            out.join("results.json"),
            serde_json::to_string_pretty(&figures).unwrap(),
        )
        .unwrap();
        let mut csv = String::from("seconds,phase,lateness_seconds,after_expiry\n");
        let mut calls = self.calls.clone();
        calls.sort_by_key(|c| c.at);
        for call in calls.iter().filter(|c| c.scheduled > 0) {
            let phase = self
                .phases
                .iter()
                .find(|p| p.contains(call.at))
                .map_or("between", |p| p.name);
            let _ = writeln!(
                csv,
                "{:.3},{phase},{:.3},{}",
                (call.at - self.started_at) as f64 / 1000.0,
                (call.at - call.scheduled) as f64 / 1000.0,
                u8::from(call.replaced_expiry > 0 && call.at > call.replaced_expiry)
            );
        }
        std::fs::write(out.join("refreshes.csv"), csv).unwrap();
        let mut csv = String::from("seconds,pid,rss_mib,cpu_seconds\n");
        for sample in &self.samples {
            let _ = writeln!(
                csv,
                "{:.1},{},{:.1},{:.2}",
                (sample.at - self.started_at) as f64 / 1000.0,
                sample.pid,
                sample.rss_kib as f64 / 1024.0,
                sample.cpu_seconds
            );
        }
        std::fs::write(out.join("memory.csv"), csv).unwrap();
        let mut csv = String::from("phase,start_seconds,end_seconds\n");
        for phase in &self.phases {
            let _ = writeln!(
                csv,
                "{},{:.1},{:.1}",
                phase.name,
                (phase.start - self.started_at) as f64 / 1000.0,
                (phase.end - self.started_at) as f64 / 1000.0
            );
        }
        std::fs::write(out.join("phases.csv"), csv).unwrap();
        let summary = summary(&figures);
        std::fs::write(out.join("summary.md"), &summary).unwrap();
        summary
    }
}

/// The Markdown table: each figure, its target, and whether it was met.
pub fn summary(f: &Value) -> String {
    let p = &f["parameters"];
    let m = &f["machine"];
    let yes_no = |ok: bool| if ok { "met" } else { "**missed**" };
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    let mut row = |what: &str, value: String, target: &str, verdict: &str| {
        rows.push((what.into(), value, target.into(), verdict.into()));
    };
    let s = &f["steady"];
    let r = &f["restart"];
    let o = &f["outage"];
    let st = &f["start"];
    let c = &f["api_server_ceiling"];
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
        yes_no(after == 0),
    );
    let l = &s["lateness_seconds"];
    row(
        "lateness against the scheduled time, p50 / p99 / max",
        format!("{} s / {} s / {} s", l["p50"], l["p99"], l["max"]),
        "p99 < 2 s",
        yes_no(num(&l["p99"]) < 2.0),
    );
    row(
        "API writes per refresh",
        format!("{} ({})", s["writes_per_refresh"], s["writes_by_resource"]),
        "≤ 2.0",
        yes_no(num(&s["writes_per_refresh"]) <= 2.0),
    );
    row(
        "API writes per reconcile with nothing to do (restart)",
        format!(
            "{} ({} writes, {} idle reconciles)",
            r["writes_per_idle_reconcile"], r["writes_for_idle_credentials"], r["idle_reconciles"]
        ),
        "0",
        yes_no(r["writes_for_idle_credentials"].as_u64() == Some(0)),
    );
    row(
        "token-endpoint calls per refresh",
        s["token_endpoint_calls_per_refresh"].to_string(),
        "1.0",
        yes_no(num(&s["token_endpoint_calls_per_refresh"]) <= 1.0),
    );
    row(
        "calls during the restart for tokens not yet due",
        format!(
            "{} of the {} calls in the start-up pass",
            r["calls_before_their_scheduled_time"], r["token_endpoint_calls"]
        ),
        "0",
        yes_no(r["calls_before_their_scheduled_time"].as_u64() == Some(0)),
    );
    let peak = num(&f["overall"]["peak_rss_mib"]);
    row(
        "operator RSS, peak / steady median",
        format!("{peak} MiB / {} MiB", s["rss_mib_median_second_half"]),
        "< 150 MiB",
        yes_no(peak < 150.0),
    );
    row(
        "CPU seconds per refresh (steady)",
        format!(
            "{} ({} s in all)",
            s["cpu_seconds_per_refresh"], s["cpu_seconds"]
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
        yes_no(num(&r["seconds_to_every_credential_scheduled"]) < 60.0),
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
    row(
        "outage: all due at once, time to refresh all / max calls in 1 s",
        format!(
            "{} s / {} (limit {}/s, burst {})",
            o["seconds_to_every_credential_refreshed"],
            o["max_calls_in_one_second"],
            p["token_endpoint_rate"],
            p["token_endpoint_burst"]
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
        yes_no(lost <= ideal),
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
    for (what, value, target, verdict) in rows {
        let _ = writeln!(out, "| {what} | {value} | {target} | {verdict} |");
    }
    out
}
