//! The containers this guest runs, and their lifecycle through libcontainer.

use std::collections::HashMap;
use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use hull_protocol::{validate_id, Event, StreamKind};
use libcontainer::container::Container as LcContainer;
use libcontainer::oci_spec::runtime::Spec;
use libcontainer::signal::Signal;
use nix::fcntl::OFlag;

use crate::create_helper;
use crate::guest_init::SHARE_DIR;
use crate::reaper::Reaper;

/// libcontainer's state root inside the guest.
pub const STATE_ROOT: &str = "/run/hull/containers";
/// Per-container bundle dirs (config.json as rewritten for the guest).
const BUNDLE_ROOT: &str = "/run/hull/bundles";

pub struct Registry {
    reaper: Reaper,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    containers: HashMap<String, Entry>,
    /// Exits of pids not (yet) known as a container init: a container can die between its
    /// helper's exit and our registering its pid.
    unclaimed_exits: HashMap<i32, i32>,
}

struct Entry {
    pid: i32,
    exit_status: Option<i32>,
    /// Host-facing ends of the container's stdio pipes, until the host connects each stream.
    stdio: HashMap<StreamKind, OwnedFd>,
}

impl Registry {
    pub fn new(reaper: Reaper) -> Result<Self> {
        fs::create_dir_all(STATE_ROOT)?;
        fs::create_dir_all(BUNDLE_ROOT)?;
        Ok(Registry { reaper, inner: Mutex::new(Inner::default()) })
    }

    /// Create a container; returns its init's pid, and the exit event to send at once when
    /// the init already died (before we could register it).
    pub fn create(&self, id: &str, spec: serde_json::Value) -> Result<(i32, Option<Event>)> {
        validate_id(id).map_err(|e| anyhow!(e))?;
        if self.inner.lock().unwrap().containers.contains_key(id) {
            bail!("container {id} already exists");
        }
        let spec: Spec = serde_json::from_value(spec).context("invalid container spec")?;
        let root = spec.root().as_ref().ok_or_else(|| anyhow!("spec has no root"))?.path();
        if !root.is_absolute() || !root.starts_with(SHARE_DIR) || root.components().any(|c| c.as_os_str() == "..") {
            bail!("root.path {} is not inside the share {SHARE_DIR}", root.display());
        }
        if !root.is_dir() {
            bail!("root.path {} does not exist in the guest", root.display());
        }

        let bundle = Path::new(BUNDLE_ROOT).join(id);
        fs::create_dir_all(&bundle)?;
        let result = self.create_in(id, &bundle, &spec);
        if result.is_err() {
            let _ = fs::remove_dir_all(&bundle);
            let _ = fs::remove_dir_all(Path::new(STATE_ROOT).join(id));
        }
        result
    }

    fn create_in(&self, id: &str, bundle: &Path, spec: &Spec) -> Result<(i32, Option<Event>)> {
        fs::write(bundle.join("config.json"), serde_json::to_vec(spec)?)?;
        let (stdin_r, stdin_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (stdout_r, stdout_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (stderr_r, stderr_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let error_file = bundle.join("create-error");

        let mut cmd = Command::new("/proc/self/exe");
        cmd.arg(create_helper::ARG)
            .arg(id)
            .arg(bundle)
            .arg(STATE_ROOT)
            .arg(&error_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
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
        let status = self.reaper.wait(helper);
        if status != 0 {
            let reason = fs::read_to_string(&error_file).unwrap_or_default();
            let reason = reason.trim();
            bail!("{}", if reason.is_empty() { format!("create helper exited with status {status}") } else { reason.to_string() });
        }
        let container = load(id)?;
        let pid = container.pid().ok_or_else(|| anyhow!("created container has no pid"))?.as_raw();

        let mut inner = self.inner.lock().unwrap();
        let exit_status = inner.unclaimed_exits.remove(&pid);
        let stdio = HashMap::from([
            (StreamKind::Stdin, stdin_w),
            (StreamKind::Stdout, stdout_r),
            (StreamKind::Stderr, stderr_r),
        ]);
        inner.containers.insert(id.to_string(), Entry { pid, exit_status, stdio });
        let early_exit = exit_status.map(|status| Event::ProcessExited { container_id: id.to_string(), status });
        Ok((pid, early_exit))
    }

    pub fn start(&self, id: &str) -> Result<()> {
        self.known(id)?;
        load(id)?.start().context("starting the container")
    }

    pub fn signal(&self, id: &str, signal: i32, all: bool) -> Result<()> {
        self.known(id)?;
        let signal = Signal::try_from(signal).map_err(|_| anyhow!("invalid signal {signal}"))?;
        load(id)?.kill(signal, all).context("signalling the container")
    }

    pub fn remove(&self, id: &str) -> Result<()> {
        self.known(id)?;
        if let Ok(mut container) = load(id) {
            container.delete(true).context("deleting the container")?;
        }
        let _ = fs::remove_dir_all(Path::new(BUNDLE_ROOT).join(id));
        self.inner.lock().unwrap().containers.remove(id);
        Ok(())
    }

    /// Hand out the host-facing end of one stdio pipe, once.
    pub fn take_stream(&self, id: &str, kind: StreamKind) -> Option<OwnedFd> {
        self.inner.lock().unwrap().containers.get_mut(id)?.stdio.remove(&kind)
    }

    /// Record the exit of `pid`; returns the event to send when it was a container's init.
    pub fn process_exited(&self, pid: i32, status: i32) -> Option<Event> {
        let mut inner = self.inner.lock().unwrap();
        let Some((id, entry)) = inner.containers.iter_mut().find(|(_, e)| e.pid == pid) else {
            inner.unclaimed_exits.insert(pid, status);
            return None;
        };
        entry.exit_status = Some(status);
        // Nobody will read a stream the host never connected; don't let it pin the pipe.
        entry.stdio.remove(&StreamKind::Stdin);
        Some(Event::ProcessExited { container_id: id.clone(), status })
    }


    fn known(&self, id: &str) -> Result<()> {
        if self.inner.lock().unwrap().containers.contains_key(id) {
            Ok(())
        } else {
            bail!("container {id:?} does not exist")
        }
    }
}

fn load(id: &str) -> Result<LcContainer> {
    LcContainer::load(PathBuf::from(STATE_ROOT).join(id)).with_context(|| format!("loading container {id}"))
}
