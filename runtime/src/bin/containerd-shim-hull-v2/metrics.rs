//! The guest's cgroup counters in containerd's cgroup v2 metrics type, which `ctr task
//! metrics` and CRI's container stats read.

use containerd_shim_protos::cgroups_v2::metrics::{CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{Message, MessageField};
use hull_protocol::ContainerStats;

pub fn to_any(stats: &ContainerStats) -> Any {
    let (cpu, mem) = (&stats.cpu, &stats.memory);
    let metrics = Metrics {
        pids: MessageField::some(PidsStat {
            current: stats.pids.current,
            limit: stats.pids.limit.unwrap_or(0),
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage_usec: cpu.usage_usec,
            user_usec: cpu.user_usec,
            system_usec: cpu.system_usec,
            nr_periods: cpu.nr_periods,
            nr_throttled: cpu.nr_throttled,
            throttled_usec: cpu.throttled_usec,
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            usage: mem.usage,
            // containerd reports "no limit" as the largest value, as the runc shim does.
            usage_limit: mem.limit.unwrap_or(u64::MAX),
            max_usage: mem.max_usage,
            anon: mem.anon,
            file: mem.file,
            kernel_stack: mem.kernel_stack,
            slab: mem.slab,
            sock: mem.sock,
            shmem: mem.shmem,
            pgfault: mem.pgfault,
            pgmajfault: mem.pgmajfault,
            ..Default::default()
        }),
        memory_events: MessageField::some(MemoryEvents {
            max: mem.events_max,
            oom: mem.events_oom,
            oom_kill: mem.events_oom_kill,
            ..Default::default()
        }),
        ..Default::default()
    };
    Any {
        // Resolved by bare name, like events.
        type_url: "io.containerd.cgroups.v2.Metrics".into(),
        value: metrics.write_to_bytes().unwrap_or_default(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::MessageFull;

    #[test]
    fn metrics_round_trip_under_containerds_name() {
        let mut stats = ContainerStats::default();
        stats.memory.usage = 4096;
        stats.pids.current = 3;
        let any = to_any(&stats);
        assert_eq!(any.type_url, Metrics::descriptor().full_name());
        let back = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!((back.memory.usage, back.memory.usage_limit, back.pids.current), (4096, u64::MAX, 3));
    }
}
