//! How big a VM a container gets. A container's `linux.resources` limits are enforced by its
//! cgroup inside the guest; the VM is as big as the memory limit plus room for the guest
//! kernel and the agent (no bigger: the host cgroup holds the VM to that plus the VMM's own
//! overhead, see `crate::cgroup`).

use oci_spec::runtime::Spec;

use super::SandboxConfig;

/// Memory the guest kernel, agent and page cache need beyond the container's limit.
const GUEST_OVERHEAD_MIB: u64 = 128;
/// Largest VM hull makes without being asked by a limit (and the cap for one that asks).
const MAX_MEMORY_MIB: u64 = 64 * 1024;

impl SandboxConfig {
    /// This config, fitted to the limits `spec` sets: memory to the limit plus guest overhead,
    /// vCPUs grown to the CPU quota (rounded up) or the cpuset's size, never more than the host
    /// has. Without a memory limit the default memory stays.
    pub fn sized_for(&self, spec: &Spec) -> SandboxConfig {
        let mut sized = self.clone();
        let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else { return sized };
        if let Some(limit) = resources.memory().as_ref().and_then(|m| m.limit()).filter(|l| *l > 0) {
            let mib = (limit as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB;
            sized.memory_mib = mib.min(MAX_MEMORY_MIB) as u32;
        }
        let host_cpus = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
        let cpu = resources.cpu().as_ref();
        let from_quota = cpu.and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p) as u32),
            _ => None,
        });
        let from_cpuset = cpu.and_then(|c| c.cpus().as_deref()).map(cpuset_size).filter(|n| *n > 0);
        if let Some(wanted) = from_quota.or(from_cpuset) {
            sized.vcpus = sized.vcpus.max(wanted.min(host_cpus));
        }
        sized
    }
}

/// How many CPUs a cpuset list ("0-3,6") names; 0 if it does not parse.
fn cpuset_size(list: &str) -> u32 {
    let mut n = 0;
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let range = match part.split_once('-') {
            Some((a, b)) => a.parse::<u32>().ok().zip(b.parse::<u32>().ok()),
            None => part.parse::<u32>().ok().map(|a| (a, a)),
        };
        match range {
            Some((a, b)) if b >= a => n += b - a + 1,
            _ => return 0,
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(resources: serde_json::Value) -> Spec {
        serde_json::from_value(serde_json::json!({"ociVersion": "1.2.0", "linux": {"resources": resources}})).unwrap()
    }

    #[test]
    fn limits_size_the_vm() {
        let base = SandboxConfig::default();
        let big = base.sized_for(&spec(serde_json::json!({"memory": {"limit": 1i64 << 30}})));
        assert_eq!(big.memory_mib, 1024 + 128);
        let small = base.sized_for(&spec(serde_json::json!({"memory": {"limit": 32i64 << 20}})));
        assert_eq!(small.memory_mib, 32 + 128, "the host cgroup holds the VM to its size");
        assert_eq!(base.sized_for(&spec(serde_json::json!({}))).memory_mib, base.memory_mib);
        let host = std::thread::available_parallelism().unwrap().get() as u32;
        let cpus = base.sized_for(&spec(serde_json::json!({"cpu": {"quota": 150000, "period": 100000}})));
        assert_eq!(cpus.vcpus, 2.min(host));
        let set = base.sized_for(&spec(serde_json::json!({"cpu": {"cpus": "0-1"}})));
        assert_eq!(set.vcpus, 2.min(host));
        assert_eq!(base.sized_for(&spec(serde_json::json!({}))).vcpus, 1);
    }

    #[test]
    fn cpuset_lists() {
        assert_eq!(cpuset_size("0-3,6"), 5);
        assert_eq!(cpuset_size("2"), 1);
        assert_eq!(cpuset_size("3-1"), 0);
        assert_eq!(cpuset_size("x"), 0);
    }
}
