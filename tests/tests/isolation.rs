//! What the host side of a sandbox may touch and who may touch it: modes of the state, the
//! control socket's peer check.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use hull_tests::{text, Env};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

/// State dirs 0700, files 0600, sockets writable by their owner only: nothing of a sandbox
/// is readable or reachable by another user, whatever umask the caller had.
#[test]
fn a_sandboxs_state_is_roots_alone() {
    let env = Env::new("modes");
    let b = env.bundle("b", &["sleep", "300"]);
    // Its stdio is kept by the supervisor, so files rather than pipes.
    let err = env.dir.join("create.err");
    let status = env
        .hull()
        .args(["create", "--bundle", b.path(), "c1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .pre_exec_umask(0)
        .status()
        .unwrap();
    assert!(status.success(), "create: {}", std::fs::read_to_string(&err).unwrap_or_default());
    let dir = env.root.join("c1");
    assert_eq!(mode(&env.root), 0o700, "{}", env.root.display());
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let mut seen = 0;
    for entry in walk(&dir) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        let m = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_dir() {
            assert_eq!(m & 0o077, 0, "{} is {m:o}", entry.display());
        } else if kind.is_socket() {
            assert_eq!(m & 0o022, 0, "socket {} is {m:o}: others could connect", entry.display());
        } else {
            assert_eq!(m & 0o077, 0, "{} is {m:o}", entry.display());
        }
        seen += 1;
    }
    assert!(seen >= 6, "only {seen} entries under {}", dir.display());
    let out = env.hull_out(&["delete", "--force", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

/// The control socket answers root and its own user only, even when its modes are loosened.
#[test]
fn the_control_socket_refuses_other_users() {
    let env = Env::new("peercred");
    let b = env.bundle("b", &["sleep", "300"]);
    let out = env.hull_detached(&["create", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let socket = env.root.join("c1/control.sock");
    for dir in [env.dir.as_path(), env.root.as_path(), &env.root.join("c1")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    // The pause before sending makes the order certain: the refusal must still reach a client
    // whose request arrives after the supervisor has decided (it used to close first: EPIPE).
    let script = "import socket,sys,time\n\
                  s=socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  time.sleep(0.5)\n\
                  s.sendall(b'{\"op\":\"destroy\"}\\n')\n\
                  print(s.recv(4096).decode())";
    let out = Command::new("python3").args(["-c", script]).arg(&socket).uid(65534).gid(65534).output().unwrap();
    let reply = text(&out.stdout);
    assert!(reply.contains("uid 65534 may not control this container"), "{reply}{}", text(&out.stderr));
    let state: serde_json::Value = serde_json::from_slice(&env.hull_out(&["state", "c1"]).stdout).unwrap();
    assert_eq!(state["status"], "created", "another user's request was carried out");
    let out = env.hull_out(&["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        found.push(path.clone());
        if std::fs::symlink_metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
            found.extend(walk(&path));
        }
    }
    found
}

trait UmaskExt {
    fn pre_exec_umask(&mut self, mask: u32) -> &mut Self;
}

impl UmaskExt for Command {
    /// Run with the caller's umask set to `mask` (a careless caller's 0).
    fn pre_exec_umask(&mut self, mask: u32) -> &mut Self {
        // SAFETY: umask(2) between fork and exec is async-signal-safe and touches no memory.
        unsafe {
            self.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            })
        }
    }
}

/// Fields of /proc/<pid>/status.
fn status_of(pid: u32) -> std::collections::HashMap<String, String> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(':').map(|(k, v)| (k.to_string(), v.trim().to_string())))
        .collect()
}

fn root_entries(pid: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/root: {e}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The first component of an absolute path.
fn top(path: &std::path::Path) -> String {
    path.components().nth(1).map(|c| c.as_os_str().to_string_lossy().into_owned()).unwrap_or_default()
}

/// On a running sandbox: QEMU and the vsock backend (which map all of guest RAM and parse the
/// guest's rings) run as the sandbox's unprivileged uid, without any capability, with
/// no_new_privs and seccomp, in a root holding only /usr, the loader's cache, a few devices,
/// their assets and their sockets; virtiofsd, which must stay root to serve every guest uid,
/// runs in its own sandbox rooted at the share, without the capabilities to make devices or set
/// file capabilities.
#[test]
fn every_process_that_touches_guest_memory_is_jailed() {
    let env = Env::new("jailed");
    let b = env.bundle("b", &["sleep", "300"]);
    let out = env.hull_detached(&["create", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let assets = hull_tests::vmm::asset_dir();
    let mut allowed: Vec<String> =
        ["bin", "dev", "etc", "lib", "lib64", "sbin", "usr"].iter().map(|s| s.to_string()).collect();
    allowed.extend([top(&env.root), top(&assets)]);
    for kind in hull_tests::Backend::current().jailed_processes() {
        let pids = hull_tests::processes_of(&env.root.to_string_lossy(), kind);
        assert_eq!(pids.len(), 1, "{kind}: {pids:?}");
        let s = status_of(pids[0]);
        let uid: u32 = s["Uid"].split_whitespace().next().unwrap().parse().unwrap();
        assert!(uid >= 0x6c00_0000, "{kind} runs as uid {uid}");
        let all = |field: &str| s[field].split_whitespace().all(|v| v == uid.to_string());
        assert!(all("Uid") && all("Gid"), "{kind}: uid {} gid {}", s["Uid"], s["Gid"]);
        for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(s[caps], "0000000000000000", "{kind}: {caps}");
        }
        assert_eq!(s["NoNewPrivs"], "1", "{kind}");
        assert_eq!(s["Seccomp"], "2", "{kind}");
        let entries = root_entries(pids[0]);
        if *kind == "hull-vmm" {
            // hull-vmm opens /dev/kvm, its tap, the kernel and guest memory before it jails
            // itself in the sandbox's vmm/ dir: all that is left there is the sockets.
            let strays: Vec<&String> =
                entries.iter().filter(|e| !e.ends_with(".sock") && !e.ends_with(".sock.pid")).collect();
            assert!(strays.is_empty(), "{kind}'s root holds {strays:?} (all: {entries:?})");
        } else {
            let strays: Vec<&String> = entries.iter().filter(|e| !allowed.contains(e)).collect();
            assert!(strays.is_empty(), "{kind}'s root holds {strays:?} (all: {entries:?})");
            let dev = std::fs::read_dir(format!("/proc/{}/root/dev", pids[0])).unwrap().count();
            assert!(dev <= 4, "{kind}: {dev} devices");
            let etc: Vec<_> = std::fs::read_dir(format!("/proc/{}/root/etc", pids[0]))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(etc, ["ld.so.cache"], "{kind}");
        }
        // Not even root's own view of the host's files is reachable from there.
        assert!(!std::path::Path::new(&format!("/proc/{}/root/root", pids[0])).exists(), "{kind}");
        assert!(!std::path::Path::new(&format!("/proc/{}/root/proc/1", pids[0])).exists(), "{kind}");
    }
    let pids = hull_tests::processes_of(&env.root.to_string_lossy(), "virtiofsd");
    assert!(!pids.is_empty());
    for pid in &pids {
        let s = status_of(*pid);
        assert_eq!(s["NoNewPrivs"], "1", "virtiofsd {pid}");
        assert_eq!(s["CapBnd"], "0000000000000000", "virtiofsd {pid}");
        let eff = u64::from_str_radix(&s["CapEff"], 16).unwrap();
        for (cap, name) in [(27, "CAP_MKNOD"), (31, "CAP_SETFCAP"), (21, "CAP_SYS_ADMIN")] {
            assert_eq!(eff & (1 << cap), 0, "virtiofsd {pid} has {name}");
        }
        assert_eq!(root_entries(*pid), ["containers"], "virtiofsd {pid}'s root is not the share");
    }
    assert!(pids.iter().any(|p| status_of(*p)["Seccomp"] == "2"), "no virtiofsd process has a seccomp filter");
    if hull_tests::Backend::current() == hull_tests::Backend::HullVmm {
        // hull-vmm copies virtio-fs requests through a bounce memfd: virtiofsd never maps guest
        // RAM (QEMU's vhost-user-fs hands it all of it).
        for pid in &pids {
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            assert!(!maps.contains("memfd:hull-guest-ram"), "virtiofsd {pid} maps guest RAM");
        }
    }
    let out = env.hull_out(&["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

/// The VM's processes run in the container's host cgroup (`linux.cgroupsPath`), which holds
/// the VM to the container's memory limit plus its documented overhead, and is removed with
/// the container, also after its supervisor died.
#[test]
fn the_vm_is_held_in_the_containers_host_cgroup() {
    let env = Env::new("hostcg");
    let path = format!("/hull-e2e-{}/c1", std::process::id());
    let b = env.bundle("b", &["sleep", "300"]);
    b.edit(|c| {
        c["linux"]["cgroupsPath"] = path.clone().into();
        c["linux"]["resources"] = serde_json::json!({"memory": {"limit": 64 << 20}, "pids": {"limit": 20}});
    });
    for round in ["delete", "crash"] {
        let out = env.hull_detached(&["run", "-d", "--bundle", b.path(), "c1"]);
        assert!(out.status.success(), "run -d: {}", text(&out.stderr));
        let mut dirs = Vec::new();
        for kind in hull_tests::Backend::current().sandbox_processes() {
            let pids = hull_tests::processes_of(&env.root.to_string_lossy(), kind);
            assert!(!pids.is_empty(), "{kind}");
            for pid in pids {
                let (at, dir) = hull_tests::host_cgroup(pid, "memory").expect("a memory cgroup");
                assert_eq!(at, path, "{kind} {pid} is in {at}");
                let procs = std::fs::read_to_string(dir.join("cgroup.procs")).unwrap();
                assert!(procs.lines().any(|l| l == pid.to_string()), "{kind} {pid} not in {}", dir.display());
                dirs.push(dir);
            }
        }
        // 64 MiB + 128 MiB for the guest kernel and agent (the VM's RAM) + 96 MiB for the VMM.
        assert_eq!(hull_tests::memory_limit(&dirs[0]), Some((64 + 128 + 96) << 20), "{}", dirs[0].display());
        if round == "delete" {
            let out = env.hull_out(&["delete", "--force", "c1"]);
            assert!(out.status.success(), "delete: {}", text(&out.stderr));
        } else {
            let state: serde_json::Value = serde_json::from_slice(&env.hull_out(&["state", "c1"]).stdout).unwrap();
            // SAFETY: kill(2) of the supervisor this test started.
            unsafe { libc::kill(state["pid"].as_i64().unwrap() as i32, libc::SIGKILL) };
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let vmm = hull_tests::Backend::current().vmm();
            while !hull_tests::processes_of(&env.root.to_string_lossy(), vmm).is_empty() {
                assert!(std::time::Instant::now() < deadline, "the VM outlived its supervisor");
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let out = env.hull_out(&["delete", "c1"]);
            assert!(out.status.success(), "delete after a crash: {}", text(&out.stderr));
        }
        for dir in &dirs {
            assert!(!dir.exists(), "{round}: {} is left", dir.display());
        }
        env.assert_clean();
    }
    for controller in ["memory", "cpu", "pids", ""] {
        let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{controller}/hull-e2e-{}", std::process::id()));
    }
}
