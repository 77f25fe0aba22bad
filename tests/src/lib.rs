//! Harness for hull's end-to-end tests: busybox bundles, a private `--root` per test, the real
//! `hull` binary, and checks that nothing was left on the host.

use std::fs;
use std::io::Write;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub mod console;
pub mod containerd;
pub mod cri;
pub mod oci_image;
pub mod port_forward;
pub mod vmm;

/// The initramfs with the test-only hostile agent (`make initramfs-hostile`, which `make test`
/// builds).
pub fn hostile_initramfs() -> PathBuf {
    let path = vmm::asset_dir().join("initramfs-hostile.cpio");
    assert!(path.is_file(), "{} is missing: run `make initramfs-hostile` (make test does)", path.display());
    path
}

/// The hypervisor backend the runtime under test uses here, as `hull features` reports it
/// (`HULL_BACKEND`, or `auto`: hull-vmm on hardware KVM, QEMU otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    HullVmm,
    Qemu,
}

impl Backend {
    pub fn current() -> Backend {
        static BACKEND: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
        *BACKEND.get_or_init(|| {
            let out = Command::new(hull_bin()).arg("features").output().expect("hull features");
            let features: Value = serde_json::from_slice(&out.stdout).expect("hull features prints JSON");
            let name = features["annotations"]["io.github.hull.hypervisor"].as_str().unwrap_or_default().to_string();
            if name.starts_with("hull-vmm") {
                Backend::HullVmm
            } else {
                assert!(name.starts_with("qemu"), "unknown backend in hull features: {name:?}");
                Backend::Qemu
            }
        })
    }

    /// The program name of the VMM process ("hull-vmm", "qemu-system").
    pub fn vmm(self) -> &'static str {
        match self {
            Backend::HullVmm => "hull-vmm",
            Backend::Qemu => "qemu-system",
        }
    }

    /// What the runtime's errors call the VMM ("hull-vmm", "qemu").
    pub fn vmm_in_errors(self) -> &'static str {
        match self {
            Backend::HullVmm => "hull-vmm",
            Backend::Qemu => "qemu",
        }
    }

    /// The sandbox processes that run in hull's jail (virtiofsd has its own sandbox).
    pub fn jailed_processes(self) -> &'static [&'static str] {
        match self {
            Backend::HullVmm => &["hull-vmm"],
            Backend::Qemu => &["qemu-system", "vhost-device-vsock"],
        }
    }

    /// Every process a sandbox runs on the host, the VMM first.
    pub fn sandbox_processes(self) -> &'static [&'static str] {
        match self {
            // hull-vmm carries its vsock device in-process.
            Backend::HullVmm => &["hull-vmm", "virtiofsd"],
            Backend::Qemu => &["qemu-system", "vhost-device-vsock", "virtiofsd"],
        }
    }
}

/// The `hull` binary under test: `HULL_BIN`, or this workspace's release build.
pub fn hull_bin() -> PathBuf {
    std::env::var_os("HULL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/hull"))
}

/// A scratch area for one test: its own state root and bundles, removed on drop.
pub struct Env {
    pub dir: PathBuf,
    pub root: PathBuf,
    /// Environment every `hull` of this test gets (a hostile guest, a small console cap).
    pub vars: Vec<(String, String)>,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Env {
    pub fn new(name: &str) -> Env {
        let dir = std::env::temp_dir().join(format!(
            "hull-e2e-{name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let root = dir.join("state");
        Env { dir, root, vars: Vec::new() }
    }

    /// A `hull` command with this test's `--root`.
    pub fn hull(&self) -> Command {
        let mut cmd = Command::new(hull_bin());
        cmd.arg("--root").arg(&self.root).envs(self.vars.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// This test's VMs boot the hostile guest (agent/src/hostile.rs).
    pub fn hostile(mut self) -> Env {
        self.vars.push(("HULL_INITRAMFS".into(), hostile_initramfs().display().to_string()));
        self
    }

    /// Run `hull ARGS` with `stdin` piped in; returns its output.
    pub fn hull_with_input(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut child = self
            .hull()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning hull");
        let mut pipe = child.stdin.take().unwrap();
        let input = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    }

    /// Run `hull ARGS` with stdout/stderr in files rather than pipes, for verbs that leave a
    /// detached supervisor holding them (`create`, `run -d`), as runc's do.
    pub fn hull_detached(&self, args: &[&str]) -> Output {
        let out_path = self.dir.join(format!("out-{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
        let err_path = out_path.with_extension("err");
        let status = self
            .hull()
            .args(args)
            .stdin(Stdio::null())
            .stdout(fs::File::create(&out_path).unwrap())
            .stderr(fs::File::create(&err_path).unwrap())
            .status()
            .expect("spawning hull");
        Output { status, stdout: fs::read(&out_path).unwrap(), stderr: fs::read(&err_path).unwrap() }
    }

    pub fn hull_out(&self, args: &[&str]) -> Output {
        self.hull().args(args).stdin(Stdio::null()).output().expect("spawning hull")
    }

    /// Make a busybox bundle named `name` whose process runs `args`.
    pub fn bundle(&self, name: &str, args: &[&str]) -> Bundle {
        let dir = self.dir.join(name);
        let rootfs = dir.join("rootfs");
        fs::create_dir_all(rootfs.join("bin")).unwrap();
        for d in ["proc", "sys", "dev", "tmp", "etc"] {
            fs::create_dir_all(rootfs.join(d)).unwrap();
        }
        fs::copy(busybox(), rootfs.join("bin/busybox")).unwrap();
        let list = Command::new(busybox()).arg("--list").output().unwrap();
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let link = rootfs.join("bin").join(applet);
            if applet != "busybox" && !link.exists() {
                symlink("busybox", link).unwrap();
            }
        }
        let out = Command::new(hull_bin()).args(["spec", "--bundle"]).arg(&dir).output().unwrap();
        assert!(out.status.success(), "hull spec: {}", String::from_utf8_lossy(&out.stderr));
        let bundle = Bundle { dir };
        bundle.edit(|c| c["process"]["args"] = serde_json::json!(args));
        bundle
    }

    /// Everything this test's root left behind: processes naming it, mounts under it, state.
    pub fn leftovers(&self) -> Vec<String> {
        let needle = self.root.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            if pid == std::process::id() {
                continue;
            }
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(&needle) {
                found.push(format!("process {pid}: {cmdline}"));
            }
        }
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        found.extend(mounts.lines().filter(|l| l.contains(&needle)).map(|l| format!("mount: {l}")));
        if let Ok(entries) = fs::read_dir(&self.root) {
            found.extend(entries.flatten().map(|e| format!("state: {}", e.path().display())));
        }
        found
    }

    /// Wait (briefly) for the leftovers to vanish; processes take a moment to be reaped.
    pub fn assert_clean(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let left = self.leftovers();
            if left.is_empty() {
                return;
            }
            if Instant::now() > deadline {
                panic!("left behind:\n{}", left.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Pid of the sandbox process of `kind` ("qemu", "virtiofsd") serving this test's root.
    pub fn find_process(&self, kind: &str) -> Option<u32> {
        let needle = self.root.to_string_lossy().into_owned();
        fs::read_dir("/proc").unwrap().flatten().find_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let cmdline = String::from_utf8_lossy(&fs::read(entry.path().join("cmdline")).ok()?).replace('\0', " ");
            let exe = cmdline.split(' ').next()?.to_string();
            (cmdline.contains(&needle) && exe.contains(kind)).then_some(pid)
        })
    }
}

impl Env {
    /// After a failed test, its containers' logs (guest console, VMM log) are copied to
    /// `$HULL_TEST_ARTIFACTS/<test dir>/` before the scratch area goes: the only trace of a
    /// failure inside the nested rig's L1, whose disk goes with it.
    fn keep_logs(&self) {
        let Some(to) = std::env::var_os("HULL_TEST_ARTIFACTS") else { return };
        let to = Path::new(&to).join(self.dir.file_name().unwrap_or_default());
        let Ok(entries) = fs::read_dir(&self.root) else { return };
        for container in entries.flatten() {
            let Ok(files) = fs::read_dir(container.path()) else { continue };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if name.ends_with(".log") && fs::create_dir_all(&to).is_ok() {
                    let _ =
                        fs::copy(file.path(), to.join(format!("{}-{name}", container.file_name().to_string_lossy())));
                }
            }
        }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.keep_logs();
        }
        // A test that failed midway may have left containers running; their VMs must not
        // outlive it and slow every test after it.
        if let Ok(entries) = fs::read_dir(&self.root) {
            for entry in entries.flatten() {
                let id = entry.file_name().to_string_lossy().into_owned();
                let _ =
                    self.hull().args(["delete", "--force", &id]).stdout(Stdio::null()).stderr(Stdio::null()).status();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub struct Bundle {
    pub dir: PathBuf,
}

impl Bundle {
    pub fn path(&self) -> &str {
        self.dir.to_str().unwrap()
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    pub fn edit(&self, f: impl FnOnce(&mut Value)) {
        let path = self.dir.join("config.json");
        let mut config: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        f(&mut config);
        fs::write(&path, serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    }
}

fn busybox() -> &'static str {
    ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is installed")
}

/// The host cgroup of `pid` for a v1 `controller`, or its v2 cgroup: the path below the
/// hierarchy's root, and that cgroup's directory.
pub fn host_cgroup(pid: u32, controller: &str) -> Option<(String, PathBuf)> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
    text.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, names, path) = (f.next()?, f.next()?, f.next()?);
        if v2 && names.is_empty() {
            return Some((path.to_string(), Path::new("/sys/fs/cgroup").join(path.trim_start_matches('/'))));
        }
        names.split(',').any(|n| n == controller).then(|| {
            (path.to_string(), Path::new("/sys/fs/cgroup").join(controller).join(path.trim_start_matches('/')))
        })
    })
}

/// The memory limit of the cgroup at `dir` (v2 `memory.max`, v1 `memory.limit_in_bytes`).
pub fn memory_limit(dir: &Path) -> Option<u64> {
    ["memory.max", "memory.limit_in_bytes"]
        .iter()
        .find_map(|f| fs::read_to_string(dir.join(f)).ok()?.trim().parse().ok())
}

/// Pids of the processes whose command line contains `needle` and whose program contains
/// `kind` ("qemu", "virtiofsd", "vhost-device-vsock").
pub fn processes_of(needle: &str, kind: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let cmdline = String::from_utf8_lossy(&fs::read(e.path().join("cmdline")).ok()?).replace('\0', " ");
            (cmdline.contains(needle) && cmdline.split(' ').next()?.contains(kind)).then_some(pid)
        })
        .collect()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A container shell command printing its terminal's size once it has one (up to 5 s), then
/// exiting with `code`. For execs whose client sends the size only as a resize after the
/// process started (podman 4.3's conmon, ctr 1.6: no `consoleSize`, with runc just the same):
/// the process may look before it arrives, and the size that matters is the one that comes.
pub fn tty_size_once_set(code: i32) -> String {
    format!(
        "sh -c 'tty; i=0; while [ $i -lt 50 ]; do s=$(stty size 2>/dev/null); \
         case \"$s\" in \"\"|\"0 0\") i=$((i+1)); sleep 0.1;; *) break;; esac; done; echo \"$s\"; exit {code}'"
    )
}

/// Run a shell `command` on a pty of the given size (`script`), as from a user's terminal.
pub fn in_a_terminal(cols: u16, rows: u16, command: &str) -> Output {
    Command::new("script")
        .args(["-qec", &format!("stty cols {cols} rows {rows}; {command}"), "/dev/null"])
        .output()
        .unwrap()
}
