//! The supervisor: one process per container, the CLI's adapter over the [`Pod`] core.
//!
//! It boots the container's pod, keeps `state.json` in step with it, runs the host's OCI
//! hooks, serves the control socket for later CLI verbs (each a pod operation), forwards the
//! signals it receives to the container, and returns the container's exit status (128+N for a
//! signal) once its init ends, after tearing the pod down. `state.pid` names this process, so
//! whoever waits on it (podman's conmon, a shell) sees the container's real exit code.
//!
//! A failure of any sandbox process or of the agent connection ends the container with
//! [`SANDBOX_FAILED`] instead of hanging.

pub mod control;

use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Result;
use hull::bundle::Bundle;
use hull::hooks;
use hull::pod::{EventSink, Pod, PodConfig, PodEvent, ShareMode, SANDBOX_FAILED};
use hull::sandbox::SandboxConfig;
use hull::state::{now_rfc3339, State, StateDir, Status};
use hull::terminal::{self, Console, Tty};
use hull_protocol::ErrorKind;
use nix::sys::signal::{SigSet, Signal};

use control::{ControlError, ControlReply, ControlRequest};

/// Signals a supervisor forwards to the container instead of dying of them (runc's `run`
/// forwards them too).
const FORWARDED: [Signal; 6] =
    [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// What the supervisor's main loop waits for.
enum Msg {
    Pod(PodEvent),
    Signal(i32),
    /// `delete --force`: stop now.
    Destroy,
}

/// What the main loop and the control connections share.
struct Shared {
    id: String,
    dir: StateDir,
    pod: Arc<Pod>,
    /// `state.json`, as last written.
    state: Mutex<State>,
    hooks: Option<oci_spec::runtime::Hooks>,
    /// The host terminal the container's terminal mirrors, if it has one.
    tty: Mutex<Option<Tty>>,
    /// Why `start` must fail: the config has no `process`.
    missing_process: Option<String>,
    tx: Sender<Msg>,
    /// Control requests being answered, and whether the supervisor is finishing (then no new
    /// one is taken): it exits only once every answer is out.
    requests: Mutex<(usize, bool)>,
    idle: Condvar,
}

pub struct Supervisor {
    shared: Arc<Shared>,
    rx: Receiver<Msg>,
}

/// Block the forwarded signals in the calling thread; threads spawned afterwards inherit the
/// mask, so only the forwarding thread ever receives them. Call before anything spawns a
/// thread.
pub fn block_forwarded_signals() -> Result<SigSet> {
    let mut set = SigSet::empty();
    FORWARDED.iter().for_each(|s| set.add(*s));
    // Not forwarded: a terminal's size change, mirrored into the guest instead.
    set.add(Signal::SIGWINCH);
    set.thread_block()?;
    Ok(set)
}

impl Supervisor {
    /// Boot the pod and create the container in it (status `created`). The state dir must
    /// exist; on error everything this started is stopped again and the caller removes the
    /// state dir.
    pub fn create(
        dir: StateDir,
        bundle: &Bundle,
        config: &SandboxConfig,
        console: &Console,
        signals: SigSet,
    ) -> Result<Supervisor> {
        let id = dir.id();
        let me = std::process::id() as i32;
        let state = State {
            oci_version: bundle.spec.version().clone(),
            id: id.clone(),
            status: Status::Creating,
            pid: Some(me),
            supervisor_start: hull::process::start_time(me),
            bundle: bundle.dir.clone(),
            annotations: bundle.raw["annotations"].as_object().cloned().unwrap_or_default(),
            created: now_rfc3339(),
            exit_status: None,
            network: None,
            // Recorded before it exists, so `delete` can remove it whatever happens next.
            cgroup: hull::cgroup::relative_path(
                bundle.spec.linux().as_ref().and_then(|l| l.cgroups_path().as_deref()).and_then(|p| p.to_str()),
                &id,
            )
            .ok(),
        };
        dir.write(&state)?;
        let state = Mutex::new(state);

        // runtime-spec: a config without `process` can be created; only `start` fails. Its
        // pod boots, but there is no process to create in the guest.
        let missing_process = bundle.require_process().err().map(|e| e.to_string());
        let terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
        let (io, tty) = match missing_process {
            None => terminal::endpoints(terminal, console).map(|(ends, tty)| (Some(ends), tty))?,
            Some(_) => (None, None),
        };

        let (tx, rx) = mpsc::channel();
        let events = tx.clone();
        let events = Mutex::new(events);
        let sink: EventSink = Arc::new(move |e| {
            let _ = events.lock().unwrap_or_else(|p| p.into_inner()).send(Msg::Pod(e));
        });
        let mut record_network = |record: &hull::network::Record| {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.network = Some(record.clone());
            dir.write(&s).map_err(|e| hull::pod::PodError::Caller(Box::new(e)))
        };
        let pod = Pod::boot(
            PodConfig {
                dir: dir.clone(),
                sandbox: config.clone(),
                share: ShareMode::Private,
                first_id: &id,
                first: bundle,
                on_network: &mut record_network,
                // runc makes no such forward; CRI's port-forward is the shim's.
                forward_localhost: false,
            },
            sink,
        )?;
        let shared = Arc::new(Shared {
            id,
            dir,
            pod,
            state,
            hooks: bundle.spec.hooks().clone(),
            tty: Mutex::new(tty),
            missing_process,
            tx,
            requests: Mutex::new((0, false)),
            idle: Condvar::new(),
        });
        let sup = Supervisor { shared: shared.clone(), rx };
        // Any failure from here on stops the VM (and undoes the network) before returning.
        let ready = (|| -> Result<()> {
            if let Some(ends) = io {
                shared.pod.create_container(&shared.id, bundle, Some(ends))?;
            }
            // The container exists in the guest now: prestart hooks are told `created`, which
            // runtime-tools' hook test expects; createRuntime is told `creating`, as runc does.
            let state = shared.state();
            hooks::run(
                shared.hooks.as_ref(),
                hooks::Point::Prestart,
                &State { status: Status::Created, ..state.clone() },
            )?;
            hooks::run(shared.hooks.as_ref(), hooks::Point::CreateRuntime, &state)?;
            sup.spawn_signal_forwarder(signals)?;
            control::serve(&shared.dir.control_socket(), shared.clone())?;
            shared.mirror_terminal_size();
            shared.set_status(Status::Created)
        })();
        if let Err(e) = ready {
            shared.finish(SANDBOX_FAILED);
            return Err(e);
        }
        Ok(sup)
    }

    fn spawn_signal_forwarder(&self, signals: SigSet) -> Result<()> {
        let tx = self.shared.tx.clone();
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            while let Ok(sig) = signals.wait() {
                if tx.send(Msg::Signal(sig as i32)).is_err() {
                    return;
                }
            }
        })?;
        Ok(())
    }

    pub fn start(&self) -> Result<()> {
        Ok(self.shared.start()?)
    }

    /// Give up on a container that never ran: stop its VM.
    pub fn stop(self) {
        self.shared.pod.shutdown();
    }

    /// Serve until the container's init ends; returns its exit status. The VM is gone and
    /// `state.json` says `stopped` when this returns.
    pub fn serve(self) -> i32 {
        let shared = &self.shared;
        let status = loop {
            let Ok(msg) = self.rx.recv() else { break shared.fail("supervisor lost its event sources") };
            match msg {
                Msg::Pod(PodEvent::Exited { container_id, exec_id: None, exit }) if container_id == shared.id => {
                    tracing::info!(status = exit.status, "container exited");
                    break exit.status;
                }
                Msg::Pod(PodEvent::SandboxFailed { reason }) => break shared.fail(&reason),
                Msg::Pod(other) => tracing::debug!(?other, "pod event"),
                Msg::Signal(sig) if sig == libc::SIGWINCH => shared.mirror_terminal_size(),
                Msg::Signal(sig) => {
                    if let Err(e) = shared.pod.signal(&shared.id, None, sig, false) {
                        tracing::warn!("forwarding signal {sig}: {e}");
                    }
                }
                Msg::Destroy => break 128 + libc::SIGKILL,
            }
        };
        shared.finish(status)
    }
}

impl Shared {
    fn state(&self) -> State {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_status(&self, status: Status) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A container that has stopped stays stopped, whatever a late answer says.
        if state.status == Status::Stopped {
            return Ok(());
        }
        state.status = status;
        self.dir.write(&state)?;
        Ok(())
    }

    fn start(&self) -> Result<(), ControlError> {
        if let Some(why) = &self.missing_process {
            return Err(ControlError { kind: ErrorKind::FailedPrecondition, message: why.clone() });
        }
        self.pod.start(&self.id, None)?;
        self.set_status(Status::Running).map_err(internal)?;
        // A failing poststart hook is logged; the container keeps running (runtime-spec).
        hooks::run_warning(self.hooks.as_ref(), hooks::Point::Poststart, &self.state());
        Ok(())
    }

    /// Answer one control request (on its connection's thread).
    fn answer(&self, req: ControlRequest) -> ControlReply {
        let id = self.id.as_str();
        let done = ControlReply::default;
        let reply: Result<ControlReply, ControlError> = match req {
            ControlRequest::Start => self.start().map(|()| done()),
            ControlRequest::Kill { signal, all, exec_id } => {
                self.pod.signal(id, exec_id.as_deref(), signal, all).map(|()| done()).map_err(Into::into)
            }
            ControlRequest::Exec { exec_id, process } => self.exec(&exec_id, process).map(|()| done()),
            ControlRequest::Wait { exec_id } => match self.pod.wait(id, Some(&exec_id)) {
                Ok(exit) => {
                    // Delivered: the guest can drop what it keeps for the exec, and so can we.
                    if let Err(e) = self.pod.remove_process(id, &exec_id) {
                        tracing::warn!(exec_id, "removing the exec: {e}");
                    }
                    Ok(ControlReply { status: Some(exit.status), ..done() })
                }
                Err(e) => Err(e.into()),
            },
            ControlRequest::Resize { exec_id, width, height } => {
                self.pod.resize(id, exec_id.as_deref(), width, height).map(|()| done()).map_err(Into::into)
            }
            ControlRequest::Pause => self.freeze(true).map(|()| done()),
            ControlRequest::Resume => self.freeze(false).map(|()| done()),
            ControlRequest::Ps => {
                self.pod.processes(id).map(|p| ControlReply { processes: Some(p), ..done() }).map_err(Into::into)
            }
            ControlRequest::Stats => {
                self.pod.stats(id).map(|s| ControlReply { stats: Some(s), ..done() }).map_err(Into::into)
            }
            ControlRequest::Update { update } => self.pod.update(id, update).map(|()| done()).map_err(Into::into),
            ControlRequest::Destroy => {
                let _ = self.tx.send(Msg::Destroy);
                Ok(done())
            }
        };
        reply.into()
    }

    /// `hull exec`: add the exec and start it; the caller connects its streams.
    fn exec(&self, exec_id: &str, process: serde_json::Value) -> Result<(), ControlError> {
        let terminal = process["terminal"] == serde_json::json!(true);
        self.pod.add_exec(&self.id, exec_id, process, terminal, None)?;
        if let Err(e) = self.pod.start(&self.id, Some(exec_id)) {
            // It never ran: forget it, so the id can be used again.
            let _ = self.pod.remove_process(&self.id, exec_id);
            return Err(e.into());
        }
        Ok(())
    }

    fn freeze(&self, pause: bool) -> Result<(), ControlError> {
        if pause {
            self.pod.pause(&self.id)?;
        } else {
            self.pod.resume(&self.id)?;
        }
        self.set_status(if pause { Status::Paused } else { Status::Running }).map_err(internal)
    }

    /// Give the guest terminal of the init the host terminal's size.
    fn mirror_terminal_size(&self) {
        let size = self.tty.lock().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(Tty::size);
        let Some((width, height)) = size else { return };
        if let Err(e) = self.pod.resize(&self.id, None, width, height) {
            tracing::warn!("resizing the container's terminal: {e}");
        }
    }

    fn fail(&self, why: &str) -> i32 {
        tracing::error!("{why} (guest console: {})", self.dir.console_log().display());
        eprintln!("hull: error: container {}: {why}", self.id);
        SANDBOX_FAILED
    }

    fn finish(&self, status: i32) -> i32 {
        // The exit is recorded before the VM is torn down (which takes a while): `state` says
        // `stopped` as soon as the init has gone, as runc's does; `delete` waits for this
        // process to finish the tear-down.
        {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            state.status = Status::Stopped;
            state.exit_status = Some(status);
            if let Err(e) = self.dir.write(&state) {
                tracing::warn!("recording the exit: {e}");
            }
        }
        self.pod.shutdown();
        // Let the answers in flight go out (they return quickly now that the pod is down): a
        // `hull start` whose container exited at once must still hear that it started.
        {
            let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
            requests.1 = true;
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while requests.0 > 0 {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    tracing::warn!(in_flight = requests.0, "control requests still unanswered");
                    break;
                }
                requests = self.idle.wait_timeout(requests, left).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
        let _ = std::fs::remove_file(self.dir.control_socket());
        status
    }
}

impl control::Handler for Shared {
    fn handle(&self, req: ControlRequest) -> ControlReply {
        self.answer(req)
    }

    fn begin(&self) -> bool {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        if requests.1 {
            return false;
        }
        requests.0 += 1;
        true
    }

    fn end(&self) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        requests.0 -= 1;
        self.idle.notify_all();
    }
}

fn internal(e: impl std::fmt::Display) -> ControlError {
    ControlError { kind: ErrorKind::Internal, message: e.to_string() }
}
