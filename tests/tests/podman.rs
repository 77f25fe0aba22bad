//! podman 4.3 (Debian) driving hull through conmon, with an image imported from a local
//! tarball (no registry here). podman talks to hull through a wrapper that points it at this
//! checkout's assets, since conmon does not pass our environment through.

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};
use std::time::Duration;

use hull_tests::{hull_bin, in_a_terminal, text, tty_size_once_set, Env};

const IMAGE: &str = "localhost/hull-e2e-busybox";

struct Podman {
    env: Env,
    runtime: String,
}

impl Podman {
    fn new(name: &str) -> Podman {
        let env = Env::new(name);
        let wrapper = env.dir.join("hull-runtime");
        let assets = std::env::var("HULL_ASSET_DIR").unwrap_or_else(|_| "/usr/local/share/hull".into());
        // Each call is recorded (podman hands the runtime's stderr to conmon, so it stays as is):
        // a failing test prints the calls, which show what conmon asked of hull.
        let calls = env.dir.join("runtime-calls.log");
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\necho \"$(date +%T.%N) $*\" >> {}\nHULL_ASSET_DIR={assets} exec {} \"$@\"\n",
                calls.display(),
                hull_bin().display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        // The image: a busybox rootfs, imported from a tarball.
        let b = env.bundle("image", &["true"]);
        let tar = env.dir.join("rootfs.tar");
        assert!(Command::new("tar")
            .arg("-C")
            .arg(b.rootfs())
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()
            .unwrap()
            .success());
        let out = Command::new("podman").args(["import", tar.to_str().unwrap(), IMAGE]).output().unwrap();
        assert!(out.status.success(), "podman import: {}", text(&out.stderr));
        Podman { runtime: wrapper.to_str().unwrap().to_string(), env }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("podman").arg("--runtime").arg(&self.runtime).args(args).output().unwrap()
    }

    /// What hull was asked to do so far, for failure messages.
    fn calls(&self) -> String {
        std::fs::read_to_string(self.env.dir.join("runtime-calls.log")).unwrap_or_default()
    }
}

impl Drop for Podman {
    /// A failed test must not leave its containers (and their VMs and state in hull's default
    /// root) for the next run to trip over.
    fn drop(&mut self) {
        let names = self.run(&["ps", "-a", "--format", "{{.Names}}"]);
        for name in text(&names.stdout).lines().filter(|n| n.starts_with("hull-e2e-")) {
            let _ = self.run(&["rm", "-f", "-t", "0", name]);
        }
    }
}

#[test]
fn podman_run_exit_codes_detach_logs_exec_stop_rm() {
    let p = Podman::new("podman");
    let out = p.run(&["run", "--rm", "--network", "none", IMAGE, "echo", "hello from a VM"]);
    assert_eq!(text(&out.stdout), "hello from a VM\n", "stderr: {}", text(&out.stderr));
    let out = p.run(&["run", "--rm", "--network", "none", IMAGE, "sh", "-c", "exit 42"]);
    assert_eq!(out.status.code(), Some(42), "stderr: {}", text(&out.stderr));

    let _ = p.run(&["rm", "-f", "hull-e2e-web"]);
    let out = p.run(&[
        "run",
        "-d",
        "--name",
        "hull-e2e-web",
        "--hostname",
        "vmhost",
        "-e",
        "GREETING=hi",
        IMAGE,
        "sh",
        "-c",
        "echo started; sleep 300",
    ]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    std::thread::sleep(Duration::from_secs(1));
    let out = p.run(&["logs", "hull-e2e-web"]);
    assert!(text(&out.stdout).contains("started"), "{}", text(&out.stdout));
    let out = p.run(&["exec", "hull-e2e-web", "sh", "-c", "echo $GREETING; hostname; ip -4 addr show eth0"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "exec: {}", text(&out.stderr));
    assert!(stdout.starts_with("hi\nvmhost\n"), "{stdout}");
    assert!(stdout.contains("inet 10.88."), "the VM did not get podman's bridge address: {stdout}");
    let out = p.run(&["kill", "hull-e2e-web"]);
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    let out = p.run(&["wait", "hull-e2e-web"]);
    assert_eq!(text(&out.stdout).trim(), "137", "{}", text(&out.stderr));
    let out = p.run(&["rm", "hull-e2e-web"]);
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
    drop(p);
}

#[test]
fn podman_run_and_exec_with_a_terminal() {
    let p = Podman::new("podman-tty");
    let podman = format!("podman --runtime {}", p.runtime);
    let out =
        in_a_terminal(77, 19, &format!("{podman} run --rm -t --network none {IMAGE} sh -c 'tty; stty size; exit 3'"));
    let shown = text(&out.stdout);
    assert!(shown.contains("/dev/pts/") && shown.contains("19 77"), "run -t: {shown:?}");
    assert_eq!(out.status.code(), Some(3));

    let _ = p.run(&["rm", "-f", "hull-e2e-tty"]);
    let out = p.run(&["run", "-d", "--name", "hull-e2e-tty", "--network", "none", IMAGE, "sleep", "300"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    // Twenty in a row, the first right after `run -d`: conmon reads the terminal from its
    // console socket as soon as `hull exec -d` has exited, so hull must have sent it by then.
    for round in 0..20 {
        // conmon sizes the terminal after the exec started: it comes as a resize.
        let out = in_a_terminal(66, 17, &format!("{podman} exec -t hull-e2e-tty {}", tty_size_once_set(5)));
        let shown = text(&out.stdout);
        assert!(
            shown.contains("/dev/pts/") && shown.contains("17 66"),
            "exec -t, round {round}: {shown:?}\nruntime calls:\n{}",
            p.calls()
        );
        assert_eq!(out.status.code(), Some(5), "round {round}");
    }
    let out = p.run(&["rm", "-f", "-t", "0", "hull-e2e-tty"]);
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
    p.env.assert_clean();
}

#[test]
fn podman_options_user_read_only_limits_caps_volumes_pause() {
    let p = Podman::new("podman-opts");
    let run = |args: &[&str]| -> (Option<i32>, String, String) {
        let mut full = vec!["run", "--rm", "--network", "none"];
        full.extend_from_slice(args);
        let out = p.run(&full);
        (out.status.code(), text(&out.stdout).trim().to_string(), text(&out.stderr))
    };
    let (code, out, err) = run(&["--user", "1000:1001", IMAGE, "sh", "-c", "id -u; id -g"]);
    assert_eq!((code, out.as_str()), (Some(0), "1000\n1001"), "--user: {err}");

    let (code, _, err) = run(&["--read-only", IMAGE, "touch", "/x"]);
    assert_ne!(code, Some(0), "--read-only let the rootfs be written");
    assert!(err.contains("Read-only file system"), "--read-only: {err}");

    // The limits land on the container's cgroup in the guest, read at the standard v2 paths, though this host is cgroup v1: the container has its own
    // cgroup namespace in the guest (v2), rooted at its own cgroup.
    let cgroup = "cat /proc/self/cgroup /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max";
    let (code, out, err) = run(&["--memory", "64m", "--pids-limit", "10", IMAGE, "sh", "-c", cgroup]);
    assert_eq!((code, out.as_str()), (Some(0), "0::/\n67108864\n10"), "--memory/--pids-limit: {err}");

    let (code, out, err) =
        run(&["--cap-drop", "ALL", "--cap-add", "NET_RAW", IMAGE, "grep", "CapEff", "/proc/self/status"]);
    assert_eq!(code, Some(0), "caps: {err}");
    assert!(out.ends_with("0000000000002000"), "only CAP_NET_RAW (bit 13) is effective: {out}");

    let volume = p.env.dir.join("vol");
    std::fs::create_dir_all(&volume).unwrap();
    std::fs::write(volume.join("from-host"), "host data\n").unwrap();
    let mount = format!("{}:/data", volume.display());
    let (code, out, err) =
        run(&["-v", &mount, IMAGE, "sh", "-c", "cat /data/from-host; echo guest data > /data/from-guest"]);
    assert_eq!((code, out.as_str()), (Some(0), "host data"), "-v: {err}");
    assert_eq!(std::fs::read_to_string(volume.join("from-guest")).unwrap(), "guest data\n");

    let _ = p.run(&["rm", "-f", "hull-e2e-pause"]);
    let out = p.run(&["run", "-d", "--name", "hull-e2e-pause", "--network", "none", IMAGE, "sleep", "300"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let status = || text(&p.run(&["inspect", "-f", "{{.State.Status}}", "hull-e2e-pause"]).stdout).trim().to_string();
    assert!(p.run(&["pause", "hull-e2e-pause"]).status.success());
    assert_eq!(status(), "paused");
    assert!(p.run(&["unpause", "hull-e2e-pause"]).status.success());
    assert_eq!(status(), "running");
    // stop: SIGTERM, then SIGKILL after the timeout (sleep ignores neither; it dies of TERM).
    let out = p.run(&["stop", "-t", "5", "hull-e2e-pause"]);
    assert!(out.status.success(), "stop: {}", text(&out.stderr));
    assert_eq!(status(), "exited");
    assert!(p.run(&["rm", "-f", "-t", "0", "hull-e2e-pause"]).status.success());
    p.env.assert_clean();
}

/// `--memory 64m`: the VM's processes live in the cgroup podman named for the container, whose
/// limit is the container's plus the VM's documented overhead (128 MiB guest, 96 MiB host).
#[test]
fn podman_memory_limit_holds_the_whole_vm_on_the_host() {
    let p = Podman::new("podman-hostcg");
    let _ = p.run(&["rm", "-f", "hull-e2e-mem"]);
    let out =
        p.run(&["run", "-d", "--name", "hull-e2e-mem", "--network", "none", "--memory", "64m", IMAGE, "sleep", "300"]);
    assert!(out.status.success(), "run -d: {}", text(&out.stderr));
    let id = text(&p.run(&["inspect", "--format", "{{.Id}}", "hull-e2e-mem"]).stdout).trim().to_string();
    let config = format!("/var/lib/containers/storage/overlay-containers/{id}/userdata/config.json");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    let wanted = spec["linux"]["cgroupsPath"].as_str().expect("podman names a cgroup").to_string();
    let needle = format!("/run/hull/{id}/");
    let mut checked = 0;
    let kinds = hull_tests::Backend::current().sandbox_processes();
    for kind in kinds {
        let pids = hull_tests::processes_of(&needle, kind);
        assert!(!pids.is_empty(), "no {kind} process of the sandbox");
        for pid in pids {
            let (at, dir) = hull_tests::host_cgroup(pid, "memory").expect("a memory cgroup");
            assert!(at.ends_with(wanted.trim_start_matches('/')), "{kind} {pid} is in {at}, podman named {wanted}");
            assert_eq!(hull_tests::memory_limit(&dir), Some((64 + 128 + 96) << 20), "{}", dir.display());
            checked += 1;
        }
    }
    assert!(checked >= kinds.len(), "found {checked} sandbox processes");
    let out = p.run(&["rm", "-f", "-t", "0", "hull-e2e-mem"]);
    assert!(out.status.success(), "rm: {}", text(&out.stderr));
    p.env.assert_clean();
}

/// `podman save --format oci-archive` writes an OCI layout as a tar: `hull unpack` takes it
/// (without a reference, and by the tag podman gave it), and the bundle runs with the
/// config podman wrote.
#[test]
fn an_image_saved_by_podman_unpacks_and_runs() {
    let p = Podman::new("podman-save");
    let image = "localhost/hull-e2e-saved:v1";
    // The busybox rootfs of Podman::new, with a config podman writes from --change.
    let tar = p.env.dir.join("rootfs.tar");
    let out = Command::new("podman")
        .args(["import", "--change", "ENTRYPOINT [\"/bin/sh\", \"-c\"]"])
        .args(["--change", "CMD [\"echo $GREETING from $(pwd)\"]", "--change", "ENV GREETING=saved"])
        .args(["--change", "WORKDIR /tmp"])
        .arg(&tar)
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "podman import: {}", text(&out.stderr));
    let archive = p.env.dir.join("saved.tar");
    let out = Command::new("podman")
        .args(["save", "--format", "oci-archive", "-o"])
        .arg(&archive)
        .arg(image)
        .output()
        .unwrap();
    assert!(out.status.success(), "podman save: {}", text(&out.stderr));
    let _ = Command::new("podman").args(["rmi", image]).output();

    for (i, source) in [archive.display().to_string(), format!("{}:v1", archive.display())].iter().enumerate() {
        let bundle = p.env.dir.join(format!("bundle{i}"));
        let out = p.env.hull_out(&["unpack", "--image", source, bundle.to_str().unwrap()]);
        assert!(out.status.success(), "hull unpack {source}: {}", text(&out.stderr));
        let out = p.env.hull_out(&["run", "--bundle", bundle.to_str().unwrap(), &format!("saved{i}")]);
        assert!(out.status.success(), "hull run: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "saved from /tmp\n");
    }
    p.env.assert_clean();
}
