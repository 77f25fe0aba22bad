//! `hull events ID`: the container's resource usage as runc prints it (`--stats`: once).

use std::time::Duration;

use anyhow::{anyhow, Result};
use hull::state::Status;
use hull_protocol::ContainerStats;
use serde_json::{json, Value};

use crate::cli::Cli;
use crate::supervisor::control::{request_reply, ControlRequest};

pub fn run(cli: &Cli, id: &str, once: bool, interval: u64) -> Result<i32> {
    loop {
        let (dir, _) =
            super::container(cli, id, "read the events of", &[Status::Created, Status::Running, Status::Paused])?;
        let reply = request_reply(&dir.control_socket(), &ControlRequest::Stats, Some(Duration::from_secs(30)))?;
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
