//! `hull update ID`: change a running container's limits.

use anyhow::{anyhow, Result};
use hull::state::Status;
use hull_protocol::ResourceUpdate;
use serde_json::{json, Value};

use crate::cli::{Cli, UpdateArgs};
use crate::supervisor::control::ControlRequest;

pub fn run(cli: &Cli, args: &UpdateArgs) -> Result<i32> {
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
        resources["memory"]["limit"] =
            json!(parse_bytes(m).ok_or_else(|| anyhow!("--memory {m:?}: expected bytes, e.g. 64m"))?);
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
    let (dir, _) = super::container(cli, &args.id, "update", &[Status::Created, Status::Running, Status::Paused])?;
    super::request(&dir, &ControlRequest::Update { update })?;
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
