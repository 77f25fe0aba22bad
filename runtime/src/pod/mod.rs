//! The pod: one sandbox VM and the containers in it — the one lifecycle core under both front
//! ends.
//!
//! The CLI's supervisor (one container per VM) and the containerd shim (a Kubernetes pod per
//! VM) are adapters over this: they translate their callers' requests into the operations
//! below and the [`PodEvent`]s back into their callers' terms. Everything a container's life
//! needs lives here once: booting the VM through a hypervisor backend, the share, the network
//! attachment, the typed agent, the state machine of containers and execs ([`state`]),
//! watching the VM's processes and the agent's notices, relaying stdio, and tear-down.
//!
//! Locking: one table lock, never held across a call into the guest. A state-changing call
//! marks its container busy instead, so calls on one container are serialised while other
//! containers of the pod go on. Exits arrive from the agent's notice thread and are recorded
//! under the table lock; one that arrives while its process's start is still in flight is held
//! back until the start is recorded, so `Started` always precedes `Exited`.
//!
//! The guest is not trusted: it can only report exits and OOM kills of processes this host
//! created (anything else is dropped), each exit counts once, and statuses outside 0..=255
//! are recorded as [`SANDBOX_FAILED`].

pub mod error;
pub mod events;
pub mod state;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use hull_protocol::{ContainerStats, Event, ProcessInfo, ResourceUpdate};
use serde_json::Value;

use crate::agent::{Agent, AgentNotice};
use crate::bundle::Bundle;
use crate::hypervisor::Nic;
use crate::network::{self, Attachment};
use crate::port_forward::LocalhostForward;
use crate::process::ProcessError;
use crate::sandbox::{Booted, Sandbox, SandboxConfig};
use crate::share::{self, Exposed};
use crate::spec;
use crate::state::StateDir;
use crate::stdio::{self, Endpoint, Relays};

pub use error::PodError;
pub use events::{EventSink, Exit, PodEvent};
pub use state::{InvalidState, Op, ProcessState};

/// Exit status of processes whose sandbox failed (VM or a daemon died, agent lost), and of
/// an exit status the guest reported that no process can have.
pub const SANDBOX_FAILED: i32 = 255;
/// Exit status of processes still running when the pod is shut down (their VM is killed).
pub const KILLED: i32 = 128 + libc::SIGKILL;
/// How long an exit waits for the process's output to drain before it is recorded.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// How long the guest has to report the exit of a container's init after SIGKILL. The host
/// decides death: past this, the VM is stopped and the container recorded as killed.
pub const KILL_GRACE: Duration = Duration::from_secs(10);
/// How long the agent has to answer a SIGKILL request (it only has to send a signal).
const KILL_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a lost agent connection waits for a VM process's exit to show, to name it.
const VM_EXIT_WAIT: Duration = Duration::from_secs(1);

pub type Result<T> = std::result::Result<T, PodError>;

/// The VM side of a pod: [`Sandbox`] in production; tests give a pod a fake.
/// How a process of the VM ended. `clean` is an exit with status 0, which the VM's daemons make
/// when a peer hangs up on them (virtiofsd when its VMM dies): a consequence, not a cause, so a
/// process that died by a signal or failed is preferred when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmEnd {
    pub what: String,
    pub clean: bool,
}

pub trait Vm: Send {
    /// The hybrid vsock socket the host dials for stdio streams.
    fn vsock_socket(&self) -> &Path;
    /// A pidfd per process of the VM, named, to learn when one ends.
    fn pidfds(&self) -> std::result::Result<Vec<(&'static str, OwnedFd)>, ProcessError>;
    /// How a process of the VM ended, if one has: the cause first (see [`VmEnd`]).
    fn how_it_ended(&mut self) -> Option<VmEnd>;
    /// Whether the host's OOM killer has killed a process of the VM (its host cgroup's limit
    /// was hit).
    fn oom_killed(&self) -> bool {
        false
    }
    /// Stop the VM and its daemons.
    fn shutdown(&mut self);
}

/// Where containers' files enter the share (see [`crate::share`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareMode {
    /// The one container's binds are made in virtiofsd's own namespace at boot (the CLI).
    Private,
    /// The share is a shared mount of the caller's namespace and each container is bound into
    /// it when created (the shim, whose pods gain containers after boot).
    Propagating,
}

/// What boots a pod: the first container decides the VM's size and network.
pub struct PodConfig<'a> {
    pub dir: StateDir,
    pub sandbox: SandboxConfig,
    pub share: ShareMode,
    /// The first container's id and bundle.
    pub first_id: &'a str,
    pub first: &'a Bundle,
    /// Called before anything changes in the network namespace, with what must be undone
    /// there should this process die (the CLI keeps it in `state.json`).
    pub on_network: &'a mut dyn FnMut(&network::Record) -> Result<()>,
    /// Forward TCP connections to the loopback of the attached namespace into the guest
    /// (CRI port-forward: containerd dials `localhost:PORT` there).
    pub forward_localhost: bool,
}

/// What a pod is made of once its VM runs.
pub struct Parts {
    pub dir: StateDir,
    pub share: ShareMode,
    pub vm: Box<dyn Vm>,
    pub agent: Agent,
    pub notices: Receiver<AgentNotice>,
    pub network: Option<Attachment>,
    pub events: EventSink,
    /// How long the guest has to report an exit after SIGKILL ([`KILL_GRACE`]).
    pub kill_grace: Duration,
}

/// A process's state as a front end reports it.
#[derive(Debug, Clone)]
pub struct ProcessStatus {
    pub state: ProcessState,
    pub exit: Option<Exit>,
    pub terminal: bool,
}

struct Process {
    state: ProcessState,
    terminal: bool,
    exit: Option<Exit>,
    relays: Option<Relays>,
    /// An exec's OCI process and host stdio, until it is started.
    pending: Option<(Value, Option<[Endpoint; 3]>)>,
    /// A start of this process is with the guest.
    starting: bool,
    /// An exit reported while `starting`: recorded once the start is.
    held_exit: Option<i32>,
}

impl Process {
    fn new(state: ProcessState, terminal: bool) -> Process {
        Process { state, terminal, exit: None, relays: None, pending: None, starting: false, held_exit: None }
    }

    fn status(&self) -> ProcessStatus {
        ProcessStatus { state: self.state, exit: self.exit, terminal: self.terminal }
    }
}

struct Container {
    init: Process,
    execs: HashMap<String, Process>,
    exposed: Option<Exposed>,
    /// A state-changing call of this container is with the guest.
    busy: bool,
    /// OOM notices still believable: one per process started, since the agent reports an OOM
    /// kill only with the exit of a process it ran.
    oom_allowance: u32,
}

impl Container {
    fn process(&mut self, id: &str, exec_id: Option<&str>) -> Result<&mut Process> {
        match exec_id {
            None => Ok(&mut self.init),
            Some(e) => self.execs.get_mut(e).ok_or_else(|| PodError::NoProcess { id: id.into(), exec_id: e.into() }),
        }
    }
}

/// Why a pod takes no more work.
#[derive(Debug, Clone)]
enum Ended {
    Failed(String),
    Stopping,
}

#[derive(Default)]
struct Table {
    containers: BTreeMap<String, Container>,
    /// Ids whose creation is under way.
    creating: HashSet<String>,
    /// Guest pid of the first container's init: later containers join its namespaces.
    first_guest_pid: Option<i32>,
    ended: Option<Ended>,
}

impl Table {
    fn container(&mut self, id: &str) -> Result<&mut Container> {
        self.containers.get_mut(id).ok_or_else(|| PodError::NoContainer(id.into()))
    }

    fn process(&mut self, id: &str, exec_id: Option<&str>) -> Result<&mut Process> {
        self.container(id)?.process(id, exec_id)
    }

    fn usable(&self) -> Result<()> {
        match &self.ended {
            None => Ok(()),
            Some(Ended::Failed(why)) => Err(PodError::SandboxFailed(why.clone())),
            Some(Ended::Stopping) => Err(PodError::Stopping),
        }
    }
}

pub struct Pod {
    /// This pod, for the threads it starts (they must not keep it alive).
    me: Weak<Pod>,
    dir: StateDir,
    share: ShareMode,
    agent: Agent,
    vsock_socket: PathBuf,
    table: Mutex<Table>,
    changed: Condvar,
    events: EventSink,
    vm: Mutex<Option<Box<dyn Vm>>>,
    network: Mutex<Option<Attachment>>,
    forward: Mutex<Option<LocalhostForward>>,
    /// Warnings the guest can trigger (notices about processes it was never given) are
    /// logged through this, so a flood cannot fill the host's logs.
    guest_warnings: Mutex<hull_protocol::LogBudget>,
    kill_grace: Duration,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn subject(id: &str, exec_id: Option<&str>) -> String {
    match exec_id {
        None => format!("container {id}"),
        Some(e) => format!("exec {e} of container {id}"),
    }
}

/// Marks a container busy for the life of one state-changing call.
struct Busy<'a> {
    pod: &'a Pod,
    id: String,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        if let Some(c) = lock(&self.pod.table).containers.get_mut(&self.id) {
            c.busy = false;
        }
        self.pod.changed.notify_all();
    }
}

impl Pod {
    /// Boot the VM for `config.first` (attached to its network namespace, if it names one) and
    /// return the pod, without containers yet; its events go to `events`.
    pub fn boot(config: PodConfig<'_>, events: EventSink) -> Result<Arc<Pod>> {
        let assets = crate::assets::Assets::locate()?;
        let bundle = config.first;
        let on_network = config.on_network;
        let network = match bundle.netns.as_deref() {
            Some(path) => Some(network::attach(path, &mut |record| on_network(record).map_err(|e| e.to_string()))?),
            None => None,
        };
        let nics = network
            .iter()
            .flat_map(|n| &n.taps)
            .map(|t| Nic { tap_fd: t.fd.as_raw_fd(), mac: t.mac.clone() })
            .collect();
        let layout = match config.share {
            ShareMode::Private => Some(share::layout(config.first_id, bundle)),
            ShareMode::Propagating => None,
        };
        let sized = config.sandbox.sized_for(&bundle.spec);
        tracing::info!(vcpus = sized.vcpus, memory_mib = sized.memory_mib, "sandbox size");
        // The host cgroup the whole VM is billed to and held in.
        let linux = bundle.spec.linux().as_ref();
        let cgroup_path = crate::cgroup::relative_path(
            linux.and_then(|l| l.cgroups_path().as_deref()).and_then(Path::to_str),
            config.first_id,
        )?;
        let limits = crate::cgroup::Limits::for_sandbox(linux.and_then(|l| l.resources().as_ref()), sized.memory_mib);
        let cgroup = crate::cgroup::HostCgroup::create(&cgroup_path, &limits)?;
        let Booted { sandbox, agent, notices } =
            Sandbox::boot(&config.dir, &assets, &sized, layout.as_ref(), nics, cgroup)?;
        if let Some(net) = &network {
            agent
                .configure_network(&net.interfaces, &net.routes)
                .map_err(error::agent("configuring the guest network"))?;
        }
        let pod = Self::assemble(Parts {
            dir: config.dir,
            share: config.share,
            vm: Box::new(sandbox),
            agent,
            notices,
            network,
            events,
            kill_grace: KILL_GRACE,
        })?;
        if config.forward_localhost {
            pod.forward_localhost();
        }
        Ok(pod)
    }

    /// Start the port-forward into the guest; without it the pod still runs, so a failure
    /// is a warning.
    fn forward_localhost(&self) {
        let started = match lock(&self.network).as_ref() {
            Some(net) => LocalhostForward::start(net.namespace(), &self.vsock_socket),
            None => return,
        };
        match started {
            Ok(forward) => *lock(&self.forward) = Some(forward),
            Err(e) => tracing::warn!("port-forward will not reach this pod: {e}"),
        }
    }

    /// A pod over a running VM and its agent (see [`Parts`]): starts following the VM's
    /// processes and the agent's notices. (Tests assemble pods over a fake agent.)
    pub fn assemble(parts: Parts) -> Result<Arc<Pod>> {
        let Parts { dir, share, vm, agent, notices, network, events, kill_grace } = parts;
        let pidfds = vm.pidfds()?;
        let pod = Arc::new_cyclic(|me| Pod {
            me: me.clone(),
            dir,
            share,
            agent,
            vsock_socket: vm.vsock_socket().to_path_buf(),
            table: Mutex::new(Table::default()),
            changed: Condvar::new(),
            events,
            vm: Mutex::new(Some(vm)),
            network: Mutex::new(network),
            forward: Mutex::new(None),
            guest_warnings: Mutex::new(hull_protocol::LogBudget::new(8)),
            kill_grace,
        });
        let weak = Arc::downgrade(&pod);
        std::thread::Builder::new()
            .name("agent-events".into())
            .spawn(move || follow_agent(weak, notices))
            .map_err(|source| PodError::Io { what: "starting the agent event thread", source })?;
        if !pidfds.is_empty() {
            let weak = Arc::downgrade(&pod);
            std::thread::Builder::new()
                .name("proc-watch".into())
                .spawn(move || {
                    let name = wait_any(&pidfds);
                    if let Some(pod) = weak.upgrade() {
                        pod.vm_process_ended(name);
                    }
                })
                .map_err(|source| PodError::Io { what: "starting the process watcher", source })?;
        }
        Ok(pod)
    }

    pub fn dir(&self) -> &StateDir {
        &self.dir
    }

    pub fn vsock_socket(&self) -> &Path {
        &self.vsock_socket
    }

    /// Why the sandbox failed, once it has.
    pub fn failure(&self) -> Option<String> {
        match &lock(&self.table).ended {
            Some(Ended::Failed(why)) => Some(why.clone()),
            _ => None,
        }
    }

    pub fn container_ids(&self) -> Vec<String> {
        lock(&self.table).containers.keys().cloned().collect()
    }

    pub fn status(&self, id: &str, exec_id: Option<&str>) -> Result<ProcessStatus> {
        Ok(lock(&self.table).process(id, exec_id)?.status())
    }

    /// Mark container `id` busy, waiting while another call on it is with the guest.
    fn busy(&self, id: &str) -> Result<(Busy<'_>, MutexGuard<'_, Table>)> {
        let mut table = lock(&self.table);
        loop {
            table.usable()?;
            let container = table.container(id)?;
            if !container.busy {
                container.busy = true;
                break;
            }
            table = self.changed.wait(table).unwrap_or_else(|e| e.into_inner());
        }
        Ok((Busy { pod: self, id: id.into() }, table))
    }

    /// Create container `id` of `bundle` in the guest (state `created`), its stdio relayed to
    /// `io` unless the caller connects the streams itself (`None`). Returns its guest pid.
    pub fn create_container(&self, id: &str, bundle: &Bundle, io: Option<[Endpoint; 3]>) -> Result<i32> {
        hull_protocol::validate_id(id)
            .map_err(|message| PodError::InvalidArgument { field: "container id", message })?;
        // The pod's first container is created alone: the others join its namespaces, so they
        // wait until its guest pid is known (or take its place if its creation failed).
        let join = {
            let mut table = lock(&self.table);
            loop {
                table.usable()?;
                if table.containers.contains_key(id) || table.creating.contains(id) {
                    return Err(PodError::ContainerExists(id.into()));
                }
                if let Some(pid) = table.first_guest_pid {
                    break Some(pid);
                }
                if table.creating.is_empty() {
                    break None;
                }
                table = self.changed.wait(table).unwrap_or_else(|e| e.into_inner());
            }
        };
        if self.share == ShareMode::Private && join.is_some() {
            return Err(PodError::InvalidArgument {
                field: "container id",
                message: "this sandbox holds one container".into(),
            });
        }
        lock(&self.table).creating.insert(id.to_string());
        let result = self.create_in_guest(id, bundle, io, join);
        let mut table = lock(&self.table);
        table.creating.remove(id);
        self.changed.notify_all();
        let (pid, container) = result?;
        // The VM may have failed meanwhile: a container it never got an exit for must not be
        // left `created` for ever. (Dropping it undoes its share binds.)
        table.usable()?;
        if join.is_none() {
            table.first_guest_pid = Some(pid);
        }
        table.containers.insert(id.to_string(), container);
        Ok(pid)
    }

    fn create_in_guest(
        &self,
        id: &str,
        bundle: &Bundle,
        io: Option<[Endpoint; 3]>,
        join: Option<i32>,
    ) -> Result<(i32, Container)> {
        let mut exposed = match self.share {
            ShareMode::Propagating => {
                // Per container: concurrent creates must not stack binds on one waypoint.
                let staging = self.dir.dir.join(format!("staging-{id}"));
                Some(share::expose(&self.dir.share_rw_dir(), id, bundle, &staging)?)
            }
            ShareMode::Private => None,
        };
        let undo = |exposed: &mut Option<Exposed>| {
            if let Some(e) = exposed.as_mut() {
                e.remove();
            }
        };
        let mut guest_spec = spec::for_guest(&bundle.raw, id, &bundle.binds);
        if let Some(pid) = join {
            spec::join_namespaces(&mut guest_spec, pid);
        }
        let pid = match self.agent.create_container(id, guest_spec) {
            Ok(pid) => pid,
            Err(e) => {
                undo(&mut exposed);
                return Err(error::agent("creating the container in the guest")(e));
            }
        };
        tracing::info!(id, guest_pid = pid, "container created");
        let terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
        let mut init = Process::new(ProcessState::Created, terminal);
        if let Some(ends) = io {
            match stdio::attach(&self.vsock_socket, id, None, ends) {
                Ok(relays) => init.relays = Some(relays),
                Err(e) => {
                    if let Err(e) = self.agent.remove_container(id) {
                        tracing::warn!(id, "removing the half-created container: {e}");
                    }
                    undo(&mut exposed);
                    return Err(e.into());
                }
            }
        }
        let container = Container { init, execs: HashMap::new(), exposed, busy: false, oom_allowance: 1 };
        Ok((pid, container))
    }

    /// Start a created container's init, or an added exec.
    pub fn start(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        let (_busy, mut table) = self.busy(id)?;
        let process = table.process(id, exec_id)?;
        state::check(Op::Start, process.state, || subject(id, exec_id))?;
        let pending =
            match exec_id {
                Some(_) => Some(process.pending.take().ok_or_else(|| PodError::NoProcess {
                    id: id.into(),
                    exec_id: exec_id.unwrap_or_default().into(),
                })?),
                None => None,
            };
        process.starting = true;
        drop(table);

        let (result, io) = match (exec_id, pending) {
            (Some(exec), Some((spec, io))) => {
                let started = self.agent.exec_process(id, exec, spec.clone()).map(|_| ());
                if started.is_err() {
                    // Put it back: the exec stays created, to be started again or deleted.
                    if let Ok(p) = lock(&self.table).process(id, exec_id) {
                        p.pending = Some((spec, io));
                    }
                    (started, None)
                } else {
                    (started, io)
                }
            }
            _ => (self.agent.start_container(id), None),
        };
        let relays = match (&result, io) {
            (Ok(()), Some(ends)) => Some(stdio::attach(&self.vsock_socket, id, exec_id, ends)),
            _ => None,
        };

        let mut table = lock(&self.table);
        let container = table.container(id)?;
        let process = container.process(id, exec_id)?;
        process.starting = false;
        let held = process.held_exit.take();
        if let Err(e) = result {
            if let Some(status) = held {
                self.record_exit(id, exec_id, process, status);
            }
            drop(table);
            self.changed.notify_all();
            return Err(error::agent(if exec_id.is_some() { "starting the exec" } else { "starting the container" })(
                e,
            ));
        }
        let mut attach_error = None;
        if process.state == ProcessState::Created {
            process.state = ProcessState::Running;
            (self.events)(PodEvent::Started { container_id: id.into(), exec_id: exec_id.map(str::to_string) });
        }
        match relays {
            Some(Ok(r)) => process.relays = Some(r),
            Some(Err(e)) => attach_error = Some(e),
            None => {}
        }
        if exec_id.is_some() {
            container.oom_allowance = container.oom_allowance.saturating_add(1);
        }
        drop(table);
        self.changed.notify_all();
        // An exit that came while the start was in flight: now through the normal path, which
        // lets the streams just connected drain first.
        if let Some(status) = held {
            self.exited(id, exec_id, status);
        }
        // The process runs (its exit will come) even if its streams could not be connected.
        match attach_error {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }

    /// Add exec `exec_id` to running container `id` (state `created`; [`Pod::start`] runs it),
    /// its stdio relayed to `io` unless the caller connects the streams itself.
    pub fn add_exec(
        &self,
        id: &str,
        exec_id: &str,
        process: Value,
        terminal: bool,
        io: Option<[Endpoint; 3]>,
    ) -> Result<()> {
        hull_protocol::validate_id(exec_id)
            .map_err(|message| PodError::InvalidArgument { field: "exec id", message })?;
        let mut table = lock(&self.table);
        table.usable()?;
        let container = table.container(id)?;
        state::check(Op::Exec, container.init.state, || subject(id, None))?;
        if container.execs.contains_key(exec_id) {
            return Err(PodError::ExecExists { id: id.into(), exec_id: exec_id.into() });
        }
        let mut exec = Process::new(ProcessState::Created, terminal);
        exec.pending = Some((process, io));
        container.execs.insert(exec_id.to_string(), exec);
        Ok(())
    }

    /// Deliver `signal` to a container's init (every process with `all`) or to one exec.
    /// After SIGKILL to an init, the guest has [`KILL_GRACE`] to report its exit; then the host
    /// stops the VM and records the container as killed (137), whatever the guest says.
    pub fn signal(&self, id: &str, exec_id: Option<&str>, signal: i32, all: bool) -> Result<()> {
        {
            let mut table = lock(&self.table);
            // The state first: a process recorded as exited (the VM's failure included) is
            // not found, as containerd and runc expect of a kill that comes too late.
            let process = table.process(id, exec_id)?;
            state::check(Op::Signal, process.state, || subject(id, exec_id))?;
            table.usable()?;
        }
        if signal != libc::SIGKILL || exec_id.is_some() {
            return self.agent.signal_process(id, exec_id, signal, all).map_err(error::agent("signalling"));
        }
        // The host decides this one: armed whatever the guest answers, and a guest that does
        // not answer (or has gone) makes no difference to the caller, as the VM is stopped
        // within the grace if the exit does not come.
        self.watch_kill(id);
        match self.agent.signal_process_within(id, None, signal, all, KILL_CALL_TIMEOUT) {
            Err(e) if e.kind() == hull_protocol::ErrorKind::Internal => {
                tracing::warn!(id, "SIGKILL through the agent: {e}; the host stops the VM if the exit does not come");
                Ok(())
            }
            other => other.map_err(error::agent("signalling")),
        }
    }

    fn watch_kill(&self, id: &str) {
        let (pod, watched, grace) = (self.me.clone(), id.to_string(), self.kill_grace);
        let spawned = std::thread::Builder::new().name("kill-watch".into()).spawn(move || {
            std::thread::sleep(grace);
            if let Some(pod) = pod.upgrade() {
                pod.kill_overdue(&watched);
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(id, "cannot watch the kill: {e}");
        }
    }

    /// The grace after a SIGKILL has passed: if the init has still not exited, the guest is
    /// not to be believed any more. Its processes are recorded killed, the VM is stopped, and
    /// the pod's other containers end with it.
    fn kill_overdue(&self, id: &str) {
        {
            let mut table = lock(&self.table);
            if table.ended.is_some() {
                return;
            }
            let Ok(container) = table.container(id) else { return };
            if container.init.state == ProcessState::Stopped {
                return;
            }
            tracing::error!(id, grace = ?self.kill_grace, "the guest did not report the exit after SIGKILL: stopping the VM");
            for (exec_id, process) in container.execs.iter_mut() {
                self.record_exit(id, Some(exec_id), process, KILLED);
            }
            self.record_exit(id, None, &mut container.init, KILLED);
        }
        self.changed.notify_all();
        self.sandbox_failed(format!(
            "the guest did not report the exit of container {id} within {}s of SIGKILL",
            self.kill_grace.as_secs()
        ));
        self.stop_vm();
    }

    /// Log a warning the guest triggered, within the budget.
    fn guest_warning(&self, message: std::fmt::Arguments<'_>) {
        let mut budget = lock(&self.guest_warnings);
        if budget.allow() {
            tracing::warn!(seen = budget.seen(), "guest: {message}");
        }
    }

    pub fn pause(&self, id: &str) -> Result<()> {
        self.freeze(id, Op::Pause)
    }

    pub fn resume(&self, id: &str) -> Result<()> {
        self.freeze(id, Op::Resume)
    }

    fn freeze(&self, id: &str, op: Op) -> Result<()> {
        let (_busy, mut table) = self.busy(id)?;
        let from = table.container(id)?.init.state;
        state::check(op, from, || subject(id, None))?;
        drop(table);
        let done = match op {
            Op::Pause => self.agent.pause_container(id).map_err(error::agent("pausing the container")),
            _ => self.agent.resume_container(id).map_err(error::agent("resuming the container")),
        };
        done?;
        let mut table = lock(&self.table);
        let init = &mut table.container(id)?.init;
        // An exit that came meanwhile stands.
        if init.state == from {
            init.state = op.after(from);
            let container_id = id.to_string();
            (self.events)(match op {
                Op::Pause => PodEvent::Paused { container_id },
                _ => PodEvent::Resumed { container_id },
            });
        }
        Ok(())
    }

    fn known(&self, id: &str) -> Result<()> {
        let mut table = lock(&self.table);
        table.usable()?;
        table.container(id).map(|_| ())
    }

    pub fn processes(&self, id: &str) -> Result<Vec<ProcessInfo>> {
        self.known(id)?;
        self.agent.list_processes(id).map_err(error::agent("listing the processes"))
    }

    pub fn stats(&self, id: &str) -> Result<ContainerStats> {
        self.known(id)?;
        self.agent.container_stats(id).map_err(error::agent("reading the container's counters"))
    }

    pub fn update(&self, id: &str, update: ResourceUpdate) -> Result<()> {
        self.known(id)?;
        self.agent.update_resources(id, update).map_err(error::agent("updating the container's limits"))
    }

    /// Set the window size of a process's terminal.
    pub fn resize(&self, id: &str, exec_id: Option<&str>, width: u16, height: u16) -> Result<()> {
        {
            let mut table = lock(&self.table);
            table.usable()?;
            let process = table.process(id, exec_id)?;
            if !process.terminal {
                return Err(PodError::NoTerminal(subject(id, exec_id)));
            }
        }
        self.agent.resize_terminal(id, exec_id, width, height).map_err(error::agent("resizing the terminal"))
    }

    /// Give the process EOF on stdin, after what its host end already holds.
    pub fn close_stdin(&self, id: &str, exec_id: Option<&str>) -> Result<()> {
        let closer = lock(&self.table).process(id, exec_id)?.relays.as_mut().and_then(Relays::take_stdin);
        if let Some(closer) = closer {
            closer.close();
        }
        Ok(())
    }

    /// Block until the process has exited; NotFound once it is removed.
    pub fn wait(&self, id: &str, exec_id: Option<&str>) -> Result<Exit> {
        let mut table = lock(&self.table);
        loop {
            if let Some(exit) = table.process(id, exec_id)?.exit {
                return Ok(exit);
            }
            table = self.changed.wait(table).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Forget a created or finished exec, in the guest too; returns its exit, if it ran.
    pub fn remove_process(&self, id: &str, exec_id: &str) -> Result<Option<Exit>> {
        let started = {
            let mut table = lock(&self.table);
            let process = table.process(id, Some(exec_id))?;
            if process.starting {
                return Err(PodError::Busy(subject(id, Some(exec_id))));
            }
            state::check(Op::Delete, process.state, || subject(id, Some(exec_id)))?;
            let exit = process.exit;
            let started = process.state != ProcessState::Created;
            table.container(id)?.execs.remove(exec_id);
            self.changed.notify_all();
            started.then_some(exit)
        };
        // An exec never started was never in the guest.
        if let Some(exit) = started {
            if let Err(e) = self.agent.remove_process(id, exec_id) {
                tracing::warn!(id, exec_id, "removing the exec in the guest: {e}");
            }
            return Ok(exit);
        }
        Ok(None)
    }

    /// Remove a created or stopped container, in the guest and from the share; returns its
    /// init's exit, if it ran.
    pub fn remove_container(&self, id: &str) -> Result<Option<Exit>> {
        let (busy, mut table) = self.busy(id).or_else(|e| match e {
            // A failed sandbox still lets its containers be removed.
            PodError::SandboxFailed(_) | PodError::Stopping => {
                let table = lock(&self.table);
                Ok((Busy { pod: self, id: id.into() }, table))
            }
            other => Err(other),
        })?;
        let container = table.container(id)?;
        state::check(Op::Delete, container.init.state, || subject(id, None))?;
        let alive = table.usable().is_ok();
        drop(table);
        if alive {
            if let Err(e) = self.agent.remove_container(id) {
                tracing::warn!(id, "removing the container in the guest: {e}");
            }
        }
        let mut table = lock(&self.table);
        let mut container = table.containers.remove(id).ok_or_else(|| PodError::NoContainer(id.into()))?;
        drop(table);
        drop(busy);
        if let Some(exposed) = container.exposed.as_mut() {
            exposed.remove();
        }
        Ok(container.init.exit)
    }

    /// Stop the VM if the pod holds no container (and take no more); true if it did.
    pub fn shutdown_if_empty(&self) -> bool {
        {
            let mut table = lock(&self.table);
            if !table.containers.is_empty() || !table.creating.is_empty() {
                return false;
            }
            // In the same critical section: no create may slip in, and the process watcher
            // must not report the stop as a crash.
            if table.ended.is_none() {
                table.ended = Some(Ended::Stopping);
            }
        }
        tracing::info!("no container left: stopping the VM");
        self.stop_vm();
        true
    }

    /// Stop the VM now, whatever runs in it: processes still running are recorded as killed.
    pub fn shutdown(&self) {
        let exposed: Vec<Exposed> = {
            let mut table = lock(&self.table);
            if table.ended.is_none() {
                table.ended = Some(Ended::Stopping);
            }
            let Table { containers, .. } = &mut *table;
            for (id, container) in containers.iter_mut() {
                for (exec_id, process) in container.execs.iter_mut() {
                    self.record_exit(id, Some(exec_id), process, KILLED);
                }
                self.record_exit(id, None, &mut container.init, KILLED);
            }
            containers.values_mut().filter_map(|c| c.exposed.take()).collect()
        };
        self.changed.notify_all();
        self.stop_vm();
        for mut e in exposed {
            e.remove();
        }
    }

    fn stop_vm(&self) {
        drop(lock(&self.forward).take());
        if let Some(mut vm) = lock(&self.vm).take() {
            vm.shutdown();
        }
        if let Some(mut net) = lock(&self.network).take() {
            net.detach();
        }
    }

    /// Record that a process ended (once) and queue its event. Called under the table lock.
    fn record_exit(&self, id: &str, exec_id: Option<&str>, process: &mut Process, status: i32) {
        if process.state == ProcessState::Stopped {
            return;
        }
        let exit = Exit { status, at: SystemTime::now() };
        process.state = ProcessState::Stopped;
        process.exit = Some(exit);
        process.pending = None;
        tracing::info!(id, exec_id, status, "process exited");
        (self.events)(PodEvent::Exited { container_id: id.into(), exec_id: exec_id.map(str::to_string), exit });
    }

    /// The guest reports that a process ended.
    fn exited(&self, id: &str, exec_id: Option<&str>, status: i32) {
        let status = if (0..=255).contains(&status) {
            status
        } else {
            self.guest_warning(format_args!("an impossible exit status {status} for {}", subject(id, exec_id)));
            SANDBOX_FAILED
        };
        // Let the output drain first (outside the lock): whoever learns of the exit then has
        // all of it.
        let relays = match lock(&self.table).process(id, exec_id) {
            // An exec the host has not started yet cannot have ended (an init can: a created
            // container may be killed).
            Ok(p) if exec_id.is_some() && p.state == ProcessState::Created && !p.starting => {
                return self.guest_warning(format_args!("an exit of an exec that was never started"));
            }
            Ok(p) if p.state != ProcessState::Stopped => p.relays.take(),
            Ok(_) => return,
            Err(_) => return self.guest_warning(format_args!("an exit of a process this host did not start")),
        };
        if let Some(mut relays) = relays {
            relays.finish(OUTPUT_DRAIN);
        }
        let mut table = lock(&self.table);
        if let Ok(process) = table.process(id, exec_id) {
            if process.starting {
                process.held_exit = Some(status);
            } else {
                self.record_exit(id, exec_id, process, status);
            }
        }
        drop(table);
        self.changed.notify_all();
    }

    fn oom(&self, id: &str) {
        let mut table = lock(&self.table);
        match table.containers.get_mut(id) {
            Some(c) if c.oom_allowance > 0 => {
                c.oom_allowance -= 1;
                tracing::warn!(id, "OOM kill in the container");
                (self.events)(PodEvent::Oom { container_id: id.into() });
            }
            Some(_) => self.guest_warning(format_args!("more OOM notices for container {id} than processes")),
            None => self.guest_warning(format_args!("an OOM notice for a container this host did not create")),
        }
    }

    /// The VM or the agent is gone: every process still running has ended. A VM that the
    /// host's OOM killer took also drops the agent's connection, and that can be noticed before
    /// the VMM's exit; whichever comes first, the host cgroup's OOM count decides.
    fn sandbox_failed(&self, why: String) {
        let oom = lock(&self.vm).as_ref().is_some_and(|vm| vm.oom_killed());
        if oom {
            self.host_oom(&why);
        }
        let mut table = lock(&self.table);
        if table.ended.is_some() {
            return;
        }
        tracing::error!("sandbox failed: {why} (guest console {})", self.dir.console_log().display());
        table.ended = Some(Ended::Failed(why.clone()));
        (self.events)(PodEvent::SandboxFailed { reason: why });
        let Table { containers, .. } = &mut *table;
        for (id, container) in containers.iter_mut() {
            for (exec_id, process) in container.execs.iter_mut() {
                self.record_exit(id, Some(exec_id), process, SANDBOX_FAILED);
            }
            self.record_exit(id, None, &mut container.init, SANDBOX_FAILED);
        }
        drop(table);
        self.changed.notify_all();
    }

    /// The agent's connection ended. When a VM process died, that is the cause, and the
    /// connection often drops first (hull-vmm carries vsock in-process; QEMU's death closes
    /// the vsock backend's socket): the process has closed its files but is not yet a zombie
    /// the pidfd reports. A moment's wait lets the failure name it.
    fn agent_lost(&self, reason: &str) {
        match self.vm_end_cause() {
            Some(how) => self.sandbox_failed(format!("sandbox process failed: {how}")),
            None => self.sandbox_failed(format!("lost the guest agent: {reason}")),
        }
    }

    fn vm_process_ended(&self, name: &'static str) {
        let how = self.vm_end_cause().unwrap_or_else(|| format!("{name} exited"));
        self.sandbox_failed(format!("sandbox process failed: {how}"));
    }

    /// What ended the VM, waiting a moment for the cause. A process that was killed or failed
    /// is the answer at once. A clean exit alone is held until [`VM_EXIT_WAIT`] has passed:
    /// when the VMM is killed, virtiofsd sees its socket close and exits 0 before the dying
    /// VMM (its vCPU threads still leaving KVM) is a zombie the pidfd reports.
    fn vm_end_cause(&self) -> Option<String> {
        let deadline = Instant::now() + VM_EXIT_WAIT;
        let mut clean = None;
        loop {
            match lock(&self.vm).as_mut().and_then(|vm| vm.how_it_ended()) {
                Some(end) if !end.clean => return Some(end.what),
                Some(end) => clean = Some(end.what),
                None => {}
            }
            if Instant::now() >= deadline {
                return clean;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The VM went over its host cgroup's memory limit and the host's OOM killer took a
    /// process of it: for its containers that is an OOM kill (137, OOMKilled), not a failure.
    fn host_oom(&self, how: &str) {
        let mut table = lock(&self.table);
        if table.ended.is_some() {
            return;
        }
        tracing::error!("the VM exceeded its host memory limit ({how}): its containers were OOM-killed");
        let Table { containers, .. } = &mut *table;
        for (id, container) in containers.iter_mut() {
            if container.init.state != ProcessState::Stopped {
                (self.events)(PodEvent::Oom { container_id: id.clone() });
            }
            for (exec_id, process) in container.execs.iter_mut() {
                self.record_exit(id, Some(exec_id), process, KILLED);
            }
            self.record_exit(id, None, &mut container.init, KILLED);
        }
        drop(table);
        self.changed.notify_all();
    }
}

/// Apply the agent's notices to the pod until the connection ends or the pod is gone.
fn follow_agent(pod: Weak<Pod>, notices: Receiver<AgentNotice>) {
    for notice in notices {
        let Some(pod) = pod.upgrade() else { return };
        match notice {
            AgentNotice::Event(Event::ProcessExited { container_id, exec_id, status }) => {
                pod.exited(&container_id, exec_id.as_deref(), status)
            }
            AgentNotice::Event(Event::OomKilled { container_id }) => pod.oom(&container_id),
            AgentNotice::Lost(reason) => {
                pod.agent_lost(&reason);
                return;
            }
        }
    }
}

/// Block until one of the pidfds is readable; returns its name.
fn wait_any(pidfds: &[(&'static str, OwnedFd)]) -> &'static str {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut fds: Vec<PollFd> = pidfds.iter().map(|(_, fd)| PollFd::new(fd.as_fd(), PollFlags::POLLIN)).collect();
    loop {
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {
                if let Some(i) = fds.iter().position(|f| f.revents().is_some_and(|r| !r.is_empty())) {
                    return pidfds[i].0;
                }
            }
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return "a sandbox process",
        }
    }
}
