//! Resource usage and limits of a container, as its guest cgroup (v2) reports and takes them.

use serde::{Deserialize, Serialize};

/// A limit that may be absent (cgroup v2 writes "max").
pub type Limit = Option<u64>;

/// One reading of a container's cgroup. Every field is a counter or a gauge copied from the
/// cgroup files; a file the kernel does not have reads as zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerStats {
    pub cpu: CpuStats,
    pub memory: MemoryStats,
    pub pids: PidsStats,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CpuStats {
    pub usage_usec: u64,
    pub user_usec: u64,
    pub system_usec: u64,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_usec: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MemoryStats {
    /// `memory.current`.
    pub usage: u64,
    /// `memory.max`.
    pub limit: Limit,
    /// `memory.peak`, where the kernel has it.
    pub max_usage: u64,
    pub anon: u64,
    pub file: u64,
    pub kernel_stack: u64,
    pub slab: u64,
    pub sock: u64,
    pub shmem: u64,
    pub pgfault: u64,
    pub pgmajfault: u64,
    /// `memory.events`.
    pub events_max: u64,
    pub events_oom: u64,
    pub events_oom_kill: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PidsStats {
    pub current: u64,
    pub limit: Limit,
}

/// New limits for a running container (`runc update`, CRI UpdateContainerResources). Absent
/// fields stay as they are.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceUpdate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_shares: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpuset_cpus: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<i64>,
}

impl ResourceUpdate {
    /// Take what hull applies from an OCI `linux.resources` object, refusing values no cgroup
    /// takes, with the field named.
    pub fn from_oci(resources: &serde_json::Value) -> Result<ResourceUpdate, String> {
        let int = |path: &[&str]| -> Result<Option<i64>, String> {
            let mut v = resources;
            for key in path {
                match v.get(key) {
                    Some(next) => v = next,
                    None => return Ok(None),
                }
            }
            if v.is_null() {
                return Ok(None);
            }
            v.as_i64().map(Some).ok_or_else(|| format!("field `{}`: not an integer", path.join(".")))
        };
        let non_negative = |path: &[&str]| -> Result<Option<u64>, String> {
            match int(path)? {
                Some(n) if n < 0 => Err(format!("field `{}`: must not be negative", path.join("."))),
                other => Ok(other.map(|n| n as u64)),
            }
        };
        let update = ResourceUpdate {
            memory_limit: int(&["memory", "limit"])?,
            cpu_shares: non_negative(&["cpu", "shares"])?,
            cpu_quota: int(&["cpu", "quota"])?,
            cpu_period: non_negative(&["cpu", "period"])?,
            cpuset_cpus: resources["cpu"]["cpus"].as_str().filter(|s| !s.is_empty()).map(str::to_string),
            pids_limit: int(&["pids", "limit"])?,
        };
        if let Some(cpus) = &update.cpuset_cpus {
            if cpus.len() > 256 || !cpus.chars().all(|c| c.is_ascii_digit() || c == ',' || c == '-') {
                return Err(format!("field `cpu.cpus`: {cpus:?} is not a CPU list"));
            }
        }
        if update.memory_limit.is_some_and(|m| m != -1 && m < 4096) {
            return Err("field `memory.limit`: below one page".into());
        }
        Ok(update)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn oci_resources_map_and_bad_values_name_the_field() {
        let u = ResourceUpdate::from_oci(&json!({"memory": {"limit": 67108864}, "cpu": {"quota": 50000, "period": 100000, "cpus": "0"}, "pids": {"limit": 20}})).unwrap();
        assert_eq!(u.memory_limit, Some(64 << 20));
        assert_eq!(
            (u.cpu_quota, u.cpu_period, u.cpuset_cpus.as_deref(), u.pids_limit),
            (Some(50000), Some(100000), Some("0"), Some(20))
        );
        assert_eq!(ResourceUpdate::from_oci(&json!({})).unwrap(), ResourceUpdate::default());
        assert!(ResourceUpdate::from_oci(&json!({"cpu": {"shares": -1}})).unwrap_err().contains("cpu.shares"));
        assert!(ResourceUpdate::from_oci(&json!({"memory": {"limit": "lots"}})).unwrap_err().contains("memory.limit"));
        assert!(ResourceUpdate::from_oci(&json!({"cpu": {"cpus": "0; rm -rf"}})).unwrap_err().contains("cpu.cpus"));
    }
}
