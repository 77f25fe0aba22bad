//! The guest is hostile: a test-only agent (agent/src/hostile.rs, booted from
//! build/assets/initramfs-hostile.cpio) attacks the host the way an attacker owning the guest
//! kernel and agent could, and the host must not care. Each test says what the attack did
//! (the agent reports on the console) and checks the host: files outside the share untouched,
//! memory of the supervisor and shim bounded, kills and deletes finishing in time, the console
//! log capped, nothing left behind.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hull_tests::containerd::{Containerd, RUNTIME};
use hull_tests::cri::{ContainerSpec, Cri};
use hull_tests::{text, Env};

const IMAGE: &str = "docker.io/hull/busybox:e2e";
/// What a supervisor or shim may grow to under a flood of notices: the flood names 4096 exec
/// ids of 16 KiB, 64 MiB if they were kept.
const RSS_BOUND_KIB: u64 = 32 << 10;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn state(env: &Env, id: &str) -> serde_json::Value {
    serde_json::from_slice(&env.hull_out(&["state", id]).stdout).unwrap_or_default()
}

/// Wait until the console of container `id` shows `line`; returns the console.
fn console_shows(env: &Env, id: &str, line: &str) -> String {
    let path = env.root.join(id).join("console.log");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let console = String::from_utf8_lossy(&std::fs::read(&path).unwrap_or_default()).into_owned();
        if console.contains(line) {
            return console;
        }
        assert!(Instant::now() < deadline, "the console never showed {line:?}:\n{console}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Everything in `dir`, with contents, to compare before and after.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut all: Vec<(String, Vec<u8>)> = walk(dir);
    all.sort();
    all
}

fn walk(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.is_dir() {
            found.push((path.display().to_string(), Vec::new()));
            found.extend(walk(&path));
        } else {
            found.push((path.display().to_string(), std::fs::read(&path).unwrap_or_default()));
        }
    }
    found
}

/// A directory of the host, with a canary file, that the guest must never reach.
fn canary(env: &Env) -> std::path::PathBuf {
    let dir = env.dir.join("host-canary");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("canary"), "the host's own file\n").unwrap();
    dir
}

fn hostile_bundle(env: &Env, name: &str, acts: &str, args: &[&str]) -> hull_tests::Bundle {
    let b = env.bundle(name, args);
    b.edit(|c| {
        c["process"]["env"].as_array_mut().unwrap().push(format!("HULL_TEST_HOSTILE={acts}").into());
    });
    b
}

/// The share's top level and skeleton are read-only to the guest: it can neither fill the
/// host's /run through it nor plant symlinks there, and a bind's host directory keeps what it
/// had.
#[test]
fn the_guest_can_neither_fill_nor_plant_in_the_share() {
    let env = Env::new("hostile-share").hostile();
    let host = canary(&env);
    let before = snapshot(&host);
    let b = hostile_bundle(&env, "b", "fill-share,plant-root", &["sleep", "600"]);
    b.edit(|c| {
        c["process"]["env"].as_array_mut().unwrap().push(format!("HULL_TEST_PLANT_TARGET={}", host.display()).into());
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/data", "type": "bind", "source": host, "options": ["rbind", "ro"]
        }));
    });
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let console = console_shows(&env, "c1", "hostile: plant-root:");
    assert!(console.contains("hostile: fill-share: refused (Read-only file system)"), "{console}");
    assert!(console.contains("hostile: plant-root: refused (Read-only file system)"), "{console}");
    // The host side of the share holds nothing the guest wrote.
    let share = env.root.join("c1/share");
    assert_eq!(std::fs::read_dir(&share).unwrap().count(), 0, "the guest wrote into the host's {}", share.display());
    let out = env.hull_out(&["delete", "--force", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    assert_eq!(snapshot(&host), before, "the host directory changed");
    env.assert_clean();
}

/// In a pod, the VM runs while the shim binds later containers into the share. A guest that
/// replaced `containers/` with a symlink to a host directory would make the shim create,
/// mount and delete there; the skeleton is read-only, and the shim resolves nothing through
/// a symlink anyway.
#[test]
fn a_pod_guest_cannot_make_the_shim_follow_its_symlinks() {
    let c = Containerd::start_hostile("hostile-pod");
    c.import_pause();
    c.import_busybox("k8s.io", IMAGE, &["/bin/sh"]);
    let mut cri = Cri::connect(&c.socket, &c.env.dir.join("pod-logs"));
    let host = canary(&c.env);
    let before = snapshot(&host);
    let target = host.display().to_string();
    let pod = cri.run_pod("hostile", false).unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", c.shim_log()));
    let envs = [("HULL_TEST_HOSTILE", "plant-root"), ("HULL_TEST_PLANT_TARGET", target.as_str())];
    let attacker = cri
        .start_container(
            &pod,
            ContainerSpec {
                name: "attacker",
                image: IMAGE,
                args: &["sleep", "600"],
                envs: &envs,
                ..Default::default()
            },
        )
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.shim_log()));
    // The attack has happened once the agent says so on the pod's console.
    let console = wait_for_shim_console(&c, "hostile: plant-root:");
    assert!(console.contains("hostile: plant-root: refused (Read-only file system)"), "{console}");
    let later = cri
        .start_container(
            &pod,
            ContainerSpec { name: "later", image: IMAGE, args: &["sleep", "600"], ..Default::default() },
        )
        .unwrap_or_else(|e| panic!("CreateContainer: {e}\n{}", c.shim_log()));
    assert_eq!(snapshot(&host), before, "the shim created something in the host directory");
    let out = cri.exec_sync(&later, &["echo", "later-ok"]);
    assert_eq!(text(&out.stdout), "later-ok\n");
    for id in [&later, &attacker] {
        cri.stop_container(id);
        cri.remove_container(id);
    }
    cri.remove_pod(&pod);
    assert_eq!(snapshot(&host), before, "the host directory changed");
    c.assert_clean();
}

/// The console of the (one) running pod's VM.
fn wait_for_shim_console(_c: &Containerd, line: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut all = String::new();
        for entry in std::fs::read_dir("/run/hull/shim").into_iter().flatten().flatten() {
            if let Ok(bytes) = std::fs::read(entry.path().join("console.log")) {
                all.push_str(&String::from_utf8_lossy(&bytes));
            }
        }
        if all.contains(line) {
            return all;
        }
        assert!(Instant::now() < deadline, "no pod console showed {line:?}:\n{all}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Exit notices for processes the host never started, with 64 KiB ids, and OOM notices for
/// every id the guest can name: the supervisor keeps none of it and stays small, and the
/// container still works.
#[test]
fn a_flood_of_notices_leaves_the_supervisor_small() {
    let env = Env::new("hostile-flood").hostile();
    let b = hostile_bundle(&env, "b", "flood-huge", &["sleep", "600"]);
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let supervisor = state(&env, "c1")["pid"].as_u64().unwrap() as u32;
    console_shows(&env, "c1", "hostile: flood-huge: 12096 notices sent");
    // The agent has written them; let the host read the last ones.
    std::thread::sleep(Duration::from_secs(2));
    let rss = rss_kib(supervisor);
    assert!(rss > 0 && rss < RSS_BOUND_KIB, "supervisor RSS {rss} KiB after the flood (bound {RSS_BOUND_KIB} KiB)");
    let out = env.hull_out(&["exec", "c1", "echo", "still-here"]);
    assert_eq!(text(&out.stdout), "still-here\n", "exec after the flood: {}", text(&out.stderr));
    assert_eq!(state(&env, "c1")["status"], "running");
    let out = env.hull_out(&["delete", "--force", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
    eprintln!("supervisor RSS after 12096 hostile notices: {rss} KiB");
}

/// The guest acknowledges SIGKILL and never reports the exit; or it stops reading its control
/// connection altogether. Either way the host decides: the container is stopped with 137
/// within the grace, and delete works.
#[test]
fn kill_and_delete_finish_whatever_the_guest_does() {
    for acts in ["ignore-sigkill", "stop-reading"] {
        let env = Env::new("hostile-kill").hostile();
        let b = hostile_bundle(&env, "b", acts, &["sleep", "600"]);
        let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c1"]);
        assert!(out.status.success(), "{acts}: run -d: {}", text(&out.stderr));
        let started = Instant::now();
        let out = env.hull_out(&["kill", "c1", "KILL"]);
        assert!(out.status.success(), "{acts}: kill: {}", text(&out.stderr));
        while state(&env, "c1")["status"] != "stopped" {
            assert!(started.elapsed() < Duration::from_secs(15), "{acts}: still {} after 15 s", state(&env, "c1"));
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(state(&env, "c1")["exitStatus"], 137, "{acts}");
        let out = env.hull_out(&["delete", "c1"]);
        assert!(out.status.success(), "{acts}: delete: {}", text(&out.stderr));
        let took = started.elapsed();
        assert!(took < Duration::from_secs(15), "{acts}: kill + delete took {took:?}");
        env.assert_clean();
        eprintln!("{acts}: kill + delete in {took:?}");
    }
}

/// The same through containerd: Kill and Delete of a task whose guest ignores SIGKILL finish,
/// and the guest's OOM flood reaches containerd as no more OOM events than processes started.
#[test]
fn the_shim_decides_too() {
    let c = Containerd::start_hostile("hostile-shim");
    c.import_busybox("default", IMAGE, &["/bin/sh"]);
    let mut events = c.ctr_cmd().args(["events"]).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--env",
        "HULL_TEST_HOSTILE=ignore-sigkill,flood-notices",
        IMAGE,
        "t1",
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "ctr run: {}{}\n{}", text(&out.stdout), text(&out.stderr), c.shim_log());
    wait_for_shim_console(&c, "hostile: flood-notices: 8000 notices sent");
    std::thread::sleep(Duration::from_secs(2));
    let shim = std::fs::read_dir("/run/hull/shim")
        .unwrap()
        .flatten()
        .find_map(|e| std::fs::read_to_string(e.path().join("shim.pid")).ok())
        .and_then(|t| t.split_whitespace().next().and_then(|p| p.parse::<u32>().ok()))
        .expect("the shim's pid file");
    let rss = rss_kib(shim);
    assert!(rss > 0 && rss < RSS_BOUND_KIB, "shim RSS {rss} KiB after the flood (bound {RSS_BOUND_KIB} KiB)");
    let took = kill_and_delete(&c, "t1");
    let _ = events.kill();
    let output = events.wait_with_output().unwrap();
    let ooms = text(&output.stdout).lines().filter(|l| l.contains("/tasks/oom")).count();
    assert!(ooms <= 1, "{ooms} OOM events reached containerd for one process");
    c.assert_clean();
    // A guest that stops reading its control connection once started: Kill answers at once
    // (the host decides), Delete goes through once the grace is over.
    let out = c.ctr(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--env",
        "HULL_TEST_HOSTILE=stop-reading",
        IMAGE,
        "t2",
        "sleep",
        "600",
    ]);
    assert!(out.status.success(), "ctr run t2: {}{}\n{}", text(&out.stdout), text(&out.stderr), c.shim_log());
    let deaf = kill_and_delete(&c, "t2");
    c.assert_clean();
    eprintln!("shim: RSS {rss} KiB after the flood, kill + delete in {took:?} (SIGKILL ignored) and {deaf:?} (guest deaf), {ooms} OOM events");
}

/// SIGKILL task `id`, then delete it (retrying while containerd still sees it running);
/// both within 15 s. Returns how long it took.
fn kill_and_delete(c: &Containerd, id: &str) -> Duration {
    let started = Instant::now();
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", id]);
    loop {
        let out = c.ctr(&["task", "delete", id]);
        if out.status.success() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "{id}: task delete still refused: {}", text(&out.stderr));
        std::thread::sleep(Duration::from_millis(200));
    }
    let took = started.elapsed();
    c.ctr_ok(&["container", "delete", id]);
    took
}

/// A guest that writes its console without end: console.log stops at its cap and the VM goes
/// on working.
#[test]
fn the_console_log_is_capped() {
    let mut env = Env::new("hostile-console").hostile();
    // Small enough that the flood reaches it quickly under nested TCG too (there hull-vmm's
    // serial port costs an exit per byte: 770203 bytes in 60 s, measured in L1).
    const CAP: u64 = 256 << 10;
    env.vars.push(("HULL_CONSOLE_CAP".into(), CAP.to_string()));
    let b = hostile_bundle(&env, "b", "console-flood", &["sleep", "600"]);
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let log = env.root.join("c1/console.log");
    let deadline = Instant::now() + Duration::from_secs(120);
    while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) < CAP {
        assert!(Instant::now() < deadline, "the flood never reached the cap");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(5));
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= CAP + 200, "console.log is {size} bytes, its cap {CAP}");
    assert!(String::from_utf8_lossy(&std::fs::read(&log).unwrap()).contains("reached its cap"));
    let out = env.hull_out(&["exec", "c1", "echo", "alive"]);
    assert_eq!(text(&out.stdout), "alive\n", "exec during the flood: {}", text(&out.stderr));
    let out = env.hull_out(&["delete", "--force", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

/// The guest touches all of its RAM; with no room left for the VMM in the host cgroup, the
/// host's OOM killer takes QEMU. That is the container's OOM kill: 137, not a sandbox failure,
/// and never a hang.
#[test]
fn a_vm_over_its_host_memory_limit_is_an_oom_kill() {
    let mut env = Env::new("hostile-oom").hostile();
    // The documented overhead is what keeps QEMU's own memory inside the limit: without it,
    // the guest's RAM alone fills the cgroup.
    env.vars.push(("HULL_HOST_OVERHEAD_MIB".into(), "0".into()));
    let b = hostile_bundle(&env, "b", "eat-memory", &["sleep", "600"]);
    b.edit(|c| {
        c["linux"]["resources"] = serde_json::json!({"memory": {"limit": 64 << 20}});
    });
    let started = Instant::now();
    let out = env.hull_out(&["run", "--keep", "--bundle", b.path(), "c1"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(137), "stdout {} stderr {stderr}", text(&out.stdout));
    assert!(started.elapsed() < Duration::from_secs(120), "took {:?}", started.elapsed());
    let console = std::fs::read_to_string(env.root.join("c1/console.log")).unwrap_or_default();
    assert!(console.contains("hostile: eat-memory:"), "the guest never ate: {console}");
    assert_eq!(state(&env, "c1")["exitStatus"], 137);
    assert!(stderr.contains("exceeded its host memory limit"), "{stderr}");
    let out = env.hull_out(&["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}
