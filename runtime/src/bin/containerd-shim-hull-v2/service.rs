//! The shim v2 Task service: containerd's verbs translated into operations of the sandbox's
//! [`Pod`], and the pod's events into containerd's.
//!
//! The first container created boots the pod (for a Kubernetes pod, that is the pause
//! "sandbox" container); later ones with the same CRI sandbox id join it. What is containerd's
//! alone stays here: the rootfs mount lists, the stdio FIFO paths `State` reports, the event
//! types. No lock of this file is held across a call into the guest; the pod serialises the
//! calls on one container and lets the others go on.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::anyhow;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse, DeleteRequest,
    DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest, PidsRequest, PidsResponse, ResizePtyRequest,
    ResumeRequest, ShutdownRequest, StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest,
    StatsResponse, Status, UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused, TaskResumed,
    TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::Task;
use hull::bundle::Bundle;
use hull::pod::{EventSink, Exit, Pod, PodConfig, PodError, PodEvent, ProcessState, ShareMode};
use hull::sandbox::SandboxConfig;
use hull::state::StateDir;
use hull::stdio::Endpoint;
use hull_protocol::ErrorKind;
use ttrpc::{Code, TtrpcContext};

use super::events::{timestamp, Publisher, TaskEvent};
use super::mounts;

/// Work that must run on the shim's main thread: the VMM and daemons get `PDEATHSIG` tied to
/// the thread that spawns them, and ttrpc's worker threads come and go.
pub type MainThreadJob = Box<dyn FnOnce() + Send>;

pub enum Control {
    Run(MainThreadJob),
    /// Tear down and exit.
    Exit,
}

/// What containerd gave for one process, which `State` reports back.
#[derive(Clone)]
struct Io {
    stdio: [String; 3],
    terminal: bool,
}

impl Io {
    fn endpoints(&self) -> [Endpoint; 3] {
        self.stdio.each_ref().map(|p| Endpoint::fifo(p))
    }
}

struct Container {
    bundle: PathBuf,
    /// containerd's rootfs, mounted in the shim's namespace, to undo on delete.
    rootfs_mount: Option<PathBuf>,
    init: Io,
    execs: HashMap<String, Io>,
}

pub struct Service {
    dir: StateDir,
    events: Publisher,
    control: Mutex<Sender<Control>>,
    /// Held while the first container boots the pod, so two creates cannot boot two VMs.
    booting: Mutex<()>,
    pod: Mutex<Option<Arc<Pod>>>,
    containers: Mutex<HashMap<String, Container>>,
}

type TtrpcResult<T> = ttrpc::Result<T>;

fn rpc_error(code: Code, message: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, message))
}

/// The one place the core's error kinds become ttrpc codes.
fn to_ttrpc(e: PodError) -> ttrpc::Error {
    let code = match e.kind() {
        ErrorKind::NotFound => Code::NOT_FOUND,
        ErrorKind::AlreadyExists => Code::ALREADY_EXISTS,
        ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
        ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
        ErrorKind::Internal => Code::INTERNAL,
    };
    rpc_error(code, e)
}

fn internal(e: anyhow::Error) -> ttrpc::Error {
    rpc_error(Code::INTERNAL, format!("{e:#}"))
}

fn not_found(id: &str) -> ttrpc::Error {
    rpc_error(Code::NOT_FOUND, format!("container {id}: not found"))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn exec_of(exec_id: &str) -> Option<&str> {
    (!exec_id.is_empty()).then_some(exec_id)
}

fn exit_fields(exit: Option<Exit>) -> (u32, MessageField<Timestamp>) {
    match exit {
        Some(exit) => (exit.status as u32, MessageField::some(timestamp(exit.at))),
        None => (0, MessageField::none()),
    }
}

fn status_of(state: ProcessState) -> Status {
    match state {
        ProcessState::Created => Status::CREATED,
        ProcessState::Running => Status::RUNNING,
        ProcessState::Paused => Status::PAUSED,
        ProcessState::Stopped => Status::STOPPED,
    }
}

fn shim_pid() -> u32 {
    std::process::id()
}

/// containerd's event for a pod event (the pid containerd knows is the shim's).
fn task_event(event: PodEvent) -> Option<TaskEvent> {
    let pid = shim_pid();
    Some(match event {
        PodEvent::Started { container_id, exec_id: None } => {
            TaskEvent::Start(TaskStart { container_id, pid, ..Default::default() })
        }
        PodEvent::Started { container_id, exec_id: Some(exec_id) } => {
            TaskEvent::ExecStarted(TaskExecStarted { container_id, exec_id, pid, ..Default::default() })
        }
        PodEvent::Exited { container_id, exec_id, exit } => TaskEvent::Exit(TaskExit {
            id: exec_id.unwrap_or_else(|| container_id.clone()),
            container_id,
            pid,
            exit_status: exit.status as u32,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        }),
        PodEvent::Paused { container_id } => TaskEvent::Paused(TaskPaused { container_id, ..Default::default() }),
        PodEvent::Resumed { container_id } => TaskEvent::Resumed(TaskResumed { container_id, ..Default::default() }),
        PodEvent::Oom { container_id } => TaskEvent::Oom(TaskOOM { container_id, ..Default::default() }),
        PodEvent::SandboxFailed { .. } => return None,
    })
}

impl Service {
    pub fn new(dir: StateDir, events: Publisher, control: Sender<Control>) -> Arc<Service> {
        Arc::new(Service {
            dir,
            events,
            control: Mutex::new(control),
            booting: Mutex::new(()),
            pod: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
        })
    }

    /// Run `job` on the main thread and wait for its result.
    fn on_main_thread<T: Send + 'static>(&self, job: impl FnOnce() -> T + Send + 'static) -> anyhow::Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        let job: MainThreadJob = Box::new(move || {
            let _ = tx.send(job());
        });
        lock(&self.control).send(Control::Run(job)).map_err(|_| anyhow!("the shim is shutting down"))?;
        rx.recv().map_err(|_| anyhow!("the shim's main thread dropped a job"))
    }

    /// The pod, for a call about container `id` (which must exist).
    fn pod_for(&self, id: &str) -> TtrpcResult<Arc<Pod>> {
        if !lock(&self.containers).contains_key(id) {
            return Err(not_found(id));
        }
        lock(&self.pod).clone().ok_or_else(|| rpc_error(Code::FAILED_PRECONDITION, "the sandbox VM is not running"))
    }

    /// The running pod, or a new one booted for `bundle` (container `id`).
    fn pod_or_boot(&self, id: &str, bundle: &Bundle) -> Result<Arc<Pod>, PodError> {
        let _booting = lock(&self.booting);
        if let Some(pod) = lock(&self.pod).clone() {
            return Ok(pod);
        }
        let publisher = self.events.clone();
        let sink: EventSink = Arc::new(move |event| {
            if let Some(e) = task_event(event) {
                publisher.publish(e);
            }
        });
        let dir = self.dir.clone();
        let (id, bundle) = (id.to_string(), bundle.clone());
        let booted = self.on_main_thread(move || {
            let config = PodConfig {
                dir,
                sandbox: SandboxConfig::default(),
                share: ShareMode::Propagating,
                first_id: &id,
                first: &bundle,
                on_network: &mut |_| Ok(()),
                forward_localhost: true,
            };
            Pod::boot(config, sink)
        });
        let pod = booted.map_err(|e| PodError::Caller(e.into()))??;
        *lock(&self.pod) = Some(pod.clone());
        Ok(pod)
    }

    /// With no container left, the VM has nothing to do: stop it and its daemons.
    fn stop_pod_if_empty(&self) {
        let _booting = lock(&self.booting);
        let mut slot = lock(&self.pod);
        if slot.as_ref().is_some_and(|pod| pod.shutdown_if_empty()) {
            *slot = None;
        }
    }

    fn create_container(&self, req: &CreateTaskRequest) -> TtrpcResult<()> {
        hull_protocol::validate_id(&req.id)
            .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("container id: {e}")))?;
        let bundle_dir = PathBuf::from(&req.bundle);
        let rootfs = bundle_dir.join("rootfs");
        let mut rootfs_mount = None;
        let result = (|| {
            if !req.rootfs.is_empty() {
                std::fs::create_dir_all(&rootfs)
                    .map_err(|e| internal(anyhow!("creating {}: {e}", rootfs.display())))?;
                // Before mounting: a list that fails halfway leaves mounts to undo too.
                rootfs_mount = Some(rootfs.clone());
                mounts::mount_rootfs(&req.rootfs, &rootfs).map_err(internal)?;
            }
            let bundle = Bundle::load(&bundle_dir).map_err(|e| internal(e.into()))?;
            bundle.require_process().map_err(|e| internal(e.into()))?;
            let pod = self.pod_or_boot(&req.id, &bundle).map_err(to_ttrpc)?;
            let init =
                Io { stdio: [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()], terminal: req.terminal };
            pod.create_container(&req.id, &bundle, Some(init.endpoints())).map_err(to_ttrpc)?;
            Ok(init)
        })();
        match result {
            Ok(init) => {
                let container = Container { bundle: bundle_dir, rootfs_mount, init, execs: HashMap::new() };
                lock(&self.containers).insert(req.id.clone(), container);
                Ok(())
            }
            Err(e) => {
                if let Some(m) = &rootfs_mount {
                    hull::share::unmount(m);
                }
                self.stop_pod_if_empty();
                Err(e)
            }
        }
    }

    /// Tear everything down (shim exit): the pod, then the containers' rootfs mounts.
    pub fn teardown(&self) {
        if let Some(pod) = lock(&self.pod).take() {
            pod.shutdown();
        }
        for container in std::mem::take(&mut *lock(&self.containers)).into_values() {
            if let Some(m) = &container.rootfs_mount {
                hull::share::unmount(m);
            }
        }
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
        if lock(&self.containers).contains_key(&req.id) {
            return Err(rpc_error(Code::ALREADY_EXISTS, format!("container {} already exists", req.id)));
        }
        self.create_container(&req).inspect_err(|e| tracing::error!("create {}: {e:?}", req.id))?;
        let pid = shim_pid();
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
        let pod = self.pod_for(&req.id)?;
        pod.start(&req.id, exec_of(&req.exec_id)).map_err(to_ttrpc)?;
        Ok(StartResponse { pid: shim_pid(), ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> TtrpcResult<StateResponse> {
        let (bundle, io) = {
            let containers = lock(&self.containers);
            let container = containers.get(&req.id).ok_or_else(|| not_found(&req.id))?;
            let io = match exec_of(&req.exec_id) {
                None => container.init.clone(),
                Some(exec) => container.execs.get(exec).cloned().ok_or_else(|| {
                    rpc_error(Code::NOT_FOUND, format!("process {exec} of container {}: not found", req.id))
                })?,
            };
            (container.bundle.display().to_string(), io)
        };
        let status = self.pod_for(&req.id)?.status(&req.id, exec_of(&req.exec_id)).map_err(to_ttrpc)?;
        let (exit_status, exited_at) = exit_fields(status.exit);
        let [stdin, stdout, stderr] = io.stdio;
        Ok(StateResponse {
            id: req.id.clone(),
            bundle,
            pid: shim_pid(),
            status: status_of(status.state).into(),
            stdin,
            stdout,
            stderr,
            terminal: io.terminal,
            exit_status,
            exited_at,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> TtrpcResult<DeleteResponse> {
        let pod = self.pod_for(&req.id)?;
        let pid = shim_pid();
        if let Some(exec) = exec_of(&req.exec_id) {
            let exit = pod.remove_process(&req.id, exec).map_err(to_ttrpc)?;
            if let Some(c) = lock(&self.containers).get_mut(&req.id) {
                c.execs.remove(exec);
            }
            let (exit_status, exited_at) = exit_fields(exit);
            return Ok(DeleteResponse { pid, exit_status, exited_at, ..Default::default() });
        }
        let exit = pod.remove_container(&req.id).map_err(to_ttrpc)?;
        let container = lock(&self.containers).remove(&req.id);
        if let Some(m) = container.as_ref().and_then(|c| c.rootfs_mount.as_ref()) {
            hull::share::unmount(m);
        }
        let (exit_status, exited_at) = exit_fields(exit);
        self.events.publish(TaskEvent::Delete(TaskDelete {
            container_id: req.id.clone(),
            pid,
            exit_status,
            exited_at: exited_at.clone(),
            ..Default::default()
        }));
        self.stop_pod_if_empty();
        Ok(DeleteResponse { pid, exit_status, exited_at, ..Default::default() })
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> TtrpcResult<PidsResponse> {
        let processes = self.pod_for(&req.id)?.processes(&req.id).map_err(to_ttrpc)?;
        Ok(PidsResponse {
            processes: processes
                .into_iter()
                .map(|p| containerd_shim_protos::api::ProcessInfo { pid: p.pid as u32, ..Default::default() })
                .collect(),
            ..Default::default()
        })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> TtrpcResult<Empty> {
        self.pod_for(&req.id)?.pause(&req.id).map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> TtrpcResult<Empty> {
        self.pod_for(&req.id)?.resume(&req.id).map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim_protos::api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        Err(rpc_error(
            Code::UNIMPLEMENTED,
            "checkpoint is not supported by hull: a VM's container cannot be checkpointed",
        ))
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> TtrpcResult<Empty> {
        let signal = i32::try_from(req.signal).map_err(|_| rpc_error(Code::INVALID_ARGUMENT, "signal out of range"))?;
        self.pod_for(&req.id)?.signal(&req.id, exec_of(&req.exec_id), signal, req.all).map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("exec process spec: {e}")))?;
        let pod = self.pod_for(&req.id)?;
        let io = Io { stdio: [req.stdin.clone(), req.stdout.clone(), req.stderr.clone()], terminal: req.terminal };
        pod.add_exec(&req.id, &req.exec_id, spec, req.terminal, Some(io.endpoints())).map_err(to_ttrpc)?;
        if let Some(c) = lock(&self.containers).get_mut(&req.id) {
            c.execs.insert(req.exec_id.clone(), io);
        }
        self.events.publish(TaskEvent::ExecAdded(TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        }));
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> TtrpcResult<Empty> {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        let pod = self.pod_for(&req.id)?;
        pod.resize(&req.id, exec_of(&req.exec_id), clamp(req.width), clamp(req.height)).map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            self.pod_for(&req.id)?.close_stdin(&req.id, exec_of(&req.exec_id)).map_err(to_ttrpc)?;
        }
        Ok(Empty::new())
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> TtrpcResult<Empty> {
        let resources: serde_json::Value = serde_json::from_slice(&req.resources.value)
            .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("resources: not OCI linux.resources JSON: {e}")))?;
        let update = hull_protocol::ResourceUpdate::from_oci(&resources)
            .map_err(|e| rpc_error(Code::INVALID_ARGUMENT, format!("resources: {e}")))?;
        self.pod_for(&req.id)?.update(&req.id, update).map_err(to_ttrpc)?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> TtrpcResult<WaitResponse> {
        let exit = self.pod_for(&req.id)?.wait(&req.id, exec_of(&req.exec_id)).map_err(to_ttrpc)?;
        let (exit_status, exited_at) = exit_fields(Some(exit));
        Ok(WaitResponse { exit_status, exited_at, ..Default::default() })
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> TtrpcResult<StatsResponse> {
        let stats = self.pod_for(&req.id)?.stats(&req.id).map_err(to_ttrpc)?;
        Ok(StatsResponse { stats: MessageField::some(super::metrics::to_any(&stats)), ..Default::default() })
    }

    fn connect(&self, _ctx: &TtrpcContext, _req: ConnectRequest) -> TtrpcResult<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: shim_pid(),
            task_pid: shim_pid(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> TtrpcResult<Empty> {
        if !lock(&self.containers).is_empty() {
            return Ok(Empty::new());
        }
        let _ = lock(&self.control).send(Control::Exit);
        Ok(Empty::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    #[test]
    fn error_kinds_map_to_containerd_codes() {
        let code = |e: PodError| match to_ttrpc(e) {
            ttrpc::Error::RpcStatus(s) => s.code(),
            other => panic!("{other:?}"),
        };
        assert_eq!(code(PodError::NoContainer("c".into())), Code::NOT_FOUND);
        assert_eq!(code(PodError::ContainerExists("c".into())), Code::ALREADY_EXISTS);
        let exited = hull::pod::InvalidState {
            op: hull::pod::Op::Signal,
            state: ProcessState::Stopped,
            subject: "container c".into(),
        };
        assert_eq!(code(PodError::InvalidState(exited)), Code::NOT_FOUND, "a kill of an exited process");
        let running =
            hull::pod::InvalidState { op: hull::pod::Op::Delete, state: ProcessState::Running, subject: "c".into() };
        assert_eq!(code(PodError::InvalidState(running)), Code::FAILED_PRECONDITION);
        assert_eq!(code(PodError::Stopping), Code::FAILED_PRECONDITION);
    }

    #[test]
    fn pod_events_become_task_events() {
        let exit = Exit { status: 137, at: SystemTime::now() };
        match task_event(PodEvent::Exited { container_id: "c".into(), exec_id: Some("e".into()), exit }) {
            Some(TaskEvent::Exit(e)) => {
                assert_eq!((e.container_id.as_str(), e.id.as_str(), e.exit_status), ("c", "e", 137))
            }
            _ => panic!("expected TaskExit"),
        }
        match task_event(PodEvent::Exited { container_id: "c".into(), exec_id: None, exit }) {
            Some(TaskEvent::Exit(e)) => assert_eq!(e.id, "c", "an init's exit carries the container id"),
            _ => panic!("expected TaskExit"),
        }
        assert!(task_event(PodEvent::SandboxFailed { reason: "x".into() }).is_none());
    }
}
