//! The sandbox supervisor: one process per container that owns its VM.
//!
//! It boots the sandbox, creates the container, relays stdio, serves the control socket for
//! later CLI verbs, and returns the container's exit status (128+N for a signal) once its init
//! ends, after tearing the VM down. `state.pid` names this process, so whoever waits on it
//! (podman's conmon, a shell) sees the container's real exit code.
//!
//! Failures of any sandbox process (VMM, virtiofsd, vsock backend) or of the agent connection
//! end the container with [`SANDBOX_FAILED`] instead of hanging.

pub mod control;

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hull_protocol::{Event, Reply, RequestBody};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};

use crate::agent_client::AgentNotice;
use crate::assets::Assets;
use crate::bundle::Bundle;
use crate::hooks;
use crate::hypervisor::Nic;
use crate::network;
use crate::sandbox::{Sandbox, SandboxConfig, SharedRootfs};
use crate::spec;
use crate::stdio;
use crate::terminal::{self, Console, Tty};
use crate::state::{now_rfc3339, State, StateDir, Status};
use control::{ControlReply, ControlRequest, Incoming};

/// Exit status reported when the sandbox itself failed (VM or a daemon died, agent lost).
pub const SANDBOX_FAILED: i32 = 255;

/// Signals a supervisor forwards to the container instead of dying of them (runc's `run`
/// forwards them too).
const FORWARDED: [Signal; 6] =
    [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

enum Msg {
    Agent(AgentNotice),
    ProcessEnded(&'static str),
    Control(Incoming),
    Signal(i32),
}

pub struct Supervisor {
    dir: StateDir,
    state: State,
    sandbox: Sandbox,
    /// Dropped (taps closed, redirects removed) after the sandbox is shut down.
    network: Option<network::Attachment>,
    hooks: Option<oci_spec::runtime::Hooks>,
    relays: Option<stdio::Relays>,
    /// The host terminal the container's terminal mirrors, if it has one.
    tty: Option<Tty>,
    /// Why `start` must fail: the config has no `process`.
    missing_process: Option<String>,
    /// Statuses of exec'd processes that ended, and the `wait_exec` callers still waiting.
    exec_exits: HashMap<String, i32>,
    exec_waiters: HashMap<String, Vec<Sender<ControlReply>>>,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
}

impl Supervisor {
    /// Block the forwarded signals in the calling thread; threads spawned afterwards inherit
    /// the mask, so only the forwarding thread ever receives them. Call before anything
    /// spawns a thread.
    pub fn block_forwarded_signals() -> Result<SigSet> {
        let mut set = SigSet::empty();
        FORWARDED.iter().for_each(|s| set.add(*s));
        // Not forwarded: a terminal's size change, mirrored into the guest instead.
        set.add(Signal::SIGWINCH);
        set.thread_block()?;
        Ok(set)
    }

    /// Boot the sandbox and create the container in it (status `created`). The state dir
    /// must exist; on error everything this started is stopped again and the caller removes
    /// the state dir.
    pub fn create(
        dir: StateDir,
        bundle: &Bundle,
        config: &SandboxConfig,
        console: &Console,
        signals: SigSet,
    ) -> Result<Supervisor> {
        let id = dir.id();
        let assets = Assets::locate()?;
        let mut state = State {
            oci_version: bundle.spec.version().clone(),
            id: id.clone(),
            status: Status::Creating,
            pid: Some(std::process::id() as i32),
            supervisor_start: process_start_time(std::process::id() as i32),
            bundle: bundle.dir.clone(),
            annotations: bundle.raw["annotations"].as_object().cloned().unwrap_or_default(),
            created: now_rfc3339(),
            exit_status: None,
            network: None,
        };
        dir.write(&state)?;

        let rootfs =
            SharedRootfs { host_path: bundle.rootfs.clone(), subdir: spec::share_subdir(&id), binds: bundle.binds.clone() };
        let network = bundle.netns.as_deref().map(network::attach).transpose()?;
        if let Some(net) = &network {
            state.network = Some(net.record());
            dir.write(&state)?;
        }
        let nics = network.iter().flat_map(|n| &n.taps).map(|t| Nic { tap_fd: t.fd.as_raw_fd(), mac: t.mac.clone() }).collect();
        let config = config.sized_for(&bundle.spec);
        tracing::info!(vcpus = config.vcpus, memory_mib = config.memory_mib, "sandbox size");
        let sandbox = Sandbox::boot(&dir, &assets, &config, Some(&rootfs), nics)?;
        if let Some(net) = &network {
            sandbox
                .agent
                .call(RequestBody::ConfigureNetwork { interfaces: net.interfaces.clone(), routes: net.routes.clone() })
                .context("configuring the guest network")?;
        }
        // runtime-spec: a config without `process` can be created; only `start` fails. Its
        // sandbox boots, but there is no process to create in the guest.
        let missing_process = bundle.require_process().err().map(|e| format!("{e:#}"));
        let (relays, tty) = if missing_process.is_none() {
            let guest_spec = spec::for_guest(&bundle.raw, &id, &bundle.binds);
            match sandbox.agent.call(RequestBody::CreateContainer { container_id: id.clone(), spec: guest_spec }) {
                Ok(Reply::Created { pid }) => tracing::info!(guest_pid = pid, "container created"),
                Ok(other) => bail!("agent answered create with {other:?}"),
                Err(e) => return Err(e.context("creating the container in the guest")),
            }
            // On any error, dropping the sandbox stops the VM and its daemons.
            let terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
            let (relays, tty) = terminal::attach(sandbox.vsock_socket(), &id, None, terminal, console)?;
            (Some(relays), tty)
        } else {
            (None, None)
        };
        let hooks = bundle.spec.hooks().clone();
        hooks::run(hooks.as_ref(), hooks::Point::Prestart, &state)?;
        hooks::run(hooks.as_ref(), hooks::Point::CreateRuntime, &state)?;

        let (tx, rx) = mpsc::channel();
        let mut sup = Supervisor {
            dir,
            state,
            sandbox,
            network,
            hooks,
            relays,
            tty,
            missing_process,
            tx,
            rx,
            exec_exits: HashMap::new(),
            exec_waiters: HashMap::new(),
        };
        sup.spawn_watchers(signals)?;
        sup.mirror_terminal_size(None);
        state = sup.state.clone();
        state.status = Status::Created;
        sup.set_state(state)?;
        Ok(sup)
    }

    fn spawn_watchers(&mut self, signals: SigSet) -> Result<()> {
        // Agent events and loss.
        let notices = std::mem::replace(&mut self.sandbox.notices, mpsc::channel().1);
        let tx = self.tx.clone();
        std::thread::Builder::new().name("agent-events".into()).spawn(move || {
            for notice in notices {
                if tx.send(Msg::Agent(notice)).is_err() {
                    return;
                }
            }
        })?;

        // Any sandbox process ending.
        let pidfds = self.sandbox.pidfds()?;
        let tx = self.tx.clone();
        std::thread::Builder::new().name("proc-watch".into()).spawn(move || watch_processes(pidfds, tx))?;

        // Signals to forward.
        let tx = self.tx.clone();
        std::thread::Builder::new().name("signals".into()).spawn(move || loop {
            match signals.wait() {
                Ok(sig) => {
                    if tx.send(Msg::Signal(sig as i32)).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        })?;

        // Later CLI verbs.
        let (ctl_tx, ctl_rx) = mpsc::channel::<Incoming>();
        control::serve(&self.dir.control_socket(), ctl_tx)?;
        let tx = self.tx.clone();
        std::thread::Builder::new().name("control-fwd".into()).spawn(move || {
            for req in ctl_rx {
                if tx.send(Msg::Control(req)).is_err() {
                    return;
                }
            }
        })?;
        Ok(())
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    pub fn vsock_socket(&self) -> &std::path::Path {
        self.sandbox.vsock_socket()
    }

    fn set_state(&mut self, state: State) -> Result<()> {
        self.dir.write(&state)?;
        self.state = state;
        Ok(())
    }

    pub fn start(&mut self) -> Result<()> {
        match self.state.status {
            Status::Created => {}
            other => bail!("cannot start a container in state {}", other.as_str()),
        }
        if let Some(why) = &self.missing_process {
            bail!("{why}");
        }
        self.sandbox.agent.call(RequestBody::StartContainer { container_id: self.state.id.clone() })?;
        let mut state = self.state.clone();
        state.status = Status::Running;
        self.set_state(state)?;
        // A failing poststart hook is logged; the container keeps running (runtime-spec).
        if let Err(e) = hooks::run(self.hooks.as_ref(), hooks::Point::Poststart, &self.state) {
            tracing::warn!("{e:#}");
        }
        Ok(())
    }

    /// Serve until the container's init ends; returns its exit status. The VM is gone and
    /// `state.json` says `stopped` when this returns.
    pub fn serve(mut self) -> i32 {
        let status = loop {
            let Ok(msg) = self.rx.recv() else { break self.fail("supervisor lost its event sources") };
            match msg {
                Msg::Agent(AgentNotice::Event(Event::ProcessExited { container_id, exec_id: Some(exec), status }))
                    if container_id == self.state.id =>
                {
                    tracing::info!(exec, status, "exec exited");
                    match self.exec_waiters.remove(&exec) {
                        Some(waiters) => {
                            for waiter in waiters {
                                let _ = waiter.send(ControlReply { status: Some(status), ..Default::default() });
                            }
                            self.forget_exec(&exec);
                        }
                        // Kept until its `hull exec` asks (it may not have yet).
                        None => {
                            self.exec_exits.insert(exec, status);
                        }
                    }
                }
                Msg::Agent(AgentNotice::Event(Event::ProcessExited { container_id, exec_id: None, status }))
                    if container_id == self.state.id =>
                {
                    tracing::info!(status, "container exited");
                    if !(0..=255).contains(&status) {
                        break self.fail(&format!("agent reported an impossible exit status {status}"));
                    }
                    if let Some(mut relays) = self.relays.take() {
                        relays.finish(Duration::from_secs(5));
                    }
                    break status;
                }
                Msg::Agent(AgentNotice::Event(other)) => tracing::debug!(?other, "ignoring event"),
                Msg::Agent(AgentNotice::Lost(reason)) => break self.fail(&format!("lost the guest agent: {reason}")),
                Msg::ProcessEnded(name) => {
                    let how = self.sandbox.check_alive().err().map(|e| e.to_string()).unwrap_or_else(|| format!("{name} exited"));
                    break self.fail(&format!("sandbox process failed: {how}"));
                }
                Msg::Signal(sig) if sig == libc::SIGWINCH => self.mirror_terminal_size(None),
                Msg::Signal(sig) => {
                    if let Err(e) = self.signal(sig, false, None) {
                        tracing::warn!("forwarding signal {sig}: {e:#}");
                    }
                }
                Msg::Control((req, reply)) => {
                    if let Some(status) = self.control(req, reply) {
                        break status;
                    }
                }
            }
        };
        self.finish(status)
    }

    /// Handle one control request, replying on `reply` (now, or later for `wait_exec`).
    /// Returns the status to exit with when the request ends the container.
    fn control(&mut self, req: ControlRequest, reply: Sender<ControlReply>) -> Option<i32> {
        let result = match req {
            ControlRequest::Start => self.start(),
            ControlRequest::Kill { signal, all, exec_id } => self.signal(signal, all, exec_id),
            ControlRequest::Exec { exec_id, process } => self.exec(exec_id, process),
            ControlRequest::WaitExec { exec_id } => {
                match self.exec_exits.remove(&exec_id) {
                    Some(status) => {
                        let _ = reply.send(ControlReply { status: Some(status), ..Default::default() });
                        self.forget_exec(&exec_id);
                    }
                    None => self.exec_waiters.entry(exec_id).or_default().push(reply),
                }
                return None;
            }
            ControlRequest::Resize { exec_id, width, height } => {
                self.mirror_terminal_size(Some((exec_id, width, height)));
                Ok(())
            }
            ControlRequest::Pause => self.pause(true),
            ControlRequest::Resume => self.pause(false),
            ControlRequest::Ps => {
                let call = RequestBody::ListProcesses { container_id: self.state.id.clone() };
                let answer = self.query(call, "ps", |r| match r {
                    Reply::Processes { processes } => Some(ControlReply { processes: Some(processes), ..Default::default() }),
                    _ => None,
                });
                let _ = reply.send(answer);
                return None;
            }
            ControlRequest::Stats => {
                let call = RequestBody::ContainerStats { container_id: self.state.id.clone() };
                let answer = self.query(call, "stats", |r| match r {
                    Reply::Stats { stats } => Some(ControlReply { stats: Some(stats), ..Default::default() }),
                    _ => None,
                });
                let _ = reply.send(answer);
                return None;
            }
            ControlRequest::Update { update } => {
                let id = self.state.id.clone();
                self.sandbox.agent.call(RequestBody::UpdateResources { container_id: id, update }).map(|_| ())
            }
            ControlRequest::Destroy => {
                let _ = reply.send(ControlReply::default());
                return Some(128 + libc::SIGKILL);
            }
        };
        let _ = reply.send(ControlReply::from_result(result));
        None
    }

    /// Ask the agent, and answer with what `pick` takes from its reply.
    fn query(&self, call: RequestBody, what: &str, pick: impl FnOnce(Reply) -> Option<ControlReply>) -> ControlReply {
        match self.sandbox.agent.call(call) {
            Ok(reply) => {
                let shown = format!("{reply:?}");
                pick(reply).unwrap_or_else(|| ControlReply::failed(format!("agent answered {what} with {shown}")))
            }
            Err(e) => ControlReply::failed(format!("{e:#}")),
        }
    }

    /// Give the guest terminal of the init (or of an exec) the host terminal's size.
    fn mirror_terminal_size(&self, exec: Option<(String, u16, u16)>) {
        let (exec_id, width, height) = match exec {
            Some((id, w, h)) => (Some(id), w, h),
            None => match self.tty.as_ref().and_then(Tty::size) {
                Some((w, h)) => (None, w, h),
                None => return,
            },
        };
        let call = RequestBody::ResizeTerminal { container_id: self.state.id.clone(), exec_id, width, height };
        if let Err(e) = self.sandbox.agent.call(call) {
            tracing::warn!("resizing the container's terminal: {e:#}");
        }
    }

    /// The exec's status has been delivered: the guest can drop what it keeps for it.
    fn forget_exec(&self, exec_id: &str) {
        let call = RequestBody::RemoveProcess { container_id: self.state.id.clone(), exec_id: exec_id.to_string() };
        if let Err(e) = self.sandbox.agent.call(call) {
            tracing::warn!(exec_id, "removing the exec in the guest: {e:#}");
        }
    }

    fn signal(&self, signal: i32, all: bool, exec_id: Option<String>) -> Result<()> {
        self.sandbox
            .agent
            .call(RequestBody::SignalProcess { container_id: self.state.id.clone(), exec_id, signal, all })
            .map(|_| ())
    }

    fn pause(&mut self, pause: bool) -> Result<()> {
        let (from, to) = if pause { (Status::Running, Status::Paused) } else { (Status::Paused, Status::Running) };
        if self.state.status != from {
            bail!("cannot {} a container that is {}", if pause { "pause" } else { "resume" }, self.state.status.as_str());
        }
        let id = self.state.id.clone();
        let call = if pause { RequestBody::PauseContainer { container_id: id } } else { RequestBody::ResumeContainer { container_id: id } };
        self.sandbox.agent.call(call)?;
        let mut state = self.state.clone();
        state.status = to;
        self.set_state(state)
    }

    fn exec(&mut self, exec_id: String, process: serde_json::Value) -> Result<()> {
        if self.state.status != Status::Running {
            bail!("cannot exec in a container that is {}", self.state.status.as_str());
        }
        hull_protocol::validate_id(&exec_id).map_err(|e| anyhow::anyhow!("exec id: {e}"))?;
        self.sandbox.agent.call(RequestBody::ExecProcess { container_id: self.state.id.clone(), exec_id, process })?;
        Ok(())
    }

    fn fail(&self, why: &str) -> i32 {
        tracing::error!("{why} (guest console: {})", self.dir.console_log().display());
        eprintln!("hull: error: container {}: {why}", self.state.id);
        SANDBOX_FAILED
    }

    fn finish(mut self, status: i32) -> i32 {
        self.sandbox.shutdown();
        if let Some(mut net) = self.network.take() {
            net.detach();
        }
        let mut state = self.state.clone();
        state.status = Status::Stopped;
        state.exit_status = Some(status);
        if let Err(e) = self.set_state(state) {
            tracing::warn!("recording the exit: {e:#}");
        }
        let _ = std::fs::remove_file(self.dir.control_socket());
        status
    }
}

fn watch_processes(pidfds: Vec<(&'static str, OwnedFd)>, tx: Sender<Msg>) {
    let mut fds: Vec<PollFd> = pidfds.iter().map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)).collect();
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                if let Some(i) = fds.iter().position(|f| f.revents().is_some_and(|r| !r.is_empty())) {
                    let _ = tx.send(Msg::ProcessEnded(pidfds[i].0));
                    return;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
        }
    }
}

/// Is the supervisor recorded in `state` still running? (A supervisor that died abruptly
/// leaves a state that says `running`; the container is then stopped.) The pid alone could
/// have been reused, so its start time must match too.
pub fn is_alive(state: &State) -> bool {
    let Some(pid) = state.pid else { return false };
    match (state.supervisor_start, process_start_time(pid)) {
        (Some(recorded), Some(now)) => recorded == now,
        _ => false,
    }
}

/// Start time of `pid` in clock ticks since boot (field 22 of `/proc/<pid>/stat`).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields are counted after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    rest.split(' ').nth(19)?.parse().ok()
}

/// The container's status as the CLI reports it.
pub fn effective_status(state: &State) -> Status {
    match state.status {
        Status::Stopped => Status::Stopped,
        _ if !is_alive(state) => Status::Stopped,
        s => s,
    }
}

/// Path of the `hull` binary for re-executing as a supervisor.
pub fn self_exe() -> Result<PathBuf> {
    std::env::current_exe().context("locating the hull binary")
}

