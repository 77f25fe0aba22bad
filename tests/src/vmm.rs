//! Harness for hull-vmm's own tests: the synthetic guest (built here with gcc from
//! `guests/synthetic`), the `hull-vmm` binary, and a running VM whose console can be awaited.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The `hull-vmm` binary under test: `HULL_VMM_BIN`, or this workspace's release build.
pub fn vmm_bin() -> PathBuf {
    std::env::var_os("HULL_VMM_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/hull-vmm"))
}

/// Where `make assets` put the kernel, initramfs and helper binaries.
pub fn asset_dir() -> PathBuf {
    std::env::var_os("HULL_ASSET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/assets"))
}

/// The synthetic guest ELF, compiled once per test process.
pub fn synthetic_guest() -> &'static Path {
    static GUEST: OnceLock<PathBuf> = OnceLock::new();
    GUEST.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("guests/synthetic");
        let out_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/hull-synthetic");
        std::fs::create_dir_all(&out_dir).unwrap();
        let out = out_dir.join("guest.elf");
        let tmp = out_dir.join(format!("guest.elf.{}", std::process::id()));
        let status = Command::new("gcc")
            .args(["-O2", "-ffreestanding", "-fno-pic", "-fno-pie", "-no-pie", "-nostdlib", "-nostartfiles"])
            .args([
                "-fno-stack-protector",
                "-fno-builtin",
                "-mgeneral-regs-only",
                "-mno-red-zone",
                "-static",
                "-Wall",
                "-Werror",
            ])
            .arg(format!("-Wl,-T,{}", src.join("link.ld").display()))
            .args(["-Wl,--build-id=none", "-Wl,-z,noexecstack", "-Wl,--no-warn-rwx-segments", "-o"])
            .arg(&tmp)
            .arg(src.join("start.S"))
            .arg(src.join("guest.c"))
            .status()
            .expect("running gcc");
        assert!(status.success(), "building the synthetic guest failed");
        std::fs::rename(&tmp, &out).unwrap();
        out
    })
}

/// A running hull-vmm.
pub struct Vm {
    pub child: Child,
    pub console: PathBuf,
    pub stderr: PathBuf,
}

impl Vm {
    /// Start `hull-vmm ARGS --console-log <dir>/console.log`.
    pub fn start(dir: &Path, args: &[&str]) -> Vm {
        let console = dir.join("console.log");
        let stderr = dir.join("vmm.stderr");
        let child = Command::new(vmm_bin())
            .args(args)
            .arg("--console-log")
            .arg(&console)
            .env("HULL_VMM_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("spawning hull-vmm");
        Vm { child, console, stderr }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn console_text(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    pub fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// Wait until the console shows `needle`; panics with the console and log on timeout.
    pub fn wait_console(&mut self, needle: &str, timeout: Duration) {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.console_text().contains(needle) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "hull-vmm exited ({status}) before {needle:?}\nconsole:\n{}\nlog:\n{}",
                    self.console_text(),
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out waiting for {needle:?}\nconsole:\n{}\nlog:\n{}", self.console_text(), self.stderr_text());
    }

    /// Wait for the VMM to exit; panics on timeout (killing it).
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!(
            "hull-vmm did not exit within {timeout:?}\nconsole:\n{}\nlog:\n{}",
            self.console_text(),
            self.stderr_text()
        );
    }

    /// A field of /proc/<pid>/status, in kB for the memory ones.
    pub fn status_field(&self, field: &str) -> Option<String> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        status.lines().find_map(|l| l.strip_prefix(&format!("{field}:")).map(|v| v.trim().to_string()))
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A host-side hybrid-vsock connection: `CONNECT <port>`, then raw bytes.
pub fn vsock_connect(uds: &Path, port: u32) -> std::os::unix::net::UnixStream {
    use std::io::Write;
    let mut s = std::os::unix::net::UnixStream::connect(uds).expect("connecting to the vsock socket");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("CONNECT {port}\n").as_bytes()).unwrap();
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        s.read_exact(&mut byte).expect("reading the OK line");
        line.push(byte[0]);
    }
    let line = String::from_utf8(line).unwrap();
    assert!(line.starts_with("OK "), "unexpected reply {line:?}");
    s
}

/// Hardware virtualisation (not this host's PVM): where hull-vmm can boot Linux.
pub fn hardware_kvm() -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let flag = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    flag && Path::new("/dev/kvm").exists()
}
