//! The shim v2 Task service: containerd's verbs on the containers of one sandbox VM.
//!
//! The first container created boots the VM (for a Kubernetes pod, that is the pause
//! "sandbox" container); later ones with the same CRI sandbox id join it. Every call holds
//! the task table's lock while it talks to the agent, so events (exits) are recorded strictly
//! after the call that caused them; `Wait` sleeps on a condition variable instead.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Context};
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse,
    ResizePtyRequest, ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse,
    StatsRequest, StatsResponse, Status, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::Task;
use hull_protocol::{Event, Reply, RequestBody};
use ttrpc::{Code, TtrpcContext};

use super::events::{timestamp, Publisher, TaskEvent};
use super::mounts;
use crate::agent_client::{AgentClient, AgentNotice};
use crate::assets::Assets;
use crate::bundle::Bundle;
use crate::hypervisor::Nic;
use crate::network;
use crate::sandbox::{Sandbox, SandboxConfig, SharedRootfs};
use crate::spec;
use crate::state::StateDir;
use crate::stdio::{self, Endpoint, Relays};
use crate::supervisor::SANDBOX_FAILED;

/// How long an exit waits for the process's output to drain before it is reported.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

/// Work that must run on the shim's main thread: the VMM and daemons get `PDEATHSIG` tied to
/// the thread that spawns them, and ttrpc's worker threads come and go.
pub type MainThreadJob = Box<dyn FnOnce() + Send>;

pub enum Control {
    Run(MainThreadJob),
    /// Tear down and exit.
    Exit,
}

struct Process {
    stdio: [String; 3],
    terminal: bool,
    status: Status,
    exit: Option<(u32, SystemTime)>,
    relays: Option<Relays>,
    /// An exec's OCI process, until it is started.
    spec: Option<serde_json::Value>,
}

impl Process {
    fn new(stdio: [String; 3], terminal: bool) -> Process {
        Process { stdio, terminal, status: Status::CREATED, exit: None, relays: None, spec: None }
    }
}

struct Container {
    bundle: PathBuf,
    /// Mounts in the shim's namespace to undo on delete, innermost first.
    mounts: Vec<PathBuf>,
    init: Process,
    execs: HashMap<String, Process>,
}

struct Vm {
    sandbox: Sandbox,
    network: Option<network::Attachment>,
    /// Guest pid of the first container's init: later containers join its namespaces.
    first_guest_pid: i32,
}

#[derive(Default)]
struct Tasks {
    vm: Option<Vm>,
    containers: BTreeMap<String, Container>,
    /// Why the VM is gone, once it failed.
    failed: Option<String>,
}

pub struct Service {
    dir: StateDir,
    events: Publisher,
    control: Mutex<Sender<Control>>,
    tasks: Mutex<Tasks>,
    changed: Condvar,
}

type TtrpcResult<T> = ttrpc::Result<T>;

fn rpc_error(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

fn internal(e: anyhow::Error) -> ttrpc::Error {
    rpc_error(Code::INTERNAL, format!("{e:#}"))
}

fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    if exec_id.is_empty() {
        rpc_error(Code::NOT_FOUND, format!("container {id}: not found"))
    } else {
        rpc_error(Code::NOT_FOUND, format!("process {exec_id} of container {id}: not found"))
    }
}

impl Tasks {
    fn process(&mut self, id: &str, exec_id: &str) -> TtrpcResult<&mut Process> {
        let container = self.containers.get_mut(id).ok_or_else(|| not_found(id, ""))?;
        if exec_id.is_empty() {
            Ok(&mut container.init)
        } else {
            container.execs.get_mut(exec_id).ok_or_else(|| not_found(id, exec_id))
        }
    }

    fn agent(&self) -> TtrpcResult<Arc<AgentClient>> {
        match (&self.vm, &self.failed) {
            (Some(vm), None) => Ok(vm.sandbox.agent.clone()),
            (_, Some(why)) => Err(rpc_error(Code::FAILED_PRECONDITION, format!("the sandbox VM failed: {why}"))),
            (None, None) => Err(rpc_error(Code::FAILED_PRECONDITION, "the sandbox VM is not running")),
        }
    }
}

impl Service {
    pub fn new(dir: StateDir, events: Publisher, control: Sender<Control>) -> Arc<Service> {
        Arc::new(Service {
            dir,
            events,
            control: Mutex::new(control),
            tasks: Mutex::new(Tasks::default()),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Tasks> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn shim_pid() -> u32 {
        std::process::id()
    }

    /// Run `job` on the main thread and wait for its result.
    fn on_main_thread<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: MainThreadJob = Box::new(move || {
            let _ = tx.send(job());
        });
        self.control.lock().unwrap_or_else(|e| e.into_inner()).send(Control::Run(job)).map_err(|_| anyhow!("the shim is shutting down"))?;
        rx.recv().map_err(|_| anyhow!("the shim's main thread dropped a job"))
    }

    /// Boot the VM for the first container, whose root is already bound into the share.
    fn boot(self: &Arc<Self>, tasks: &mut Tasks, bundle: &Bundle) -> anyhow::Result<()> {
        let network = bundle.netns.as_deref().map(network::attach).transpose()?;
        let nics: Vec<Nic> = network
            .iter()
            .flat_map(|n| &n.taps)
            .map(|t| Nic { tap_fd: std::os::fd::AsRawFd::as_raw_fd(&t.fd), mac: t.mac.clone() })
            .collect();
        let dir = self.dir.clone();
        let config = SandboxConfig::default().sized_for(&bundle.spec);
        let sandbox = self.on_main_thread(move || {
            let assets = Assets::locate()?;
            Sandbox::boot(&dir, &assets, &config, None, nics)
        })??;
        if let Some(net) = &network {
            sandbox
                .agent
                .call(RequestBody::ConfigureNetwork { interfaces: net.interfaces.clone(), routes: net.routes.clone() })
                .context("configuring the guest network")?;
        }
        self.watch(&sandbox)?;
        tasks.vm = Some(Vm { sandbox, network, first_guest_pid: 0 });
        Ok(())
    }

    /// Follow the agent's events and the sandbox processes' lives.
    fn watch(self: &Arc<Self>, sandbox: &Sandbox) -> anyhow::Result<()> {
        let pidfds = sandbox.pidfds()?;
        let me = self.clone();
        std::thread::Builder::new().name("proc-watch".into()).spawn(move || {
            let name = wait_any(&pidfds);
            me.sandbox_failed(&format!("{name} exited"));
        })?;
        Ok(())
    }

    /// Take the agent's notice channel and consume it until the connection ends.
    fn follow_agent(self: &Arc<Self>, notices: std::sync::mpsc::Receiver<AgentNotice>) -> anyhow::Result<()> {
        let me = self.clone();
        std::thread::Builder::new().name("agent-events".into()).spawn(move || {
            for notice in notices {
                match notice {
                    AgentNotice::Event(Event::ProcessExited { container_id, exec_id, status }) => {
                        me.exited(&container_id, exec_id.as_deref().unwrap_or(""), status);
                    }
                    AgentNotice::Event(Event::OomKilled { container_id }) => {
                        tracing::warn!(id = container_id, "OOM kill in the container");
                        me.events.publish(TaskEvent::Oom(TaskOOM { container_id, ..Default::default() }));
                    }
                    AgentNotice::Lost(reason) => {
                        me.sandbox_failed(&format!("lost the guest agent: {reason}"));
                        return;
                    }
                }
            }
        })?;
        Ok(())
    }

    /// Record an exit once its output has drained, then tell waiters and containerd.
    fn exited(&self, id: &str, exec_id: &str, status: i32) {
        let status = if (0..=255).contains(&status) { status as u32 } else { SANDBOX_FAILED as u32 };
        let relays = match self.lock().process(id, exec_id) {
            Ok(p) => p.relays.take(),
            Err(_) => return tracing::warn!(id, exec_id, "exit of an unknown process"),
        };
        if let Some(mut relays) = relays {
            relays.finish(OUTPUT_DRAIN);
        }
        let mut tasks = self.lock();
        if let Ok(process) = tasks.process(id, exec_id) {
            self.record_exit(id, exec_id, process, status);
        }
        self.changed.notify_all();
    }

    fn record_exit(&self, id: &str, exec_id: &str, process: &mut Process, status: u32) {
        if process.exit.is_some() {
            return;
        }
        let at = SystemTime::now();
        process.status = Status::STOPPED;
        process.exit = Some((status, at));
        tracing::info!(id, exec_id, status, "process exited");
        self.events.publish(TaskEvent::Exit(TaskExit {
            container_id: id.into(),
            id: if exec_id.is_empty() { id.into() } else { exec_id.into() },
            pid: Self::shim_pid(),
            exit_status: status,
            exited_at: MessageField::some(timestamp(at)),
            ..Default::default()
        }));
    }

    /// The VM or the agent is gone: every process still running has ended.
    fn sandbox_failed(&self, why: &str) {
        let mut tasks = self.lock();
        if tasks.failed.is_some() || tasks.vm.is_none() {
            return;
        }
        tracing::error!("sandbox failed: {why} (guest console {})", self.dir.console_log().display());
        tasks.failed = Some(why.to_string());
        for (id, container) in tasks.containers.iter_mut() {
            for (exec_id, process) in container.execs.iter_mut() {
                self.record_exit(id, exec_id, process, SANDBOX_FAILED as u32);
            }
            self.record_exit(id, "", &mut container.init, SANDBOX_FAILED as u32);
        }
        self.changed.notify_all();
    }

    fn create_container(self: &Arc<Self>, req: &CreateTaskRequest) -> anyhow::Result<()> {
        hull_protocol::validate_id(&req.id).map_err(|e| anyhow!("container id: {e}"))?;
        let bundle_dir = PathBuf::from(&req.bundle);
        let rootfs = bundle_dir.join("rootfs");
        let mut undo = Vec::new();
        let result = (|| {
            if !req.rootfs.is_empty() {
                std::fs::create_dir_all(&rootfs).with_context(|| format!("creating {}", rootfs.display()))?;
                // Before mounting: a list that fails halfway leaves mounts to undo too.
                undo.push(rootfs.clone());
                mounts::mount_rootfs(&req.rootfs, &rootfs)?;
            }
            let bundle = Bundle::load(&bundle_dir)?;
            bundle.require_process()?;
            let shared = SharedRootfs { host_path: bundle.rootfs.clone(), subdir: spec::share_subdir(&req.id), binds: bundle.binds.clone() };
            for m in shared.mounts(&self.dir.share_dir())? {
                if m.read_only {
                    let staging = self.dir.dir.join("ro-staging");
                    if m.target.is_dir() {
                        std::fs::create_dir_all(&staging)?;
                    } else {
                        std::fs::File::create(&staging)?;
                    }
                    let bound = mounts::bind_read_only(&m.source, &m.target, &staging);
                    let _ = std::fs::remove_dir(&staging).or_else(|_| std::fs::remove_file(&staging));
                    bound?;
                } else {
                    mounts::bind(&m.source, &m.target)?;
                }
                undo.insert(0, m.target);
            }

            let mut tasks = self.lock();
            if tasks.containers.contains_key(&req.id) {
                anyhow::bail!("container {} already exists", req.id);
            }
            let first = tasks.vm.is_none();
            if first {
                if tasks.failed.is_some() {
                    anyhow::bail!("the sandbox VM failed");
                }
                self.boot(&mut tasks, &bundle)?;
                let notices = std::mem::replace(&mut tasks.vm.as_mut().expect("just booted").sandbox.notices, std::sync::mpsc::channel().1);
                self.follow_agent(notices)?;
            }
            let vm = tasks.vm.as_mut().expect("booted");
            let mut guest_spec = spec::for_guest(&bundle.raw, &req.id, &bundle.binds);
            if !first {
                spec::join_namespaces(&mut guest_spec, vm.first_guest_pid);
            }
            let agent = vm.sandbox.agent.clone();
            let created = agent.call(RequestBody::CreateContainer { container_id: req.id.clone(), spec: guest_spec });
            let pid = match created {
                Ok(Reply::Created { pid }) => pid,
                Ok(other) => Err(anyhow!("agent answered create with {other:?}"))?,
                Err(e) => Err(e.context("creating the container in the guest"))?,
            };
            if first {
                vm.first_guest_pid = pid;
            }
            let stdio = [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()];
            let mut init = Process::new(stdio.clone(), req.terminal);
            let ends = stdio.each_ref().map(|p| Endpoint::fifo(p));
            init.relays = Some(stdio::attach(vm.sandbox.vsock_socket(), &req.id, None, ends)?);
            tasks.containers.insert(
                req.id.clone(),
                Container { bundle: bundle_dir.clone(), mounts: std::mem::take(&mut undo), init, execs: HashMap::new() },
            );
            Ok(())
        })();
        if result.is_err() {
            undo.iter().for_each(|m| mounts::unmount(m));
            self.stop_vm_if_empty();
        }
        result
    }

    /// With no container left, the VM has nothing to do: stop it and its daemons.
    fn stop_vm_if_empty(&self) {
        let vm = {
            let mut tasks = self.lock();
            if !tasks.containers.is_empty() {
                return;
            }
            let vm = tasks.vm.take();
            if vm.is_some() {
                // In the same critical section: the process watcher must not report the stop
                // as a crash, and no create may slip in between.
                tasks.failed.get_or_insert_with(|| "stopped".into());
            }
            vm
        };
        if let Some(mut vm) = vm {
            tracing::info!("last container gone: stopping the VM");
            vm.sandbox.shutdown();
            if let Some(mut net) = vm.network.take() {
                net.detach();
            }
        }
    }

    /// Tear everything down (shim exit): containers' mounts, the VM, its network.
    pub fn teardown(&self) {
        let containers = std::mem::take(&mut self.lock().containers);
        for container in containers.values() {
            container.mounts.iter().for_each(|m| mounts::unmount(m));
        }
        self.stop_vm_if_empty();
    }
}

/// Block until one of the pidfds is readable; returns its name.
fn wait_any(pidfds: &[(&'static str, std::os::fd::OwnedFd)]) -> &'static str {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
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

fn exit_fields(process: &Process) -> (u32, MessageField<Timestamp>) {
    match process.exit {
        Some((status, at)) => (status, MessageField::some(timestamp(at))),
        None => (0, MessageField::none()),
    }
}

/// The ttrpc face of a [`Service`] (a local type, as the orphan rule requires).
pub struct TaskService(pub Arc<Service>);

impl std::ops::Deref for TaskService {
    type Target = Arc<Service>;
    fn deref(&self) -> &Arc<Service> {
        &self.0
    }
}

impl Task for TaskService {
    fn create(&self, _ctx: &TtrpcContext, req: CreateTaskRequest) -> TtrpcResult<CreateTaskResponse> {
        tracing::info!(id = req.id, bundle = req.bundle, "create");
        if !req.checkpoint.is_empty() {
            return Err(rpc_error(Code::UNIMPLEMENTED, "hull cannot restore checkpoints"));
        }
        if self.lock().containers.contains_key(&req.id) {
            return Err(rpc_error(Code::ALREADY_EXISTS, format!("container {} already exists", req.id)));
        }
        self.create_container(&req).map_err(|e| {
            tracing::error!("create {}: {e:#}", req.id);
            internal(e)
        })?;
        let pid = Service::shim_pid();
        self.events.publish(TaskEvent::Create(TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        }));
        Ok(CreateTaskResponse { pid, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> TtrpcResult<StartResponse> {
        let mut tasks = self.lock();
        let agent = tasks.agent()?;
        let vsock = tasks.vm.as_ref().map(|vm| vm.sandbox.vsock_socket().to_path_buf()).unwrap_or_default();
        let process = tasks.process(&req.id, &req.exec_id)?;
        if process.status != Status::CREATED {
            return Err(rpc_error(Code::FAILED_PRECONDITION, format!("{} is not in the created state", req.id)));
        }
        let pid = Service::shim_pid();
        if req.exec_id.is_empty() {
            agent.call(RequestBody::StartContainer { container_id: req.id.clone() }).map_err(internal)?;
            process.status = Status::RUNNING;
            self.events.publish(TaskEvent::Start(TaskStart { container_id: req.id.clone(), pid, ..Default::default() }));
        } else {
            let spec = process.spec.take().ok_or_else(|| not_found(&req.id, &req.exec_id))?;
            agent
                .call(RequestBody::ExecProcess { container_id: req.id.clone(), exec_id: req.exec_id.clone(), process: spec })
                .map_err(internal)?;
            process.status = Status::RUNNING;
            let ends = process.stdio.each_ref().map(|p| Endpoint::fifo(p));
            process.relays = Some(stdio::attach(&vsock, &req.id, Some(&req.exec_id), ends).map_err(internal)?);
            self.events.publish(TaskEvent::ExecStarted(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            }));
        }
        Ok(StartResponse { pid, ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let mut tasks = self.lock();
        let bundle = tasks.containers.get(&req.id).map(|c| c.bundle.display().to_string()).unwrap_or_default();
        let process = tasks.process(&req.id, &req.exec_id)?;
        let (exit_status, exited_at) = exit_fields(process);
        Ok(StateResponse {
            id: req.id.clone(),
            bundle,
            pid: Service::shim_pid(),
            status: process.status.into(),
            stdin: process.stdio[0].clone(),
            stdout: process.stdio[1].clone(),
            stderr: process.stdio[2].clone(),
            terminal: process.terminal,
            exit_status,
            exited_at,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let mut tasks = self.lock();
        let process = tasks.process(&req.id, &req.exec_id)?;
        if matches!(process.status, Status::RUNNING | Status::PAUSED) {
            return Err(rpc_error(Code::FAILED_PRECONDITION, format!("cannot delete {}: it is still running", req.id)));
        }
        let (exit_status, exited_at) = exit_fields(process);
        let pid = Service::shim_pid();
        if !req.exec_id.is_empty() {
            let started = process.status != Status::CREATED;
            tasks.containers.get_mut(&req.id).map(|c| c.execs.remove(&req.exec_id));
            // The guest forgets it too (an exec never started was never there).
            if let (true, Ok(agent)) = (started, tasks.agent()) {
                let call = RequestBody::RemoveProcess { container_id: req.id.clone(), exec_id: req.exec_id.clone() };
                if let Err(e) = agent.call(call) {
                    tracing::warn!(id = req.id, exec = req.exec_id, "removing the exec in the guest: {e:#}");
                }
            }
            // A Wait on it answers NOT_FOUND now instead of sleeping forever.
            self.changed.notify_all();
            return Ok(DeleteResponse { pid, exit_status, exited_at, ..Default::default() });
        }
        if let Ok(agent) = tasks.agent() {
            if let Err(e) = agent.call(RequestBody::RemoveContainer { container_id: req.id.clone() }) {
                tracing::warn!(id = req.id, "removing the container in the guest: {e:#}");
            }
        }
        let container = tasks.containers.remove(&req.id).expect("looked up above");
        self.changed.notify_all();
        drop(tasks);
        container.mounts.iter().for_each(|m| mounts::unmount(m));
        let _ = std::fs::remove_dir_all(self.dir.share_dir().join(spec::share_subdir(&req.id)));
        self.events.publish(TaskEvent::Delete(TaskDelete {
            container_id: req.id.clone(),
            pid,
            exit_status,
            exited_at: exited_at.clone(),
            ..Default::default()
        }));
        self.stop_vm_if_empty();
        Ok(DeleteResponse { pid, exit_status, exited_at, ..Default::default() })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let agent = self.agent_for(&req.id)?;
        match agent.call(RequestBody::ListProcesses { container_id: req.id.clone() }).map_err(internal)? {
            Reply::Processes { processes } => Ok(PidsResponse {
                processes: processes
                    .into_iter()
                    .map(|p| containerd_shim_protos::api::ProcessInfo { pid: p.pid as u32, ..Default::default() })
                    .collect(),
                ..Default::default()
            }),
            other => Err(internal(anyhow!("agent answered ps with {other:?}"))),
        }
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.set_paused(&req.id, true)
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.set_paused(&req.id, false)
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim_protos::api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(rpc_error(Code::UNIMPLEMENTED, "checkpoint is not supported by hull: a VM's container cannot be checkpointed"))
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let mut tasks = self.lock();
        let agent = tasks.agent();
        let process = tasks.process(&req.id, &req.exec_id)?;
        if process.status == Status::STOPPED {
            return Err(rpc_error(Code::NOT_FOUND, format!("process {} already finished", req.id)));
        }
        let signal = i32::try_from(req.signal).map_err(|_| rpc_error(Code::INVALID_ARGUMENT, "signal out of range"))?;
        let exec_id = (!req.exec_id.is_empty()).then(|| req.exec_id.clone());
        agent?
            .call(RequestBody::SignalProcess { container_id: req.id.clone(), exec_id, signal, all: req.all })
            .map_err(internal)?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        hull_protocol::validate_id(&req.exec_id).map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("exec id: {e}")))?;
        let spec: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("exec process spec: {e}")))?;
        let mut tasks = self.lock();
        let container = tasks.containers.get_mut(&req.id).ok_or_else(|| not_found(&req.id, ""))?;
        if container.init.status != Status::RUNNING {
            return Err(rpc_error(Code::FAILED_PRECONDITION, format!("container {} is not running", req.id)));
        }
        if container.execs.contains_key(&req.exec_id) {
            return Err(rpc_error(Code::ALREADY_EXISTS, format!("exec {} already exists", req.exec_id)));
        }
        let mut process = Process::new([req.stdin.clone(), req.stdout.clone(), req.stderr.clone()], req.terminal);
        process.spec = Some(spec);
        container.execs.insert(req.exec_id.clone(), process);
        self.events.publish(TaskEvent::ExecAdded(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        }));
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let mut tasks = self.lock();
        let agent = tasks.agent()?;
        let process = tasks.process(&req.id, &req.exec_id)?;
        if !process.terminal {
            return Err(rpc_error(Code::FAILED_PRECONDITION, format!("{} has no terminal to resize", req.id)));
        }
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        agent
            .call(RequestBody::ResizeTerminal {
                container_id: req.id.clone(),
                exec_id: (!req.exec_id.is_empty()).then(|| req.exec_id.clone()),
                width: clamp(req.width),
                height: clamp(req.height),
            })
            .map_err(internal)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        let mut tasks = self.lock();
        let process = tasks.process(&req.id, &req.exec_id)?;
        if req.stdin {
            if let Some(relays) = process.relays.as_mut() {
                relays.close_stdin();
            }
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources: serde_json::Value = serde_json::from_slice(&req.resources.value)
            .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("resources: not OCI linux.resources JSON: {e}")))?;
        let update = hull_protocol::ResourceUpdate::from_oci(&resources)
            .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        let agent = self.agent_for(&req.id)?;
        agent.call(RequestBody::UpdateResources { container_id: req.id.clone(), update }).map_err(internal)?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let mut tasks = self.lock();
        loop {
            let process = tasks.process(&req.id, &req.exec_id)?;
            if process.exit.is_some() {
                let (exit_status, exited_at) = exit_fields(process);
                return Ok(WaitResponse { exit_status, exited_at, ..Default::default() });
            }
            tasks = self.changed.wait(tasks).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let agent = self.agent_for(&req.id)?;
        match agent.call(RequestBody::ContainerStats { container_id: req.id.clone() }).map_err(internal)? {
            Reply::Stats { stats } => Ok(StatsResponse { stats: MessageField::some(super::metrics::to_any(&stats)), ..Default::default() }),
            other => Err(internal(anyhow!("agent answered stats with {other:?}"))),
        }
    }

    fn connect(&self, _ctx: &TtrpcContext, _req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: Service::shim_pid(),
            task_pid: Service::shim_pid(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if !self.lock().containers.is_empty() {
            return Ok(Empty::new());
        }
        let _ = self.control.lock().unwrap_or_else(|e| e.into_inner()).send(Control::Exit);
        Ok(Empty::new())
    }
}

impl Service {
    /// The agent, for a call about container `id` (which must exist).
    fn agent_for(&self, id: &str) -> TtrpcResult<Arc<AgentClient>> {
        let tasks = self.lock();
        if !tasks.containers.contains_key(id) {
            return Err(not_found(id, ""));
        }
        tasks.agent()
    }

    fn set_paused(&self, id: &str, pause: bool) -> TtrpcResult<Empty> {
        let mut tasks = self.lock();
        let agent = tasks.agent()?;
        let process = tasks.process(id, "")?;
        let (from, to) = if pause { (Status::RUNNING, Status::PAUSED) } else { (Status::PAUSED, Status::RUNNING) };
        if process.status != from {
            return Err(rpc_error(Code::FAILED_PRECONDITION, format!("container {id} is not {from:?}")));
        }
        let container_id = id.to_string();
        let call = if pause { RequestBody::PauseContainer { container_id } } else { RequestBody::ResumeContainer { container_id } };
        agent.call(call).map_err(internal)?;
        process.status = to;
        let container_id = id.to_string();
        self.events.publish(if pause {
            TaskEvent::Paused(TaskPaused { container_id, ..Default::default() })
        } else {
            TaskEvent::Resumed(TaskResumed { container_id, ..Default::default() })
        });
        Ok(Empty::new())
    }
}
