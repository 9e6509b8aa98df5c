//! The standard `process_*` metrics (the names every Prometheus client
//! library exports and dashboards expect), read from `/proc/self` at each
//! scrape. Off Linux, or when `/proc` is not mounted, there are none.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// Clock ticks per second of `/proc/*/stat` times: the kernel's `USER_HZ`,
/// 100 on every architecture Linux exposes to user space this way.
const USER_HZ: f64 = 100.0;

#[derive(Debug, Default)]
pub struct ProcessCollector;

/// One reading of `/proc/self`; a field is `None` when its file is missing
/// or unreadable.
#[derive(Debug, Default, PartialEq)]
pub struct Sample {
    pub cpu_seconds: Option<f64>,
    pub resident_bytes: Option<i64>,
    pub virtual_bytes: Option<i64>,
    pub start_time_seconds: Option<f64>,
    pub open_fds: Option<i64>,
    pub max_fds: Option<i64>,
}

impl Sample {
    pub fn read() -> Self {
        let proc = |name: &str| std::fs::read_to_string(format!("/proc/self/{name}")).ok();
        let stat = proc("stat");
        let status = proc("status");
        let boot_time = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| field_after(&s, "btime"));
        Sample {
            cpu_seconds: proc("schedstat")
                .and_then(|s| cpu_from_schedstat(&s))
                .or_else(|| stat.as_deref().and_then(cpu_from_stat)),
            resident_bytes: status.as_deref().and_then(|s| kib(s, "VmRSS:")),
            virtual_bytes: status.as_deref().and_then(|s| kib(s, "VmSize:")),
            start_time_seconds: stat
                .as_deref()
                .and_then(|s| stat_field(s, 22))
                .zip(boot_time)
                .map(|(ticks, boot)| boot + ticks / USER_HZ),
            open_fds: std::fs::read_dir("/proc/self/fd")
                .ok()
                .map(|dir| dir.count() as i64),
            max_fds: proc("limits").and_then(|s| max_open_files(&s)),
        }
    }
}

/// Field `n` (1-based, as in proc(5)) of `/proc/self/stat`. The command
/// name (field 2) may hold spaces and parentheses, so count from its end.
fn stat_field(stat: &str, n: usize) -> Option<f64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

fn cpu_from_stat(stat: &str) -> Option<f64> {
    Some((stat_field(stat, 14)? + stat_field(stat, 15)?) / USER_HZ)
}

/// The first field of `/proc/self/schedstat`: nanoseconds on a CPU, exact
/// rather than in ticks.
fn cpu_from_schedstat(schedstat: &str) -> Option<f64> {
    let nanos: u64 = schedstat.split_whitespace().next()?.parse().ok()?;
    Some(nanos as f64 / 1e9)
}

fn field_after(text: &str, key: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(key))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn kib(status: &str, key: &str) -> Option<i64> {
    field_after(status, key).map(|k| (k as i64) * 1024)
}

fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sample = Sample::read();
        if let Some(v) = sample.cpu_seconds {
            let help = "Total user and system CPU time spent in seconds";
            let metric = encoder.encode_descriptor(
                "process_cpu",
                help,
                Some(&Unit::Seconds),
                ConstCounter::new(v).metric_type(),
            )?;
            ConstCounter::new(v).encode(metric)?;
        }
        let gauges = [
            (
                "process_resident_memory",
                "Resident memory size in bytes",
                sample.resident_bytes,
            ),
            (
                "process_virtual_memory",
                "Virtual memory size in bytes",
                sample.virtual_bytes,
            ),
        ];
        for (name, help, value) in gauges {
            if let Some(v) = value {
                let gauge = ConstGauge::new(v);
                let metric = encoder.encode_descriptor(
                    name,
                    help,
                    Some(&Unit::Bytes),
                    gauge.metric_type(),
                )?;
                gauge.encode(metric)?;
            }
        }
        if let Some(v) = sample.start_time_seconds {
            let gauge = ConstGauge::new(v);
            let help = "Start time of the process since unix epoch in seconds";
            let metric = encoder.encode_descriptor(
                "process_start_time",
                help,
                Some(&Unit::Seconds),
                gauge.metric_type(),
            )?;
            gauge.encode(metric)?;
        }
        let counts = [
            (
                "process_open_fds",
                "Number of open file descriptors",
                sample.open_fds,
            ),
            (
                "process_max_fds",
                "Maximum number of open file descriptors",
                sample.max_fds,
            ),
        ];
        for (name, help, value) in counts {
            if let Some(v) = value {
                let gauge = ConstGauge::new(v);
                let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
                gauge.encode(metric)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_past_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0 12345 1000 200 rest";
        assert_eq!(stat_field(stat, 3), None, "state is not a number");
        assert_eq!(stat_field(stat, 14), Some(250.0));
        assert_eq!(cpu_from_stat(stat), Some(3.0));
        assert_eq!(stat_field(stat, 22), Some(12345.0));
        assert_eq!(cpu_from_schedstat("1500000000 20 3\n"), Some(1.5));
        assert_eq!(
            kib("Name:\tx\nVmRSS:\t   2048 kB\n", "VmRSS:"),
            Some(2048 * 1024)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\nMax open files            1048576              1048576              files\n";
        assert_eq!(max_open_files(limits), Some(1_048_576));
    }

    #[test]
    fn this_process_is_read_on_linux() {
        let sample = Sample::read();
        assert!(sample.cpu_seconds.is_some_and(|s| s > 0.0), "{sample:?}");
        assert!(
            sample.resident_bytes.is_some_and(|b| b > 1 << 20),
            "{sample:?}"
        );
        assert!(sample.open_fds.is_some_and(|n| n >= 3), "{sample:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = sample.start_time_seconds.expect("start time");
        assert!(
            started <= now + 1.0 && started > now - 3600.0,
            "{started} vs {now}"
        );
    }
}
