//! OCI specs: the default one `hull spec` writes, and the rewrite for the guest.

use serde_json::{json, Value};

/// Guest path of the virtio-fs share (must match the agent).
pub const GUEST_SHARE_DIR: &str = "/run/hull/share";

/// The guest namespace holding the mirrored NICs.
pub const GUEST_NETNS: &str = hull_protocol::network::SANDBOX_NETNS;

/// Rewrite a bundle's config for the guest: the rootfs becomes the virtio-fs path, host-side
/// hooks stay on the host, and the guest cgroup is ours to name.
pub fn for_guest(raw: &Value, container_id: &str, binds: &[crate::bundle::BindMount]) -> Value {
    let mut spec = raw.clone();
    let base = format!("{GUEST_SHARE_DIR}/{}", crate::share::container_dir(container_id));
    spec["root"]["path"] = json!(format!("{base}/rootfs"));
    // Bind sources are where the share exposes them.
    for bind in binds {
        spec["mounts"][bind.index]["source"] = json!(format!("{base}/mounts/{}", bind.index));
    }
    // The guest has no swap, so a swap limit has nothing to limit (and the guest's cgroup has
    // no memory.swap.max to write it to): drop it, as runc does where swap is not accounted.
    if let Some(memory) = spec.pointer_mut("/linux/resources/memory").and_then(Value::as_object_mut) {
        memory.remove("swap");
        memory.remove("swappiness");
    }
    // `tmpcopyup` has nothing to copy (the bundle check refused it otherwise).
    if let Some(mounts) = spec["mounts"].as_array_mut() {
        for options in mounts.iter_mut().filter_map(|m| m["options"].as_array_mut()) {
            options.retain(|o| o != "tmpcopyup");
        }
    }
    // Only the hooks that run in the container's namespaces go to the guest; the rest run on
    // the host (see `hooks`).
    if let Some(hooks) = spec.get_mut("hooks").and_then(|h| h.as_object_mut()) {
        hooks.retain(|point, _| point == "createContainer" || point == "startContainer");
    }
    if !spec["linux"].is_object() {
        spec["linux"] = json!({});
    }
    spec["linux"]["cgroupsPath"] = json!(format!("/hull/{container_id}"));
    own_cgroup_view(&mut spec);
    // A named network namespace is mirrored in the guest (its NICs are the veths' twins, in
    // the agent's sandbox namespace), so the container joins that one instead of making a
    // new one.
    if let Some(namespaces) = spec["linux"]["namespaces"].as_array_mut() {
        for ns in namespaces.iter_mut().filter(|ns| ns["type"] == "network" && ns.get("path").is_some()) {
            ns["path"] = json!(GUEST_NETNS);
        }
    }
    spec
}

/// Every container sees its own cgroup at `/sys/fs/cgroup`, as on a cgroup v2 host with runc:
/// its own cgroup namespace and a cgroup2 mount there. The guest is cgroup v2 whatever the host
/// runs, and an engine on a v1 host (podman's default there is the host's cgroup namespace)
/// would otherwise show the guest's root, where `memory.max` and `pids.max` do not exist. A
/// namespace the container is told to join (a pod member's) is left as it is.
fn own_cgroup_view(spec: &mut Value) {
    let namespaces = &mut spec["linux"]["namespaces"];
    if !namespaces.is_array() {
        *namespaces = json!([]);
    }
    let namespaces = namespaces.as_array_mut().expect("an array now");
    if !namespaces.iter().any(|ns| ns["type"] == "cgroup") {
        namespaces.push(json!({"type": "cgroup"}));
    }
    if !spec["mounts"].is_array() {
        spec["mounts"] = json!([]);
    }
    let mounts = spec["mounts"].as_array_mut().expect("an array now");
    let at_cgroup = |m: &Value| m["destination"].as_str().map(|d| d.trim_end_matches('/')) == Some("/sys/fs/cgroup");
    match mounts.iter_mut().find(|m| at_cgroup(m)) {
        Some(mount) => {
            // A bind of the host's hierarchy (or v1 controller mounts below it) means nothing
            // in the guest: the guest's own cgroup2 takes its place, with the mount's flags.
            mount["type"] = json!("cgroup");
            mount["source"] = json!("cgroup");
            if let Some(options) = mount["options"].as_array_mut() {
                options.retain(|o| o != "bind" && o != "rbind");
            }
        }
        None => {
            let cgroup = json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]});
            // After /sys, which it sits on.
            let at = mounts.iter().position(|m| m["destination"] == "/sys").map_or(mounts.len(), |i| i + 1);
            mounts.insert(at, cgroup);
        }
    }
    // v1 controller mounts below it (an engine's v1 layout) would land on the cgroup2 mount.
    mounts.retain(|m| !m["destination"].as_str().is_some_and(|d| d.starts_with("/sys/fs/cgroup/")));
}

/// Point a pod member's namespace paths (CRI gives `/proc/<sandbox pid>/ns/<kind>`, host
/// paths that mean nothing in the guest) at the namespaces of the pod's first container,
/// whose init is `guest_pid` in the guest. The network namespace is the mirrored one already.
pub fn join_namespaces(spec: &mut Value, guest_pid: i32) {
    let Some(namespaces) = spec["linux"]["namespaces"].as_array_mut() else { return };
    for ns in namespaces.iter_mut().filter(|ns| ns.get("path").is_some() && ns["type"] != "network") {
        let kind = match ns["type"].as_str() {
            Some("pid") => "pid",
            Some("ipc") => "ipc",
            Some("uts") => "uts",
            Some("mount") => "mnt",
            Some("cgroup") => "cgroup",
            Some("user") => "user",
            Some("time") => "time",
            _ => continue,
        };
        ns["path"] = json!(format!("/proc/{guest_pid}/ns/{kind}"));
    }
}

/// runc's default spec, with `terminal` off (hull attaches terminals only through
/// `--console-socket`).
pub fn default_spec() -> Value {
    json!({
        "ociVersion": "1.2.0",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
                "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            },
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true
        },
        "root": {"path": "rootfs", "readonly": true},
        "hostname": "hull",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
        ],
        "linux": {
            "resources": {"devices": [{"allow": false, "access": "rwm"}]},
            "namespaces": [
                {"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}, {"type": "cgroup"}
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
                "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_members_join_the_first_containers_namespaces() {
        let mut spec = json!({"linux": {"namespaces": [
            {"type": "pid"},
            {"type": "ipc", "path": "/proc/77/ns/ipc"},
            {"type": "uts", "path": "/proc/77/ns/uts"},
            {"type": "network", "path": "/run/hull/netns/sandbox"},
            {"type": "mount"}
        ]}});
        join_namespaces(&mut spec, 12);
        let ns = &spec["linux"]["namespaces"];
        assert!(ns[0].get("path").is_none(), "an unshared pid namespace stays new");
        assert_eq!(ns[1]["path"], "/proc/12/ns/ipc");
        assert_eq!(ns[2]["path"], "/proc/12/ns/uts");
        assert_eq!(ns[3]["path"], "/run/hull/netns/sandbox");
        assert!(ns[4].get("path").is_none());
    }

    #[test]
    fn guest_rewrite() {
        let raw = json!({"ociVersion": "1.2.0", "root": {"path": "rootfs"},
            "hooks": {"prestart": [{"path": "/a"}], "createContainer": [{"path": "/b"}], "poststop": [{"path": "/c"}]}});
        let g = for_guest(&raw, "web", &[]);
        assert_eq!(g["root"]["path"], "/run/hull/share/containers/web/rootfs");
        assert_eq!(g["hooks"], json!({"createContainer": [{"path": "/b"}]}));
        assert_eq!(g["linux"]["cgroupsPath"], "/hull/web");
    }

    #[test]
    fn named_netns_is_replaced_by_the_guest_one_but_a_new_one_is_kept() {
        let named = json!({"root": {"path": "r"}, "linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}, {"type": "pid"}]}});
        assert_eq!(
            for_guest(&named, "c", &[])["linux"]["namespaces"],
            json!([{"type": "network", "path": "/run/hull/netns/sandbox"}, {"type": "pid"}, {"type": "cgroup"}])
        );
        let fresh = json!({"root": {"path": "r"}, "linux": {"namespaces": [{"type": "network"}]}});
        assert_eq!(
            for_guest(&fresh, "c", &[])["linux"]["namespaces"],
            json!([{"type": "network"}, {"type": "cgroup"}])
        );
    }

    #[test]
    fn every_container_gets_its_own_cgroup_namespace_and_cgroup2_mount() {
        // podman on a cgroup v1 host: the host's cgroup namespace, v1-style controller mounts.
        let v1 = json!({"root": {"path": "r"}, "linux": {"namespaces": [{"type": "pid"}]}, "mounts": [
            {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
            {"destination": "/sys/fs/cgroup", "type": "bind", "source": "/sys/fs/cgroup", "options": ["rbind", "ro"]},
            {"destination": "/sys/fs/cgroup/memory", "type": "bind", "source": "/sys/fs/cgroup/memory"},
            {"destination": "/proc", "type": "proc", "source": "proc"}
        ]});
        let g = for_guest(&v1, "c", &[]);
        assert_eq!(g["linux"]["namespaces"], json!([{"type": "pid"}, {"type": "cgroup"}]));
        let mounts = g["mounts"].as_array().unwrap();
        let dests: Vec<&str> = mounts.iter().map(|m| m["destination"].as_str().unwrap()).collect();
        assert_eq!(dests, ["/sys", "/sys/fs/cgroup", "/proc"]);
        assert_eq!(
            mounts[1],
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]})
        );
        // No mount at all: one is added after /sys; a namespace to join is kept.
        let bare = json!({"root": {"path": "r"}, "linux": {"namespaces": [{"type": "cgroup", "path": "/proc/9/ns/cgroup"}]},
            "mounts": [{"destination": "/sys", "type": "sysfs", "source": "sysfs"}, {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"}]});
        let g = for_guest(&bare, "c", &[]);
        assert_eq!(g["linux"]["namespaces"], json!([{"type": "cgroup", "path": "/proc/9/ns/cgroup"}]));
        assert_eq!(g["mounts"][1]["destination"], "/sys/fs/cgroup");
        assert_eq!(g["mounts"][1]["type"], "cgroup");
        assert_eq!(g["mounts"][2]["destination"], "/dev");
    }

    #[test]
    fn default_spec_parses_as_oci() {
        let spec: oci_spec::runtime::Spec = serde_json::from_value(default_spec()).unwrap();
        assert_eq!(spec.root().as_ref().unwrap().path().to_str(), Some("rootfs"));
    }
}

/// Whether `name` (e.g. `CAP_NET_ADMIN`) is a Linux capability oci-spec knows.
pub fn is_known_capability(name: &str) -> bool {
    serde_json::from_value::<oci_spec::runtime::Capability>(json!(name)).is_ok()
}

#[cfg(test)]
mod capability_tests {
    #[test]
    fn known_capabilities() {
        assert!(super::is_known_capability("CAP_NET_ADMIN"));
        assert!(!super::is_known_capability("CAP_MAKE_COFFEE"));
    }
}
