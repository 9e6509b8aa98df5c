//! Samples, once a second from /proc, the resident memory and CPU time of the
//! processes the benchmark watches (the operator or its peer, the API server,
//! etcd), following whichever process currently plays each role across
//! restarts, and the machine's load average: the machine is shared, and a
//! figure taken while something else ran must say so.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::provider::now_ms;

#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub at: i64,
    /// The role: `operator`, `eso`, `kube-apiserver`, `etcd`.
    pub who: &'static str,
    pub pid: u32,
    pub rss_kib: u64,
    /// User plus system CPU time of the process so far, in seconds.
    pub cpu_seconds: f64,
}

/// `/proc/loadavg` at one moment.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    pub at: i64,
    pub one_minute: f64,
    /// Runnable tasks at that moment (the fourth field's numerator).
    pub runnable: u32,
}

#[derive(Clone, Default)]
pub struct Sampler {
    roles: Arc<Mutex<HashMap<&'static str, u32>>>,
    samples: Arc<Mutex<Vec<Sample>>>,
    load: Arc<Mutex<Vec<Load>>>,
}

impl Sampler {
    pub fn start() -> Self {
        let sampler = Sampler::default();
        let ticks = clock_ticks();
        let background = sampler.clone();
        tokio::spawn(async move {
            loop {
                let roles: Vec<(&'static str, u32)> = background
                    .roles
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|(w, p)| (*w, *p))
                    .collect();
                let mut taken: Vec<Sample> = roles
                    .into_iter()
                    .filter(|(_, pid)| *pid != 0)
                    .filter_map(|(who, pid)| read(who, pid, ticks))
                    .collect();
                background.samples.lock().unwrap().append(&mut taken);
                if let Some(load) = read_load() {
                    background.load.lock().unwrap().push(load);
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        sampler
    }

    /// Samples `pid` as `who` from now on (0: nothing).
    pub fn follow(&self, who: &'static str, pid: u32) {
        self.roles.lock().unwrap().insert(who, pid);
    }

    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    pub fn load(&self) -> Vec<Load> {
        self.load.lock().unwrap().clone()
    }
}

fn read(who: &'static str, pid: u32, ticks: f64) -> Option<Sample> {
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
        who,
        pid,
        rss_kib,
        cpu_seconds: (utime + stime) / ticks,
    })
}

fn read_load() -> Option<Load> {
    let text = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut fields = text.split_whitespace();
    let one_minute = fields.next()?.parse().ok()?;
    let runnable = fields.nth(2)?.split('/').next()?.parse().ok()?;
    Some(Load {
        at: now_ms(),
        one_minute,
        runnable,
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

/// The pid in a control plane's pid file (`<dir>/<name>.pid`), if any.
pub fn pid_file(dir: &std::path::Path, name: &str) -> Option<u32> {
    std::fs::read_to_string(dir.join(format!("{name}.pid")))
        .ok()?
        .trim()
        .parse()
        .ok()
}
