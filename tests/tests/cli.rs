//! runc-compatible verbs beyond the lifecycle: pause/resume, ps, list, features, and runc-style
//! error logging.

use std::time::Duration;

use hull_tests::{text, Env};

#[test]
fn pause_resume_ps_and_list() {
    let env = Env::new("pause");
    // A counter that stops advancing while the container is frozen.
    let b = env.bundle("b", &["sh", "-c", "i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.1; done"]);
    b.edit(|c| c["root"]["readonly"] = false.into());
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let count = || std::fs::read_to_string(b.rootfs().join("tmp/count")).unwrap_or_default();
    std::thread::sleep(Duration::from_secs(2));

    let out = env.hull_out(&["ps", "--format", "json", "c1"]);
    assert!(out.status.success(), "ps: {}", text(&out.stderr));
    let pids: Vec<i64> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!pids.is_empty());
    let out = env.hull_out(&["ps", "c1"]);
    assert!(text(&out.stdout).contains("sh -c"), "{}", text(&out.stdout));

    let out = env.hull_out(&["pause", "c1"]);
    assert!(out.status.success(), "pause: {}", text(&out.stderr));
    let state: serde_json::Value = serde_json::from_slice(&env.hull_out(&["state", "c1"]).stdout).unwrap();
    assert_eq!(state["status"], "paused");
    let frozen = count();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(count(), frozen, "the counter advanced while paused");
    let out = env.hull_out(&["exec", "c1", "true"]);
    assert!(!out.status.success(), "exec into a paused container succeeded");

    let out = env.hull_out(&["resume", "c1"]);
    assert!(out.status.success(), "resume: {}", text(&out.stderr));
    std::thread::sleep(Duration::from_secs(1));
    assert_ne!(count(), frozen, "the counter did not advance after resume");
    let out = env.hull_out(&["resume", "c1"]);
    assert!(!out.status.success(), "resuming a running container succeeded");

    let out = env.hull_out(&["list", "--format", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], "c1");
    assert_eq!(list[0]["status"], "running");
    let out = env.hull_out(&["list", "-q"]);
    assert_eq!(text(&out.stdout), "c1\n");

    let out = env.hull_out(&["delete", "--force", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

#[test]
fn features_is_runtime_spec_json() {
    let env = Env::new("features");
    let out = env.hull_out(&["features"]);
    assert!(out.status.success());
    let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(f["ociVersionMax"], "1.2.0");
    assert_eq!(f["linux"]["seccomp"]["enabled"], true);
    assert!(f["linux"]["namespaces"].as_array().unwrap().iter().any(|n| n == "network"));
    // What the VM cannot do is said, not left to be found.
    assert!(!f["linux"]["seccomp"]["actions"].as_array().unwrap().iter().any(|a| a == "SCMP_ACT_NOTIFY"));
    let refused = f["annotations"]["io.github.hull.refused"].as_str().unwrap_or_default();
    assert!(refused.contains("listenerPath") && refused.contains("network namespace"), "{refused}");
    // The hypervisor named is the one a VM would start on: HULL_BACKEND overrides --backend
    // there, so it must here too (tests pick the VMM process by this name).
    let hypervisor = |backend: &str| {
        let out = env.hull().args(["--backend", "qemu", "features"]).env("HULL_BACKEND", backend).output().unwrap();
        let f: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        f["annotations"]["io.github.hull.hypervisor"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(hypervisor("hull-vmm"), "hull-vmm (kvm)");
    assert!(hypervisor("qemu").starts_with("qemu ("), "{}", hypervisor("qemu"));
    let out = env.hull().arg("features").env("HULL_BACKEND", "firecracker").output().unwrap();
    assert!(!out.status.success() && text(&out.stderr).contains("firecracker"), "{}", text(&out.stderr));
}

#[test]
fn errors_go_to_the_log_file_in_json_and_to_stderr() {
    let env = Env::new("logjson");
    let log = env.dir.join("hull.log");
    let out = env.hull_out(&["--log", log.to_str().unwrap(), "--log-format", "json", "state", "nope"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("does not exist"), "{}", text(&out.stderr));
    let line = std::fs::read_to_string(&log).unwrap();
    let entry: serde_json::Value = serde_json::from_str(line.lines().last().unwrap()).unwrap();
    assert_eq!(entry["level"], "ERROR");
    assert!(entry["fields"]["message"].as_str().unwrap().contains("does not exist"), "{line}");
}

#[test]
fn bad_signal_and_wrong_state_are_refused() {
    let env = Env::new("badsig");
    let b = env.bundle("b", &["sleep", "300"]);
    let out = env.hull_detached(&["create", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let out = env.hull_out(&["kill", "c1", "SIGNOPE"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("invalid signal"), "{}", text(&out.stderr));
    // pause needs a running container; this one is only created.
    let out = env.hull_out(&["pause", "c1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("created"), "{}", text(&out.stderr));
    let out = env.hull_out(&["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

#[test]
fn hooks_run_in_order_with_state_on_stdin() {
    let env = Env::new("hooks");
    let b = env.bundle("b", &["sh", "-c", "cat /tmp/started-in-guest"]);
    let order = env.dir.join("order");
    let host_hook = |name: &str| serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!("read -r state; echo \"{name} $state\" >> {}", order.display())]});
    b.edit(|c| {
        c["root"]["readonly"] = false.into();
        c["hooks"] = serde_json::json!({
            "prestart": [host_hook("prestart")],
            "createRuntime": [host_hook("createRuntime")],
            "poststart": [host_hook("poststart")],
            "poststop": [host_hook("poststop")],
            // Runs inside the guest, in the container, before the process starts.
            "startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", "echo guest-hook > /tmp/started-in-guest"]}]
        });
    });
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "guest-hook\n");
    let lines = std::fs::read_to_string(&order).unwrap();
    let names: Vec<&str> = lines.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["prestart", "createRuntime", "poststart", "poststop"], "{lines}");
    let state: serde_json::Value =
        serde_json::from_str(lines.lines().next().unwrap().split_once(' ').unwrap().1).unwrap();
    assert_eq!(state["id"], "c1");
    assert_eq!(state["bundle"], b.path());
    env.assert_clean();
}

#[test]
fn a_failing_create_runtime_hook_fails_create_and_leaves_nothing() {
    let env = Env::new("hookfail");
    let b = env.bundle("b", &["true"]);
    b.edit(|c| {
        c["hooks"] =
            serde_json::json!({"createRuntime": [{"path": "/bin/sh", "args": ["sh", "-c", "echo nope >&2; exit 3"]}]});
    });
    let out = env.hull_detached(&["create", "--bundle", b.path(), "c1"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(stderr.contains("createRuntime") && stderr.contains("nope"), "{stderr}");
    env.assert_clean();
}

#[test]
fn twenty_parallel_creates_all_succeed_and_racing_verbs_never_corrupt_state() {
    let env = Env::new("parallel");
    let b = env.bundle("b", &["sleep", "300"]);
    let ids: Vec<String> = (0..20).map(|i| format!("p{i}")).collect();
    std::thread::scope(|s| {
        for id in &ids {
            let (env, b) = (&env, &b);
            s.spawn(move || {
                let out = env.hull_detached(&["create", "--bundle", b.path(), id]);
                assert!(out.status.success(), "create {id}: {}", text(&out.stderr));
            });
        }
    });
    let out = env.hull_out(&["list", "--format", "json"]);
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.len(), 20);
    assert!(list.iter().all(|s| s["status"] == "created"), "{list:?}");

    // Race start/kill/state/delete on one id: every `state` that succeeds parses.
    std::thread::scope(|s| {
        let env = &env;
        s.spawn(move || {
            for _ in 0..30 {
                let out = env.hull_out(&["state", "p0"]);
                if out.status.success() {
                    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("state JSON corrupted");
                    assert_eq!(v["id"], "p0");
                }
            }
        });
        s.spawn(move || {
            let _ = env.hull_out(&["start", "p0"]);
            let _ = env.hull_out(&["kill", "p0", "KILL"]);
            let _ = env.hull_out(&["delete", "--force", "p0"]);
        });
    });
    std::thread::scope(|s| {
        for id in &ids[1..] {
            let env = &env;
            s.spawn(move || {
                let out = env.hull_out(&["delete", id]);
                assert!(out.status.success(), "delete {id}: {}", text(&out.stderr));
            });
        }
    });
    let _ = env.hull_out(&["delete", "--force", "p0"]);
    env.assert_clean();
    // The host cgroups' shared parent (`hull/`, made by whichever sandbox came first) goes
    // with the last of them, whatever order they left in.
    for parent in ["/sys/fs/cgroup/memory/hull", "/sys/fs/cgroup/hull"] {
        assert!(!std::path::Path::new(parent).exists(), "{parent} is left behind");
    }
}

#[test]
fn events_report_guest_usage_and_update_changes_limits() {
    let env = Env::new("resources");
    let b = env.bundle("b", &["sleep", "300"]);
    assert!(env.hull_detached(&["run", "-d", "--bundle", b.path(), "r"]).status.success());
    let read = || -> serde_json::Value {
        let out = env.hull_out(&["events", "--stats", "r"]);
        assert!(out.status.success(), "events: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = read();
    assert_eq!(before["type"], "stats");
    assert!(before["data"]["memory"]["usage"]["usage"].as_u64().unwrap() > 0, "{before}");
    assert!(before["data"]["pids"]["current"].as_u64().unwrap() >= 1, "{before}");
    assert!(before["data"]["cpu"]["usage"]["total"].as_u64().unwrap() > 0, "{before}");

    let out = env.hull_out(&["update", "--memory", "64m", "--pids-limit", "10", "r"]);
    assert!(out.status.success(), "update: {}", text(&out.stderr));
    let after = read();
    assert_eq!(after["data"]["memory"]["usage"]["limit"], 64 << 20, "{after}");
    assert_eq!(after["data"]["pids"]["limit"], 10, "{after}");

    let out = env.hull_out(&["update", "--memory", "lots", "r"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--memory"), "{}", text(&out.stderr));
    let out = env.hull_out(&["update", "--cpu-shares", "2", "--cpuset-cpus", "0;x", "r"]);
    assert!(!out.status.success() && text(&out.stderr).contains("cpu.cpus"), "{}", text(&out.stderr));
    assert!(env.hull_out(&["delete", "--force", "r"]).status.success());
    env.assert_clean();
}

#[test]
fn the_vm_grows_to_fit_the_containers_limits() {
    let env = Env::new("sizing");
    let b = env.bundle("b", &["sh", "-c", "grep MemTotal /proc/meminfo; nproc"]);
    let host_cpus = std::thread::available_parallelism().unwrap().get().min(2);
    b.edit(|c| {
        c["linux"]["resources"] =
            serde_json::json!({"memory": {"limit": 1i64 << 30}, "cpu": {"quota": 200000, "period": 100000}});
    });
    let out = env.hull_out(&["run", "--bundle", b.path(), "big"]);
    assert!(out.status.success(), "run: {}", text(&out.stderr));
    let shown = text(&out.stdout);
    let kib: u64 = shown.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(kib > 1000 * 1024, "a 1 GiB limit needs a VM bigger than 1 GiB: {shown}");
    assert_eq!(
        shown.lines().nth(1),
        Some(host_cpus.to_string().as_str()),
        "a quota of 2 CPUs gets 2 vCPUs (or all the host has): {shown}"
    );
    env.assert_clean();
}

#[test]
fn runc_flags_are_accepted_or_refused_clearly() {
    let env = Env::new("flags");
    let b = env.bundle("b", &["sh", "-c", "echo ran; exit 3"]);
    let out = env.hull_out(&[
        "--systemd-cgroup",
        "run",
        "--no-pivot",
        "--no-new-keyring",
        "--preserve-fds",
        "0",
        "--no-subreaper",
        "--keep",
        "--bundle",
        b.path(),
        "k",
    ]);
    assert_eq!((out.status.code(), text(&out.stdout).as_str()), (Some(3), "ran\n"), "stderr: {}", text(&out.stderr));
    // --keep: the stopped container stays until deleted.
    let state = text(&env.hull_out(&["state", "k"]).stdout);
    assert!(state.contains("\"stopped\""), "{state}");
    assert!(env.hull_out(&["delete", "k"]).status.success());

    for (args, needle) in [
        (vec!["create", "--preserve-fds", "2", "--bundle", b.path(), "p"], "--preserve-fds"),
        (vec!["--rootless", "true", "list"], "--rootless"),
        (vec!["checkpoint", "k"], "not supported"),
    ] {
        let out = env.hull_out(&args);
        assert!(!out.status.success() && text(&out.stderr).contains(needle), "{args:?}: {}", text(&out.stderr));
    }

    let s = env.bundle("s", &["sleep", "300"]);
    assert!(env.hull_detached(&["run", "-d", "--bundle", s.path(), "x"]).status.success());
    let out = env.hull_out(&["exec", "-g", "10", "-g", "20", "x", "id", "-G"]);
    let groups = text(&out.stdout);
    assert!(
        groups.split_whitespace().any(|g| g == "10") && groups.split_whitespace().any(|g| g == "20"),
        "exec -g: {groups:?}, {:?}, stderr {}",
        out.status,
        text(&out.stderr)
    );
    let out = env.hull_out(&["exec", "--preserve-fds", "1", "x", "true"]);
    assert!(!out.status.success() && text(&out.stderr).contains("--preserve-fds"), "{}", text(&out.stderr));
    assert!(env.hull_out(&["delete", "--force", "x"]).status.success());
    env.assert_clean();
}
