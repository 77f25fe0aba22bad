//! runc parity on the points of the runtime spec where a VM is no excuse (issue 14): what
//! `state`, `kill` and `delete` say around an exit, hooks and their states, `start` of a
//! container without a process, and the container's own view of its cgroup.

use std::time::{Duration, Instant};

use hull_tests::{text, Env};

fn status_of(env: &Env, id: &str) -> String {
    let out = env.hull_out(&["state", id]);
    let state: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    state["status"].as_str().unwrap_or("?").to_string()
}

/// Once a signal has ended the init, `state` says `stopped` at once (runc does: it looks at the
/// process, not at the tear-down behind it), `delete` without `--force` takes it, and `kill`
/// says "container not running" (`--all` succeeds), as runc's callers expect.
#[test]
fn the_exit_is_known_to_state_kill_and_delete_as_soon_as_it_happened() {
    let env = Env::new("conf-exit");
    // The init announces the signal on the share right before it exits.
    let b = env
        .bundle("b", &["sh", "-c", "trap 'touch /got-term; exit 3' TERM; touch /ready; while :; do sleep 0.1; done"]);
    b.edit(|c| c["root"]["readonly"] = false.into());
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    assert_eq!(status_of(&env, "c1"), "running");
    // As a pid namespace's init, the shell ignores SIGTERM until its trap is set.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !b.rootfs().join("ready").exists() {
        assert!(Instant::now() < deadline, "the init never set its trap");
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = env.hull_out(&["kill", "c1", "TERM"]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    let marker = b.rootfs().join("got-term");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "the init never saw SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    }
    // From the moment the guest wrote its marker, the init is gone within a few ms; the VM's
    // tear-down behind it (which `state` used to wait for) takes far longer.
    let seen = Instant::now();
    let mut states = Vec::new();
    loop {
        let s = status_of(&env, "c1");
        if s == "stopped" {
            break;
        }
        states.push(s);
        assert!(seen.elapsed() < Duration::from_secs(30), "state never said stopped: {states:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = seen.elapsed();
    eprintln!("stopped {took:?} after the init's marker ({} reads said otherwise)", states.len());
    // A VM tear-down takes longer than this on any machine; the process's exit does not.
    assert!(took < Duration::from_millis(1500), "state said {states:?} for {took:?} after the init exited");
    let state: serde_json::Value = serde_json::from_slice(&env.hull_out(&["state", "c1"]).stdout).unwrap();
    assert!(state.get("pid").is_none() || state["pid"].is_null() || state["pid"] == 0, "{state}");

    let out = env.hull_out(&["kill", "c1", "TERM"]);
    assert!(!out.status.success(), "kill of a stopped container succeeded");
    assert!(text(&out.stderr).contains("container not running"), "{}", text(&out.stderr));
    let out = env.hull_out(&["kill", "--all", "c1", "KILL"]);
    assert!(out.status.success(), "kill --all of a stopped container: {}", text(&out.stderr));

    // No --force: it is stopped. delete waits for the tear-down, so nothing is left after it.
    let out = env.hull_out(&["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

/// Hooks are told the states of runtime-spec 1.2 (prestart: `created`, poststart: `running`,
/// poststop: `stopped`); poststart runs once the user process has started and before `start`
/// returns; a failing poststart or poststop hook is a warning and the operation goes on.
#[test]
fn hooks_see_the_spec_states_and_failing_post_hooks_only_warn() {
    let env = Env::new("conf-hooks");
    let b = env.bundle("b", &["sh", "-c", "echo up > /started; sleep 300"]);
    let order = env.dir.join("order");
    let started = b.rootfs().join("started");
    let record = |name: &str| {
        serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!(
            "read -r state; echo \"{name} $state\" >> {}", order.display())]})
    };
    // poststart waits (10 s at most) for the process's own marker on the share: it is there
    // only if the process was started first.
    let poststart = serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", format!(
        "read -r state; i=0; while [ ! -e {m} ] && [ $i -lt 500 ]; do sleep 0.02; i=$((i+1)); done; \
         if [ -e {m} ]; then seen=process-up; else seen=no-process; fi; echo \"poststart-$seen $state\" >> {o}",
        m = started.display(), o = order.display())]});
    let fail = serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", "echo hook-broke >&2; exit 1"]});
    b.edit(|c| {
        c["root"]["readonly"] = false.into();
        c["hooks"] = serde_json::json!({
            "prestart": [record("prestart")],
            "poststart": [poststart, fail.clone()],
            "poststop": [fail, record("poststop")],
        });
    });
    let out = env.hull_detached(&["create", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let out = env.hull_out(&["start", "c1"]);
    assert!(out.status.success(), "start with a failing poststart hook: {}", text(&out.stderr));
    // start has returned: poststart has run.
    let lines = std::fs::read_to_string(&order).unwrap_or_default();
    let names: Vec<&str> = lines.lines().map(|l| l.split(' ').next().unwrap()).collect();
    assert_eq!(names, ["prestart", "poststart-process-up"], "{lines}");
    assert_eq!(status_of(&env, "c1"), "running");
    let out = env.hull_out(&["delete", "--force", "c1"]);
    assert!(out.status.success(), "delete with a failing poststop hook: {}", text(&out.stderr));
    let lines = std::fs::read_to_string(&order).unwrap();
    let states: Vec<(&str, String)> = lines
        .lines()
        .map(|l| {
            let (name, json) = l.split_once(' ').unwrap();
            let state: serde_json::Value = serde_json::from_str(json).unwrap_or_else(|e| panic!("{name}: {e}: {json}"));
            assert_eq!(state["id"], "c1", "{name}: {json}");
            (name, state["status"].as_str().unwrap_or("?").to_string())
        })
        .collect();
    let want = [("prestart", "created"), ("poststart-process-up", "running"), ("poststop", "stopped")];
    assert_eq!(states, want.map(|(n, s)| (n, s.to_string())), "{lines}");
    env.assert_clean();
}

/// A config without `process`: `create` works (the pod boots), `start` fails naming the field,
/// and the container stays `created`.
#[test]
fn start_without_a_process_fails_and_the_container_stays_created() {
    let env = Env::new("conf-noproc");
    let b = env.bundle("b", &["true"]);
    b.edit(|c| {
        c.as_object_mut().unwrap().remove("process");
    });
    let out = env.hull_detached(&["create", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "create without process: {}", text(&out.stderr));
    assert_eq!(status_of(&env, "c1"), "created");
    let out = env.hull_out(&["start", "c1"]);
    assert!(!out.status.success(), "start without process succeeded");
    assert!(text(&out.stderr).contains("process"), "{}", text(&out.stderr));
    assert_eq!(status_of(&env, "c1"), "created");
    let out = env.hull_out(&["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

/// The container reads its own limits at `/sys/fs/cgroup` (cgroup v2 in the guest, whatever the
/// host runs), even from a config without a cgroup namespace or a cgroup mount, as podman
/// writes them on a cgroup v1 host.
#[test]
fn the_container_reads_its_own_limits_at_sys_fs_cgroup() {
    let env = Env::new("conf-cgroup");
    let b = env.bundle("b", &["sh", "-c", "cat /proc/self/cgroup /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max"]);
    b.edit(|c| {
        c["linux"]["resources"] = serde_json::json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 50}});
        c["linux"]["namespaces"].as_array_mut().unwrap().retain(|ns| ns["type"] != "cgroup");
        c["mounts"].as_array_mut().unwrap().retain(|m| m["destination"] != "/sys/fs/cgroup");
    });
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "0::/\n67108864\n50\n");
    env.assert_clean();
}

/// Propagation options on binds take effect in the container, as runc gives them on a host
/// whose mounts are shared (systemd's default): `shared` makes the bind a peer group of its
/// own, `slave` keeps it a slave of its source, `private` cuts it off, `unbindable` forbids
/// binds of it; and `linux.rootfsPropagation` in the `r` form containerd writes is accepted.
#[test]
fn mount_propagation_options_apply_to_binds() {
    let env = Env::new("conf-propagation");
    let options = ["shared", "rshared", "slave", "rslave", "private", "rprivate", "unbindable", "runbindable"];
    let source = env.dir.join("propagation-source");
    std::fs::create_dir_all(&source).unwrap();
    let script = "awk '$5 ~ /^\\/m\\// { f = \"\"; for (i = 7; $i != \"-\"; i++) f = f \" \" $i; print $5 \":\" f }' \
                  /proc/self/mountinfo";
    let b = env.bundle("b", &["sh", "-c", script]);
    b.edit(|c| {
        c["linux"]["rootfsPropagation"] = "rslave".into();
        for option in options {
            c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
                "destination": format!("/m/{option}"), "type": "bind",
                "source": source.to_str().unwrap(), "options": ["rbind", option]}));
        }
    });
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let table = text(&out.stdout);
    let fields = |option: &str| {
        let prefix = format!("/m/{option}:");
        let line = table.lines().find(|l| l.starts_with(&prefix));
        line.unwrap_or_else(|| panic!("no mount at /m/{option} in the container:\n{table}"))[prefix.len()..].to_string()
    };
    for option in options {
        let got = fields(option);
        let ok = match option.trim_start_matches('r') {
            "shared" => got.contains("shared:"),
            "slave" => got.contains("master:") && !got.contains("shared:"),
            "private" => got.trim().is_empty(),
            "unbindable" => got.trim() == "unbindable",
            _ => unreachable!(),
        };
        assert!(ok, "/m/{option} has propagation {got:?}:\n{table}");
    }
    env.assert_clean();
}
