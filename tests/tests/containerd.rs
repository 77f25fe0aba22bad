//! containerd 1.6 running `containerd-shim-hull-v2` through `ctr`: a private containerd per
//! test, an image imported from a local OCI archive, and the real guest behind every task.

use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hull_tests::containerd::{Containerd, RUNTIME};
use hull_tests::{in_a_terminal, text, tty_size_once_set};

const IMAGE: &str = "docker.io/hull/busybox:e2e";

fn setup(name: &str) -> Containerd {
    let c = Containerd::start(name);
    c.import_busybox("default", IMAGE, &["/bin/sh"]);
    c
}

/// Poll `ctr task ls` until `id` shows `status`.
fn wait_for_status(c: &Containerd, id: &str, status: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ls = c.ctr_ok(&["task", "ls"]);
        if ls.lines().any(|l| l.split_whitespace().next() == Some(id) && l.contains(status)) {
            return;
        }
        assert!(Instant::now() < deadline, "task {id} never became {status}:\n{ls}\nshim log:\n{}", c.shim_log());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ctr_run_prints_stdout_returns_the_exit_code_and_pipes_stdin() {
    let c = setup("ctr-run");
    let out = c.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "r1",
        "sh",
        "-c",
        "echo hello from a VM; echo oops >&2; exit 3",
    ]);
    assert_eq!(text(&out.stdout), "hello from a VM\n", "stderr: {}\nshim log:\n{}", text(&out.stderr), c.shim_log());
    assert!(text(&out.stderr).contains("oops"), "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(3));

    // The guest kernel, not the host's, answers.
    let uname = c.ctr_ok(&["run", "--rm", "--runtime", RUNTIME, IMAGE, "r2", "uname", "-r"]);
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(uname.trim(), host.trim(), "the task ran on the host kernel");

    let mut child = c
        .ctr_cmd()
        .args(["run", "--rm", "--runtime", RUNTIME, IMAGE, "r3", "sh", "-c", "cat; echo end"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"piped line\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(text(&out.stdout), "piped line\nend\n", "stderr: {}", text(&out.stderr));
    c.assert_clean();
}

/// A finished and deleted exec is forgotten in the guest too, so its id can be used again (and
/// execs, terminal or not, do not pile up in the agent for the container's lifetime).
#[test]
fn ctr_exec_ids_can_be_reused_after_the_exec_is_gone() {
    let c = setup("ctr-exec-reuse");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, "x1", "sleep", "600"]);
    wait_for_status(&c, "x1", "RUNNING");
    for round in 0..3 {
        let out = c.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "probe",
            "x1",
            "sh",
            "-c",
            &format!("echo round {round}; exit {round}"),
        ]);
        assert_eq!(
            text(&out.stdout),
            format!("round {round}\n"),
            "stderr: {}\nshim log:\n{}",
            text(&out.stderr),
            c.shim_log()
        );
        assert_eq!(out.status.code(), Some(round));
    }
    c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "x1"]);
    wait_for_status(&c, "x1", "STOPPED");
    let _ = c.ctr(&["task", "delete", "x1"]);
    c.ctr_ok(&["container", "rm", "x1"]);
    c.assert_clean();
}

/// A read-only volume stays read-only on the host even when a privileged container lifts the
/// flag in the guest: the shim binds it read-only into the share, for virtiofsd too.
#[test]
fn ctr_read_only_volume_is_read_only_on_the_host() {
    let c = setup("ctr-ro");
    let vol = std::env::temp_dir().join(format!("hull-ctr-ro-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&vol);
    std::fs::create_dir_all(&vol).unwrap();
    std::fs::write(vol.join("data"), "original").unwrap();
    let mount = format!("type=bind,src={},dst=/vol,options=rbind:ro", vol.display());
    let script = "mount -o remount,rw,bind /vol && echo REMOUNTED; echo changed > /vol/data 2>&1 || echo WRITE-REFUSED";
    let out = c.ctr(&[
        "run",
        "--rm",
        "--privileged",
        "--mount",
        &mount,
        "--runtime",
        RUNTIME,
        IMAGE,
        "ro1",
        "sh",
        "-c",
        script,
    ]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("REMOUNTED") && stdout.contains("WRITE-REFUSED"),
        "{stdout}\n{}\nshim log:\n{}",
        text(&out.stderr),
        c.shim_log()
    );
    assert_eq!(std::fs::read_to_string(vol.join("data")).unwrap(), "original");
    let _ = std::fs::remove_dir_all(&vol);
    c.assert_clean();
}

#[test]
fn ctr_task_exec_ps_pause_resume_kill_delete_with_events() {
    let c = setup("ctr-task");
    let mut events = c.ctr_cmd().arg("events").stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();

    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, "t1", "sh", "-c", "echo $$ > /tmp/init.pid; sleep 600"]);
    wait_for_status(&c, "t1", "RUNNING");

    let out =
        c.ctr(&["task", "exec", "--exec-id", "x1", "t1", "sh", "-c", "echo exec says hi; cat /tmp/init.pid; exit 5"]);
    assert_eq!(out.status.code(), Some(5), "stderr: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "exec says hi\n1\n", "the exec must see the init's files and pid namespace");

    let metrics = c.ctr_ok(&["task", "metrics", "t1"]);
    assert!(metrics.contains("memory.usage") && metrics.contains("pids.current"), "guest cgroup metrics: {metrics}");

    let ps = c.ctr_ok(&["task", "ps", "t1"]);
    assert!(ps.lines().count() >= 2, "ps shows the guest processes: {ps}");

    c.ctr_ok(&["task", "pause", "t1"]);
    wait_for_status(&c, "t1", "PAUSED");
    c.ctr_ok(&["task", "resume", "t1"]);
    wait_for_status(&c, "t1", "RUNNING");

    // A task that is running cannot be deleted.
    let out = c.ctr(&["task", "delete", "t1"]);
    assert!(!out.status.success(), "deleting a running task succeeded");

    c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "t1"]);
    wait_for_status(&c, "t1", "STOPPED");
    let out = c.ctr(&["task", "delete", "t1"]);
    assert!(text(&out.stderr).contains("137"), "delete reports the exit status: {}", text(&out.stderr));
    c.ctr_ok(&["container", "rm", "t1"]);
    c.assert_clean();

    // Every event of that lifecycle reached containerd.
    std::thread::sleep(Duration::from_millis(500));
    let _ = events.kill();
    let out = events.wait_with_output().unwrap();
    let log = text(&out.stdout);
    for topic in [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/paused",
        "/tasks/resumed",
        "/tasks/exit",
        "/tasks/delete",
    ] {
        assert!(log.contains(topic), "no {topic} event in:\n{log}");
    }
    assert!(
        log.contains(r#""exit_status":5"#) && log.contains(r#""exit_status":137"#),
        "exit statuses in events:\n{log}"
    );
}

#[test]
fn killing_the_vmm_or_the_shim_ends_the_task_without_leftovers() {
    let c = setup("ctr-crash");
    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, "v1", "sleep", "600"]);
    wait_for_status(&c, "v1", "RUNNING");
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &format!("{}.*/run/hull/shim/", hull_tests::Backend::current().vmm())])
        .status()
        .unwrap();
    assert!(killed.success(), "no VMM found to kill");
    wait_for_status(&c, "v1", "STOPPED");
    let out = c.ctr(&["task", "delete", "v1"]);
    assert!(text(&out.stderr).contains("255"), "a failed sandbox exits 255: {}", text(&out.stderr));
    c.ctr_ok(&["container", "rm", "v1"]);
    c.assert_clean();

    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, "s1", "sleep", "600"]);
    wait_for_status(&c, "s1", "RUNNING");
    let killed = std::process::Command::new("pkill")
        .args(["-KILL", "-f", "containerd-shim-hull-v2.* -id s1 "])
        .status()
        .unwrap();
    assert!(killed.success(), "no shim found to kill");
    // containerd notices the dead shim, runs `delete` and forgets the task.
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.ctr_ok(&["task", "ls"]).contains("s1") {
        assert!(Instant::now() < deadline, "containerd still lists the task of a dead shim");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.ctr_ok(&["container", "rm", "s1"]);
    c.assert_clean();
}

#[test]
fn ctr_run_and_exec_with_a_tty_mirror_the_window_size() {
    let c = setup("ctr-tty");
    let ctr = format!("ctr --address {}", c.socket.display());
    let out = in_a_terminal(
        99,
        33,
        &format!("{ctr} run -t --rm --runtime {RUNTIME} {IMAGE} tt1 sh -c 'tty; stty size; exit 6'"),
    );
    let shown = text(&out.stdout);
    assert!(shown.contains("/dev/pts/") && shown.contains("33 99"), "run -t: {shown:?}\nshim log:\n{}", c.shim_log());
    assert_eq!(out.status.code(), Some(6));

    c.ctr_ok(&["run", "-d", "--runtime", RUNTIME, IMAGE, "tt2", "sleep", "600"]);
    wait_for_status(&c, "tt2", "RUNNING");
    // ctr resizes only after the exec started: the size comes as a resize (tty_size_once_set).
    let out = in_a_terminal(55, 11, &format!("{ctr} task exec -t --exec-id e1 tt2 {}", tty_size_once_set(2)));
    let shown = text(&out.stdout);
    assert!(shown.contains("/dev/pts/") && shown.contains("11 55"), "exec -t: {shown:?}");
    assert_eq!(out.status.code(), Some(2));
    c.ctr_ok(&["task", "kill", "--signal", "SIGKILL", "tt2"]);
    wait_for_status(&c, "tt2", "STOPPED");
    let _ = c.ctr(&["task", "delete", "tt2"]);
    c.ctr_ok(&["container", "rm", "tt2"]);
    c.assert_clean();
}

/// containerd's cgroup for the task holds the VM's processes and the task's limit plus the
/// VM's documented overhead.
#[test]
fn ctr_memory_limit_holds_the_whole_vm_on_the_host() {
    let c = setup("ctr-hostcg");
    c.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--memory-limit",
        &(64u64 << 20).to_string(),
        IMAGE,
        "m1",
        "sleep",
        "300",
    ]);
    let spec: serde_json::Value = serde_json::from_str(&c.ctr_ok(&["container", "info", "m1"])).unwrap();
    let wanted = spec["Spec"]["linux"]["cgroupsPath"].as_str().expect("containerd names a cgroup").to_string();
    let mut checked = 0;
    let kinds = hull_tests::Backend::current().sandbox_processes();
    for kind in kinds {
        let pids = hull_tests::processes_of("/run/hull/shim/", kind);
        assert!(!pids.is_empty(), "no {kind} process of the sandbox");
        for pid in pids {
            let (at, dir) = hull_tests::host_cgroup(pid, "memory").expect("a memory cgroup");
            assert_eq!(at, wanted, "{kind} {pid}");
            assert_eq!(hull_tests::memory_limit(&dir), Some((64 + 128 + 96) << 20), "{}", dir.display());
            checked += 1;
        }
    }
    assert!(checked >= kinds.len(), "found {checked} sandbox processes");
    c.ctr_ok(&["task", "kill", "-s", "SIGKILL", "m1"]);
    wait_for_status(&c, "m1", "STOPPED");
    c.ctr_ok(&["task", "delete", "m1"]);
    c.ctr_ok(&["container", "delete", "m1"]);
    c.assert_clean();
}
