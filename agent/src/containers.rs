//! The containers this guest runs, and their lifecycle through libcontainer.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use hull_protocol::{validate_id, Event, ProcessInfo, StreamKind, MAX_CMDLINE, MAX_PROCESSES};
use libcontainer::container::Container as LcContainer;
use libcontainer::oci_spec::runtime::{Process, Spec};
use libcontainer::signal::Signal;
use nix::fcntl::OFlag;

use crate::create_helper;
use crate::guest_init::SHARE_DIR;
use crate::propagation;
use crate::reaper::Reaper;
use crate::refusal;
use crate::terminal::ConsoleSocket;

/// libcontainer's state root inside the guest.
pub const STATE_ROOT: &str = "/run/hull/containers";
/// Per-container bundle dirs (config.json as rewritten for the guest).
const BUNDLE_ROOT: &str = "/run/hull/bundles";

pub struct Registry {
    reaper: Reaper,
    inner: Mutex<Inner>,
}

/// A process the host can talk to: a container's init (`None`) or one of its execs.
type ProcKey = (String, Option<String>);

#[derive(Default)]
struct Inner {
    containers: HashSet<String>,
    processes: HashMap<ProcKey, Proc>,
    /// Exits of pids not (yet) registered: a process can die between its helper's exit and
    /// our registering its pid.
    unclaimed_exits: HashMap<i32, i32>,
    /// Per container, the OOM kills already reported.
    oom_kills_seen: HashMap<String, u64>,
    /// Output pipes of removed processes that the host had not taken yet, with when they were
    /// left. The host connects a process's streams and then asks for its exit, and may remove
    /// it as soon as it has that: its stream connections can still be on their way here, and
    /// the output waiting in the pipes must reach them, not be dropped with the process.
    left_streams: Vec<(ProcKey, std::time::Instant, HashMap<StreamKind, OwnedFd>)>,
}

/// How long a removed process's untaken output pipes wait for the host's streams.
const LEFT_STREAMS_KEPT: std::time::Duration = std::time::Duration::from_secs(30);

impl Inner {
    /// Remove a process, keeping its untaken output pipes for a while (see `left_streams`).
    fn forget(&mut self, key: &ProcKey) {
        let now = std::time::Instant::now();
        // An id used again (execs' are) must never get an earlier process's pipes.
        self.left_streams.retain(|(k, at, _)| k != key && now.duration_since(*at) < LEFT_STREAMS_KEPT);
        if let Some(mut proc) = self.processes.remove(key) {
            proc.stdio.remove(&StreamKind::Stdin);
            if !proc.stdio.is_empty() {
                self.left_streams.push((key.clone(), now, proc.stdio));
            }
        }
    }
}

struct Proc {
    pid: i32,
    exit_status: Option<i32>,
    /// Host-facing ends of the process's stdio pipes, until the host connects each stream.
    stdio: HashMap<StreamKind, OwnedFd>,
    /// The master of its terminal, if it has one.
    terminal: Option<OwnedFd>,
}

/// Whether `process` asks for a terminal, and of which size (columns, rows) if it says.
fn terminal_of(process: &Process) -> Option<Option<(u16, u16)>> {
    let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
    process.terminal().unwrap_or(false).then(|| process.console_size().map(|b| (clamp(b.width()), clamp(b.height()))))
}

/// A new process's host-facing stdio.
struct Stdio3 {
    streams: HashMap<StreamKind, OwnedFd>,
    terminal: Option<OwnedFd>,
}

/// `noNewPrivileges: false` means what its absence means, but libcontainer 0.7 tests only for
/// presence: given `false`, it loads the seccomp filter after dropping capabilities and
/// without no_new_privs, which the kernel refuses ("failed to load seccomp context"), so any
/// profile failed for a config that spelled the default out. Without the key it loads the
/// filter while still privileged, as runc does.
fn drop_false_no_new_privileges(process: &mut serde_json::Value) {
    if let Some(p) = process.as_object_mut() {
        if p.get("noNewPrivileges") == Some(&serde_json::Value::Bool(false)) {
            p.remove("noNewPrivileges");
        }
    }
}

/// What a created process reports: its pid, and the exit event to send at once when it
/// already died before we could register it.
pub type Spawned = (i32, Option<Event>);

impl Registry {
    pub fn new(reaper: Reaper) -> Result<Self> {
        fs::create_dir_all(STATE_ROOT)?;
        fs::create_dir_all(BUNDLE_ROOT)?;
        Ok(Registry { reaper, inner: Mutex::new(Inner::default()) })
    }

    pub fn create(&self, id: &str, mut spec: serde_json::Value) -> Result<Spawned> {
        validate_id(id).map_err(refusal::invalid)?;
        if self.inner.lock().unwrap().containers.contains(id) {
            return Err(refusal::already_exists(format!("container {id} already exists")));
        }
        if let Some(process) = spec.get_mut("process") {
            drop_false_no_new_privileges(process);
        }
        propagation::move_into_hook(&mut spec).map_err(|e| refusal::invalid(format!("{e:#}")))?;
        propagation::mount_bind_sources(&spec, SHARE_DIR);
        let spec: Spec =
            serde_json::from_value(spec).map_err(|e| refusal::invalid(format!("invalid container spec: {e}")))?;
        let root = spec.root().as_ref().ok_or_else(|| refusal::invalid("spec has no root"))?.path();
        if !root.is_absolute() || !root.starts_with(SHARE_DIR) || root.components().any(|c| c.as_os_str() == "..") {
            return Err(refusal::invalid(format!("root.path {} is not inside the share {SHARE_DIR}", root.display())));
        }
        if !root.is_dir() {
            bail!("root.path {} does not exist in the guest", root.display());
        }

        let bundle = Path::new(BUNDLE_ROOT).join(id);
        fs::create_dir_all(&bundle)?;
        let result = (|| {
            fs::write(bundle.join("config.json"), serde_json::to_vec(&spec)?)?;
            let terminal = spec.process().as_ref().and_then(terminal_of);
            let stdio =
                self.run_helper(&[create_helper::INIT, id, path_str(&bundle)?, STATE_ROOT], &bundle, terminal)?;
            let pid = load(id)?.pid().ok_or_else(|| anyhow!("created container has no pid"))?.as_raw();
            self.inner.lock().unwrap().containers.insert(id.to_string());
            Ok(self.register((id.to_string(), None), pid, stdio))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&bundle);
            let _ = fs::remove_dir_all(Path::new(STATE_ROOT).join(id));
        }
        result
    }

    pub fn exec(&self, id: &str, exec_id: &str, mut process: serde_json::Value) -> Result<Spawned> {
        drop_false_no_new_privileges(&mut process);
        validate_id(exec_id).map_err(|e| refusal::invalid(format!("exec id: {e}")))?;
        self.known(id)?;
        let key = (id.to_string(), Some(exec_id.to_string()));
        if self.inner.lock().unwrap().processes.contains_key(&key) {
            return Err(refusal::already_exists(format!("exec {exec_id} already exists in container {id}")));
        }
        let process: Process =
            serde_json::from_value(process).map_err(|e| refusal::invalid(format!("invalid process: {e}")))?;
        let dir = Path::new(BUNDLE_ROOT).join(id).join(format!("exec-{exec_id}"));
        fs::create_dir_all(&dir)?;
        let result = (|| {
            let process_file = dir.join("process.json");
            fs::write(&process_file, serde_json::to_vec(&process)?)?;
            let terminal = terminal_of(&process);
            let stdio =
                self.run_helper(&[create_helper::EXEC, id, path_str(&process_file)?, STATE_ROOT], &dir, terminal)?;
            let pid: i32 = fs::read_to_string(dir.join(create_helper::PID_FILE))?.trim().parse()?;
            Ok(self.register(key, pid, stdio))
        })();
        let _ = fs::remove_dir_all(&dir);
        result
    }

    /// Run the create helper with fresh stdio pipes, or a terminal (of the size given, if
    /// any); returns the host-facing ends.
    fn run_helper(&self, args: &[&str], work_dir: &Path, terminal: Option<Option<(u16, u16)>>) -> Result<Stdio3> {
        let console = terminal.map(|_| ConsoleSocket::bind()).transpose()?;
        let (stdin_r, stdin_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (stdout_r, stdout_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (stderr_r, stderr_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let error_file = work_dir.join("helper-error");

        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(create_helper::ARG).args(args).arg(&error_file).stdin(Stdio::null()).stdout(Stdio::null());
        if let Some(console) = &console {
            cmd.arg(console.path());
        }
        let child_fds = [stdin_r.as_raw_fd(), stdout_w.as_raw_fd(), stderr_w.as_raw_fd()];
        // SAFETY: the closure runs between fork and exec and only calls async-signal-safe
        // functions (fcntl, dup2) on fds that stay open in the parent until spawn returns.
        unsafe {
            cmd.pre_exec(move || {
                // Move out of the way first: a source fd may already sit on 3..=5.
                let mut high = [0; 3];
                for (slot, fd) in high.iter_mut().zip(child_fds) {
                    *slot = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 10);
                    if *slot < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (target, fd) in (create_helper::FIRST_STDIO_FD..).zip(high) {
                    if libc::dup2(fd, target) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let helper = self.reaper.spawn(&mut cmd).context("spawning the create helper")?;
        drop((stdin_r, stdout_w, stderr_w));
        // The terminal is taken while the helper runs, so that its size is set before the
        // process gets far (ConsoleSocket::receive).
        let helper_done = AtomicBool::new(false);
        let (status, master) = std::thread::scope(|s| {
            let receiver = console.as_ref().map(|c| {
                let done = &helper_done;
                let size = terminal.flatten();
                s.spawn(move || c.receive(done, size))
            });
            let status = self.reaper.wait(helper);
            helper_done.store(true, Ordering::Release);
            (status, receiver.map(|r| r.join().unwrap_or_else(|_| Err(anyhow!("the terminal receiver panicked")))))
        });
        if status != 0 {
            let reason = fs::read_to_string(&error_file).unwrap_or_default();
            let reason = reason.trim();
            bail!(
                "{}",
                if reason.is_empty() {
                    format!("create helper exited with status {status}")
                } else {
                    reason.to_string()
                }
            );
        }
        let Some(master) = master else {
            let streams = HashMap::from([
                (StreamKind::Stdin, stdin_w),
                (StreamKind::Stdout, stdout_r),
                (StreamKind::Stderr, stderr_r),
            ]);
            return Ok(Stdio3 { streams, terminal: None });
        };
        // A terminal merges stdout and stderr; the host's stderr stream reads as empty.
        let master = master?;
        drop((stdin_w, stdout_r));
        let streams = HashMap::from([
            (StreamKind::Stdin, master.try_clone()?),
            (StreamKind::Stdout, master.try_clone()?),
            (StreamKind::Stderr, stderr_r),
        ]);
        Ok(Stdio3 { streams, terminal: Some(master) })
    }

    fn register(&self, key: ProcKey, pid: i32, stdio: Stdio3) -> Spawned {
        let mut inner = self.inner.lock().unwrap();
        let exit_status = inner.unclaimed_exits.remove(&pid);
        let early_exit = exit_status.map(|status| Event::ProcessExited {
            container_id: key.0.clone(),
            exec_id: key.1.clone(),
            status,
        });
        inner.left_streams.retain(|(k, _, _)| *k != key);
        inner.processes.insert(key, Proc { pid, exit_status, stdio: stdio.streams, terminal: stdio.terminal });
        (pid, early_exit)
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.known(id)?;
        load(id)?.start().context("starting the container")
    }

    pub fn signal(&self, id: &str, exec_id: Option<&str>, signal: i32, all: bool) -> Result<()> {
        self.known(id)?;
        let signal_num = signal;
        let signal = Signal::try_from(signal).map_err(|_| refusal::invalid(format!("invalid signal {signal}")))?;
        #[cfg(feature = "hostile")]
        if exec_id.is_none() && signal_num == libc::SIGKILL && crate::hostile::has(id, "ignore-sigkill") {
            crate::log::info("hostile: ignore-sigkill: acknowledged, not delivered");
            return Ok(());
        }
        match exec_id {
            None => {
                let key = (id.to_string(), None);
                let exited = self.inner.lock().unwrap().processes.get(&key).is_some_and(|p| p.exit_status.is_some());
                if exited {
                    return Err(refusal::not_found(format!("the init of container {id} has already exited")));
                }
                load(id)?.kill(signal, all).context("signalling the container")
            }
            Some(exec) => {
                let key = (id.to_string(), Some(exec.to_string()));
                let inner = self.inner.lock().unwrap();
                let proc = inner
                    .processes
                    .get(&key)
                    .ok_or_else(|| refusal::not_found(format!("exec {exec} does not exist")))?;
                if proc.exit_status.is_some() {
                    return Err(refusal::not_found(format!("exec {exec} has already exited")));
                }
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(proc.pid),
                    nix::sys::signal::Signal::try_from(signal_num)?,
                )
                .context("signalling the exec")
            }
        }
    }

    /// Forget exec `exec_id` of container `id` once it has exited.
    pub fn remove_process(&self, id: &str, exec_id: &str) -> Result<()> {
        self.known(id)?;
        let key = (id.to_string(), Some(exec_id.to_string()));
        let mut inner = self.inner.lock().unwrap();
        match inner.processes.get(&key) {
            None => Err(refusal::not_found(format!("exec {exec_id} does not exist"))),
            Some(p) if p.exit_status.is_none() => {
                Err(refusal::precondition(format!("exec {exec_id} is still running")))
            }
            Some(_) => {
                inner.forget(&key);
                Ok(())
            }
        }
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        self.known(id)?;
        if let Ok(mut container) = load(id) {
            container.delete(true).context("deleting the container")?;
        }
        let _ = fs::remove_dir_all(Path::new(BUNDLE_ROOT).join(id));
        let mut inner = self.inner.lock().unwrap();
        inner.containers.remove(id);
        let keys: Vec<ProcKey> = inner.processes.keys().filter(|(cid, _)| cid == id).cloned().collect();
        for key in &keys {
            inner.forget(key);
        }
        inner.oom_kills_seen.remove(id);
        Ok(())
    }

    pub fn stats(&self, id: &str) -> Result<hull_protocol::ContainerStats> {
        self.known(id)?;
        Ok(crate::cgroup::stats(id))
    }

    pub fn update(&self, id: &str, update: &hull_protocol::ResourceUpdate) -> Result<()> {
        self.known(id)?;
        crate::cgroup::update(id, update)
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.known(id)?;
        load(id)?.pause().context("pausing the container")
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.known(id)?;
        load(id)?.resume().context("resuming the container")
    }

    /// Processes in the container's cgroup, with their command lines.
    pub fn processes(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        self.known(id)?;
        let procs = fs::read_to_string(format!("/sys/fs/cgroup/hull/{id}/cgroup.procs"))
            .with_context(|| format!("reading the cgroup of container {id}"))?;
        Ok(procs
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .take(MAX_PROCESSES)
            .map(|pid| {
                let raw = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let mut cmdline = String::from_utf8_lossy(&raw).replace('\0', " ").trim_end().to_string();
                if cmdline.len() > MAX_CMDLINE {
                    let mut end = MAX_CMDLINE;
                    while !cmdline.is_char_boundary(end) {
                        end -= 1;
                    }
                    cmdline.truncate(end);
                }
                ProcessInfo { pid, cmdline }
            })
            .collect())
    }

    pub fn resize_terminal(&self, id: &str, exec_id: Option<&str>, width: u16, height: u16) -> Result<()> {
        let key = (id.to_string(), exec_id.map(str::to_string));
        let inner = self.inner.lock().unwrap();
        let proc = inner.processes.get(&key).ok_or_else(|| refusal::not_found(format!("no process {key:?}")))?;
        let master =
            proc.terminal.as_ref().ok_or_else(|| refusal::precondition(format!("process {key:?} has no terminal")))?;
        crate::terminal::resize(master, width, height)
    }

    /// Hand out the host-facing end of one stdio pipe, once (also of a process removed just
    /// before the host's stream arrived).
    pub fn take_stream(&self, id: &str, exec_id: Option<&str>, kind: StreamKind) -> Option<OwnedFd> {
        let key = (id.to_string(), exec_id.map(str::to_string));
        let mut inner = self.inner.lock().unwrap();
        if let Some(proc) = inner.processes.get_mut(&key) {
            return proc.stdio.remove(&kind);
        }
        inner.left_streams.iter_mut().filter(|(k, _, _)| *k == key).find_map(|(_, _, streams)| streams.remove(&kind))
    }

    /// Record the exit of `pid`; returns the events to send when it was a registered process:
    /// an OOM kill in its container first, if one happened since the last exit, then the exit.
    pub fn process_exited(&self, pid: i32, status: i32) -> Vec<Event> {
        let mut inner = self.inner.lock().unwrap();
        let Some(((id, exec_id), proc)) =
            inner.processes.iter_mut().find(|(_, p)| p.pid == pid && p.exit_status.is_none())
        else {
            inner.unclaimed_exits.insert(pid, status);
            return Vec::new();
        };
        proc.exit_status = Some(status);
        // Nobody will read a stream the host never connected; don't let it pin the pipe.
        proc.stdio.remove(&StreamKind::Stdin);
        let (id, exec_id) = (id.clone(), exec_id.clone());
        let mut events = Vec::new();
        let kills = crate::cgroup::oom_kills(&id);
        let seen = inner.oom_kills_seen.entry(id.clone()).or_default();
        if kills > *seen {
            *seen = kills;
            events.push(Event::OomKilled { container_id: id.clone() });
        }
        events.push(Event::ProcessExited { container_id: id, exec_id, status });
        events
    }

    fn known(&self, id: &str) -> Result<()> {
        if self.inner.lock().unwrap().containers.contains(id) {
            Ok(())
        } else {
            Err(refusal::not_found(format!("container {id:?} does not exist")))
        }
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().ok_or_else(|| anyhow!("non-UTF-8 path {}", p.display()))
}

fn load(id: &str) -> Result<LcContainer> {
    LcContainer::load(PathBuf::from(STATE_ROOT).join(id)).with_context(|| format!("loading container {id}"))
}
