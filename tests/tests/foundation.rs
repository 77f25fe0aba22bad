//! A container runs inside a microVM, end to end: real guest kernel, agent, virtio-fs
//! (virtiofsd), vsock (vhost-device-vsock) and the QEMU backend.

use std::time::{Duration, Instant};

use hull_tests::{text, Env};

#[test]
fn echo_prints_hello_and_exits_zero() {
    let env = Env::new("echo");
    let b = env.bundle("b", &["echo", "hello"]);
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert_eq!(text(&out.stdout), "hello\n", "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    env.assert_clean();
}

#[test]
fn stderr_is_separate_and_exit_status_propagates() {
    let env = Env::new("stderr");
    let b = env.bundle("b", &["sh", "-c", "echo err >&2; exit 7"]);
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert_eq!(text(&out.stdout), "");
    assert_eq!(text(&out.stderr), "err\n");
    assert_eq!(out.status.code(), Some(7));
    env.assert_clean();
}

#[test]
fn piped_stdin_reaches_cat() {
    let env = Env::new("stdin");
    let b = env.bundle("b", &["cat"]);
    let input = b"line one\nline two\n";
    let out = env.hull_with_input(&["run", "--bundle", b.path(), "c1"], input);
    assert_eq!(out.stdout, input, "stderr: {}", text(&out.stderr));
    assert_eq!(out.status.code(), Some(0));
    env.assert_clean();
}

#[test]
fn eight_mib_of_stdout_arrive_intact() {
    let env = Env::new("bulk");
    // Deterministic, non-repeating-per-page content: numbered lines.
    let b = env.bundle("b", &["sh", "-c", "seq 1 1200000 | head -c 8388608"]);
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let expected: Vec<u8> = (1..=1_200_000).flat_map(|n: u32| format!("{n}\n").into_bytes()).take(8 << 20).collect();
    assert_eq!(out.stdout.len(), 8 << 20);
    assert!(out.stdout == expected, "stdout differs from the expected 8 MiB");
    env.assert_clean();
}

#[test]
fn files_written_in_the_container_land_in_the_host_rootfs() {
    let env = Env::new("write");
    let b = env.bundle("b", &["sh", "-c", "echo from-the-guest > /tmp/out.txt"]);
    b.edit(|c| c["root"]["readonly"] = false.into());
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    assert_eq!(std::fs::read_to_string(b.rootfs().join("tmp/out.txt")).unwrap(), "from-the-guest\n");
    env.assert_clean();
}

#[test]
fn megabyte_reads_and_writes_through_the_share_arrive_intact() {
    let env = Env::new("bigio");
    // 1 MiB requests are FUSE's largest: 256 pages, a descriptor each, plus headers.
    let b = env.bundle("b", &["sh", "-c", "dd if=/tmp/in of=/tmp/out bs=1M 2>/dev/null && md5sum /tmp/in"]);
    b.edit(|c| c["root"]["readonly"] = false.into());
    let data: Vec<u8> = (0..6u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(b.rootfs().join("tmp/in"), &data).unwrap();
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let host_md5 = std::process::Command::new("md5sum").arg(b.rootfs().join("tmp/in")).output().unwrap();
    let first = |t: &[u8]| text(t).split_whitespace().next().unwrap_or_default().to_string();
    assert_eq!(first(&out.stdout), first(&host_md5.stdout), "the guest read other bytes than the host wrote");
    assert!(std::fs::read(b.rootfs().join("tmp/out")).unwrap() == data, "the guest's 6 MiB copy differs on the host");
    env.assert_clean();
}

#[test]
fn container_sees_only_its_rootfs() {
    let env = Env::new("isolation");
    let b = env.bundle("b", &["sh", "-c", "ls -a /; test -e /marker-outside && echo LEAK; true"]);
    // A file beside the rootfs, on the host: it must not be reachable from the container.
    std::fs::write(b.dir.join("marker-outside"), "host").unwrap();
    std::fs::write(b.rootfs().join("marker-inside"), "guest").unwrap();
    let out = env.hull_out(&["run", "--bundle", b.path(), "c1"]);
    assert_eq!(out.status.code(), Some(0), "stderr: {}", text(&out.stderr));
    let listing = text(&out.stdout);
    let mut names: Vec<&str> = listing.lines().filter(|l| *l != "." && *l != "..").collect();
    names.sort();
    assert_eq!(names, ["bin", "dev", "etc", "marker-inside", "proc", "sys", "tmp"], "{listing}");
    assert!(!listing.contains("LEAK"));
    env.assert_clean();
}

#[test]
fn lifecycle_create_start_state_kill_delete() {
    let env = Env::new("lifecycle");
    let b = env.bundle("b", &["sleep", "300"]);
    let out = env.hull_detached(&["create", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));

    let state = |env: &Env| -> serde_json::Value {
        let out = env.hull_out(&["state", "c1"]);
        assert!(out.status.success(), "state: {}", text(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let s = state(&env);
    assert_eq!(s["status"], "created");
    assert_eq!(s["id"], "c1");
    assert_eq!(s["bundle"], b.path());
    let pid = s["pid"].as_i64().expect("pid while created");
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());

    let out = env.hull_out(&["start", "c1"]);
    assert!(out.status.success(), "start: {}", text(&out.stderr));
    assert_eq!(state(&env)["status"], "running");

    // A running container cannot be deleted without --force, and stays running.
    let out = env.hull_out(&["delete", "c1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("running"), "{}", text(&out.stderr));
    assert_eq!(state(&env)["status"], "running");

    let out = env.hull_out(&["kill", "c1", "KILL"]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    while state(&env)["status"] != "stopped" {
        assert!(Instant::now() < deadline, "container did not stop after SIGKILL");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(state(&env)["exitStatus"], 137);

    let out = env.hull_out(&["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    let out = env.hull_out(&["state", "c1"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("does not exist"));
    env.assert_clean();
}

#[test]
fn delete_force_stops_a_running_container() {
    let env = Env::new("force");
    let b = env.bundle("b", &["sleep", "300"]);
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let out = env.hull_out(&["delete", "--force", "c1"]);
    assert!(out.status.success(), "delete --force: {}", text(&out.stderr));
    env.assert_clean();
}

#[test]
fn exec_runs_in_the_container_with_stdio_env_and_status() {
    let env = Env::new("exec");
    let b = env.bundle("b", &["sleep", "300"]);
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));

    let out = env.hull_out(&["exec", "c1", "sh", "-c", "echo out; echo err >&2; exit 3"]);
    assert_eq!(
        (text(&out.stdout).as_str(), text(&out.stderr).as_str(), out.status.code()),
        ("out\n", "err\n", Some(3))
    );

    let out = env.hull_with_input(&["exec", "c1", "cat"], b"through stdin\n");
    assert_eq!(text(&out.stdout), "through stdin\n");

    let out = env.hull_out(&[
        "exec",
        "-e",
        "GREETING=hi",
        "--cwd",
        "/tmp",
        "-u",
        "1000:1000",
        "c1",
        "sh",
        "-c",
        "echo $GREETING; pwd; id -u",
    ]);
    assert_eq!(text(&out.stdout), "hi\n/tmp\n1000\n", "stderr: {}", text(&out.stderr));

    // The exec sees the init's pid namespace: `sleep 300` is there.
    let out = env.hull_out(&["exec", "c1", "ps"]);
    assert!(text(&out.stdout).contains("sleep 300"), "{}", text(&out.stdout));

    // exec -d --pid-file: the named host process lives as long as the exec'd one and exits
    // with its status.
    let pid_file = env.dir.join("exec.pid");
    let out = env.hull_detached(&["exec", "-d", "--pid-file", pid_file.to_str().unwrap(), "c1", "sleep", "1"]);
    assert!(out.status.success(), "exec -d: {}", text(&out.stderr));
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists(), "exec -d process gone too early");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "exec -d process outlived its `sleep 1`");
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = env.hull_out(&["exec", "--cap", "CAP_MAKE_COFFEE", "c1", "true"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("CAP_MAKE_COFFEE"), "{}", text(&out.stderr));

    let out = env.hull_out(&["delete", "--force", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

/// Resident bytes of guest RAM in the VMM process: its memfd mapping(s) in smaps.
fn guest_ram_resident(pid: u32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("the VMM's smaps");
    let mut in_ram = false;
    let mut kib = 0u64;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or_default();
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            // QEMU names its RAM memfd memory-backend-memfd, hull-vmm hull-guest-ram.
            in_ram = line.contains("/memfd:memory-backend-memfd") || line.contains("/memfd:hull-guest-ram");
        } else if in_ram && first == "Rss:" {
            kib += line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    kib << 10
}

#[test]
fn memory_the_guest_frees_goes_back_to_the_host() {
    let env = Env::new("reporting");
    let b = env.bundle("b", &["sleep", "600"]);
    // 160 MiB of tmpfs in the guest: filling it touches that much guest RAM, removing the file
    // frees it inside the guest, and free page reporting must then give it back to the host.
    b.edit(|c| {
        c["mounts"].as_array_mut().unwrap().push(serde_json::json!({
            "destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["size=160m"]
        }))
    });
    let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let vmm = env.find_process(hull_tests::Backend::current().vmm()).expect("the VMM process");
    let idle = guest_ram_resident(vmm);
    let fill = env.hull_out(&["exec", "c1", "dd", "if=/dev/zero", "of=/scratch/big", "bs=1M", "count=128"]);
    assert_eq!(fill.status.code(), Some(0), "dd: {}", text(&fill.stderr));
    let filled = guest_ram_resident(vmm);
    assert!(filled >= idle + (100 << 20), "128 MiB written in the guest: resident {idle} -> {filled} bytes");
    let rm = env.hull_out(&["exec", "c1", "rm", "/scratch/big"]);
    assert_eq!(rm.status.code(), Some(0), "rm: {}", text(&rm.stderr));
    // Linux reports free 4 MiB blocks 2 s after they are freed, a batch per pass; a minute
    // leaves TCG's slowness plenty of room. This waits for a behaviour, not a speed.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut now = filled;
    while Instant::now() < deadline {
        now = guest_ram_resident(vmm);
        if now + (96 << 20) <= filled {
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(
        now + (96 << 20) <= filled,
        "freed 128 MiB in the guest, but the host still holds it: resident {idle} idle, {filled} filled, {now} a minute after the rm"
    );
    let del = env.hull_out(&["delete", "--force", "c1"]);
    assert!(del.status.success(), "delete: {}", text(&del.stderr));
    env.assert_clean();
}
