//! `events` (resource usage, as runc prints it) and `update` (new limits).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use clap::Args;
use hull_protocol::{ContainerStats, ResourceUpdate};
use serde_json::{json, Value};

use super::Cli;
use crate::state::{StateDir, Status};
use crate::supervisor;
use crate::supervisor::control::{request, request_reply, ControlRequest};

const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args, Debug, Clone)]
pub struct UpdateArgs {
    /// OCI `linux.resources` JSON file ("-" for stdin); the flags below override it.
    #[arg(short, long)]
    pub resources: Option<PathBuf>,
    /// Memory limit in bytes (suffixes k, m, g allowed; -1 for none).
    #[arg(long, allow_hyphen_values = true)]
    pub memory: Option<String>,
    #[arg(long)]
    pub cpu_shares: Option<u64>,
    #[arg(long, allow_hyphen_values = true)]
    pub cpu_quota: Option<i64>,
    #[arg(long)]
    pub cpu_period: Option<u64>,
    #[arg(long)]
    pub cpuset_cpus: Option<String>,
    #[arg(long, allow_hyphen_values = true)]
    pub pids_limit: Option<i64>,
    pub id: String,
}

fn running(cli: &Cli, id: &str) -> Result<StateDir> {
    let dir = StateDir::new(&cli.root, id)?;
    let status = supervisor::effective_status(&dir.read()?);
    if !matches!(status, Status::Created | Status::Running | Status::Paused) {
        bail!("container {id} is {}", status.as_str());
    }
    Ok(dir)
}

pub fn update(cli: &Cli, args: &UpdateArgs) -> Result<i32> {
    let mut resources: Value = match &args.resources {
        Some(path) => {
            let text = if path.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(path).map_err(|e| anyhow!("--resources {}: {e}", path.display()))?
            };
            serde_json::from_str(&text).map_err(|e| anyhow!("--resources {}: not valid JSON: {e}", path.display()))?
        }
        None => json!({}),
    };
    if let Some(m) = &args.memory {
        resources["memory"]["limit"] = json!(parse_bytes(m).ok_or_else(|| anyhow!("--memory {m:?}: expected bytes, e.g. 64m"))?);
    }
    let cpu = [
        ("shares", args.cpu_shares.map(|v| json!(v))),
        ("quota", args.cpu_quota.map(|v| json!(v))),
        ("period", args.cpu_period.map(|v| json!(v))),
        ("cpus", args.cpuset_cpus.as_ref().map(|v| json!(v))),
    ];
    for (key, value) in cpu {
        if let Some(v) = value {
            resources["cpu"][key] = v;
        }
    }
    if let Some(p) = args.pids_limit {
        resources["pids"]["limit"] = json!(p);
    }
    let update = ResourceUpdate::from_oci(&resources).map_err(|e| anyhow!("resources: {e}"))?;
    let dir = running(cli, &args.id)?;
    request(&dir.control_socket(), &ControlRequest::Update { update }, TIMEOUT)?;
    Ok(0)
}

/// "64m" → 67108864; plain numbers are bytes; "-1" means no limit.
fn parse_bytes(text: &str) -> Option<i64> {
    let lower = text.trim().to_ascii_lowercase();
    let digits = lower.trim_end_matches('b');
    let (number, unit) = match digits.char_indices().last()? {
        (i, c @ ('k' | 'm' | 'g' | 't')) => (&digits[..i], c),
        _ => (digits, ' '),
    };
    let n: i64 = number.parse().ok()?;
    let scale: i64 = match unit {
        'k' => 1 << 10,
        'm' => 1 << 20,
        'g' => 1 << 30,
        't' => 1 << 40,
        _ => 1,
    };
    n.checked_mul(scale)
}

pub fn events(cli: &Cli, id: &str, once: bool, interval: u64) -> Result<i32> {
    loop {
        let dir = running(cli, id)?;
        let reply = request_reply(&dir.control_socket(), &ControlRequest::Stats, Some(TIMEOUT))?;
        let stats = reply.stats.ok_or_else(|| anyhow!("supervisor sent no stats"))?;
        super::emit(&json!({"type": "stats", "id": id, "data": runc_stats(&stats)}).to_string());
        if once {
            return Ok(0);
        }
        std::thread::sleep(Duration::from_secs(interval.max(1)));
    }
}

/// The shape of runc's `events --stats` data (nanoseconds for CPU time, as runc reports).
fn runc_stats(s: &ContainerStats) -> Value {
    json!({
        "cpu": {
            "usage": {"total": s.cpu.usage_usec * 1000, "user": s.cpu.user_usec * 1000, "kernel": s.cpu.system_usec * 1000},
            "throttling": {"periods": s.cpu.nr_periods, "throttled_periods": s.cpu.nr_throttled, "throttled_time": s.cpu.throttled_usec * 1000}
        },
        "memory": {
            "usage": {"usage": s.memory.usage, "limit": s.memory.limit.unwrap_or(u64::MAX), "max": s.memory.max_usage, "failcnt": s.memory.events_max},
            "raw": {"anon": s.memory.anon, "file": s.memory.file, "kernel_stack": s.memory.kernel_stack, "slab": s.memory.slab,
                    "sock": s.memory.sock, "shmem": s.memory.shmem, "pgfault": s.memory.pgfault, "pgmajfault": s.memory.pgmajfault,
                    "oom": s.memory.events_oom, "oom_kill": s.memory.events_oom_kill}
        },
        "pids": {"current": s.pids.current, "limit": s.pids.limit.unwrap_or(0)}
    })
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn byte_sizes() {
        assert_eq!(parse_bytes("64m"), Some(64 << 20));
        assert_eq!(parse_bytes("1G"), Some(1 << 30));
        assert_eq!(parse_bytes("512kb"), Some(512 << 10));
        assert_eq!(parse_bytes("4096"), Some(4096));
        assert_eq!(parse_bytes("-1"), Some(-1));
        assert_eq!(parse_bytes("lots"), None);
    }
}
