//! A container's cgroup (v2) in the guest: its counters, and limits changed after creation.
//! libcontainer places each container at `/hull/<id>` (the host sets `cgroupsPath`).

use std::fs;
use std::path::PathBuf;

use anyhow::{Context, Result};
use hull_protocol::resources::{CpuStats, Limit, MemoryStats, PidsStats};
use hull_protocol::{ContainerStats, ResourceUpdate};

fn dir(id: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/cgroup/hull/{id}"))
}

fn read(id: &str, file: &str) -> String {
    fs::read_to_string(dir(id).join(file)).unwrap_or_default()
}

/// `key value` lines (cpu.stat, memory.stat, memory.events) → the value of `key`, or 0.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

fn single(id: &str, file: &str) -> u64 {
    read(id, file).trim().parse().unwrap_or(0)
}

fn limit(id: &str, file: &str) -> Limit {
    read(id, file).trim().parse().ok()
}

pub fn oom_kills(id: &str) -> u64 {
    keyed(&read(id, "memory.events"), "oom_kill")
}

pub fn stats(id: &str) -> ContainerStats {
    let cpu = read(id, "cpu.stat");
    let mem = read(id, "memory.stat");
    let events = read(id, "memory.events");
    ContainerStats {
        cpu: CpuStats {
            usage_usec: keyed(&cpu, "usage_usec"),
            user_usec: keyed(&cpu, "user_usec"),
            system_usec: keyed(&cpu, "system_usec"),
            nr_periods: keyed(&cpu, "nr_periods"),
            nr_throttled: keyed(&cpu, "nr_throttled"),
            throttled_usec: keyed(&cpu, "throttled_usec"),
        },
        memory: MemoryStats {
            usage: single(id, "memory.current"),
            limit: limit(id, "memory.max"),
            max_usage: single(id, "memory.peak"),
            anon: keyed(&mem, "anon"),
            file: keyed(&mem, "file"),
            kernel_stack: keyed(&mem, "kernel_stack"),
            slab: keyed(&mem, "slab"),
            sock: keyed(&mem, "sock"),
            shmem: keyed(&mem, "shmem"),
            pgfault: keyed(&mem, "pgfault"),
            pgmajfault: keyed(&mem, "pgmajfault"),
            events_max: keyed(&events, "max"),
            events_oom: keyed(&events, "oom"),
            events_oom_kill: keyed(&events, "oom_kill"),
        },
        pids: PidsStats { current: single(id, "pids.current"), limit: limit(id, "pids.max") },
    }
}

fn write(id: &str, file: &str, value: &str) -> Result<()> {
    let path = dir(id).join(file);
    fs::write(&path, value).with_context(|| format!("writing {value:?} to {}", path.display()))
}

pub fn update(id: &str, u: &ResourceUpdate) -> Result<()> {
    let max = |v: i64| if v < 0 { "max".to_string() } else { v.to_string() };
    if let Some(m) = u.memory_limit {
        write(id, "memory.max", &max(m))?;
    }
    if u.cpu_quota.is_some() || u.cpu_period.is_some() {
        let current = read(id, "cpu.max");
        let mut parts = current.split_whitespace();
        let (old_quota, old_period) =
            (parts.next().unwrap_or("max").to_string(), parts.next().unwrap_or("100000").to_string());
        let quota = u.cpu_quota.map(max).unwrap_or(old_quota);
        let period = u.cpu_period.map(|p| p.to_string()).unwrap_or(old_period);
        write(id, "cpu.max", &format!("{quota} {period}"))?;
    }
    if let Some(shares) = u.cpu_shares {
        // The conversion runc and the kernel documentation use: shares [2, 262144] → weight [1, 10000].
        let shares = shares.clamp(2, 262_144);
        write(id, "cpu.weight", &(1 + (shares - 2) * 9999 / 262_142).to_string())?;
    }
    if let Some(cpus) = &u.cpuset_cpus {
        write(id, "cpuset.cpus", cpus)?;
    }
    if let Some(p) = u.pids_limit {
        write(id, "pids.max", &if p <= 0 { "max".to_string() } else { p.to_string() })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_lines() {
        let text = "usage_usec 120\nuser_usec 100\nsystem_usec 20\n";
        assert_eq!(keyed(text, "usage_usec"), 120);
        assert_eq!(keyed(text, "user"), 0, "a prefix of another key does not match");
        assert_eq!(keyed("oom 1\noom_kill 2\n", "oom"), 1);
        assert_eq!(keyed("oom 1\noom_kill 2\n", "oom_kill"), 2);
    }
}
