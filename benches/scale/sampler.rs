//! Samples the operator's resident memory and CPU time once a second from
//! /proc, across restarts (it follows whichever process is current).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::provider::now_ms;

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: i64,
    pub pid: u32,
    pub rss_kib: u64,
    /// User plus system CPU time of the process so far, in seconds.
    pub cpu_seconds: f64,
}

#[derive(Clone)]
pub struct Sampler {
    pid: Arc<AtomicU32>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

impl Sampler {
    pub fn start() -> Self {
        let sampler = Sampler {
            pid: Arc::new(AtomicU32::new(0)),
            samples: Arc::new(Mutex::new(Vec::new())),
        };
        let ticks = clock_ticks();
        let background = sampler.clone();
        tokio::spawn(async move {
            loop {
                let pid = background.pid.load(Ordering::Relaxed);
                if pid != 0
                    && let Some(sample) = read(pid, ticks)
                {
                    background.samples.lock().unwrap().push(sample);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        sampler
    }

    /// Samples `pid` from now on (0: nothing).
    pub fn follow(&self, pid: u32) {
        self.pid.store(pid, Ordering::Relaxed);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }
}

fn read(pid: u32, ticks: f64) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some(Sample {
        at: now_ms(),
        pid,
        rss_kib,
        cpu_seconds: (utime + stime) / ticks,
    })
}

fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
