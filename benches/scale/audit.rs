//! Writes to the API server, read from its audit log (the control plane logs
//! every write at Metadata level). The operator runs impersonating its own
//! user, so its writes are told apart from the benchmark's.

use std::io::{BufRead, BufReader};
use std::path::Path;

/// One write request.
#[derive(Clone, Debug)]
pub struct Write {
    /// Unix milliseconds when the API server finished it.
    pub at: i64,
    /// `secrets`, `oauthcredentials/status`, `events`, `leases`, ...
    /// (names are unique across the benchmark's namespaces)
    pub resource: String,
    pub name: String,
    pub code: u16,
}

impl Write {
    /// The credential the object belongs to, by the benchmark's naming
    /// (`cNNNNN`, `cNNNNN-token`, `cNNNNN-refresh`).
    pub fn credential(&self) -> Option<u32> {
        let base = self.name.strip_prefix('c')?;
        let digits: String = base.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    }
}

/// Every completed write made as `user` (impersonated), from `log` and the
/// files the API server rotated it into (`audit-<time>.log`, every 100 MB).
pub fn writes_by(log: &Path, user: &str) -> Vec<Write> {
    let directory = log.parent().expect("the audit log is in a directory");
    let stem = log.file_stem().and_then(|s| s.to_str()).unwrap_or("audit");
    let mut files: Vec<_> = std::fs::read_dir(directory)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", directory.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(stem) && n.ends_with(".log"))
        })
        .collect();
    files.sort();
    let mut writes = Vec::new();
    for file in files {
        read_writes(&file, user, &mut writes);
    }
    writes.sort_by_key(|w| w.at);
    writes
}

fn read_writes(log: &Path, user: &str, writes: &mut Vec<Write>) {
    let file = std::fs::File::open(log)
        .unwrap_or_else(|e| panic!("cannot read the audit log {}: {e}", log.display()));
    for line in BufReader::new(file).lines() {
        let Ok(line) = line else { break };
        // Cheap filter before parsing: most lines are someone else's.
        if !line.contains(user) {
            continue;
        }
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["impersonatedUser"]["username"] != user
            || event["stage"] != "ResponseComplete"
            || !matches!(
                event["verb"].as_str(),
                Some("create" | "update" | "patch" | "delete" | "deletecollection")
            )
        {
            continue;
        }
        let Some(at) = event["stageTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok())
        else {
            continue;
        };
        let object = &event["objectRef"];
        let mut resource = object["resource"].as_str().unwrap_or("").to_string();
        if let Some(sub) = object["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        writes.push(Write {
            at: at.as_millisecond(),
            resource,
            name: object["name"].as_str().unwrap_or("").to_string(),
            code: event["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
        });
    }
}
