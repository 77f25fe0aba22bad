//! The control server: framed requests in, responses and events out.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use anyhow::Result;
use hull_protocol::{
    read_frame, write_frame, AgentError, AgentMessage, ErrorKind, Event, FrameError, Outcome, Reply, Request,
    RequestBody, Response, CONTROL_PORT, PROTOCOL_VERSION,
};

use crate::containers::Registry;
use crate::log;
use crate::vsock::{Listener, Stream};

type Writer = Arc<Mutex<Stream>>;

pub const READY_LINE: &str = "ready";

/// Delivers events to the current host connection, queueing them while there is none.
#[derive(Clone, Default)]
pub struct EventSink(Arc<Mutex<SinkState>>);

#[derive(Default)]
struct SinkState {
    conn: Option<Writer>,
    queued: VecDeque<Event>,
}

impl EventSink {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn send(&self, event: Event) {
        let mut state = self.0.lock().unwrap();
        state.queued.push_back(event);
        state.flush();
    }

    fn attach(&self, conn: Writer) {
        let mut state = self.0.lock().unwrap();
        state.conn = Some(conn);
        state.flush();
    }
}

impl SinkState {
    fn flush(&mut self) {
        let Some(conn) = &self.conn else { return };
        while let Some(event) = self.queued.pop_front() {
            let msg = AgentMessage::Event(event.clone());
            if write_frame(&mut *conn.lock().unwrap(), &msg).is_err() {
                // Host went away: keep the event for the next connection.
                self.queued.push_front(event);
                self.conn = None;
                return;
            }
        }
    }
}

pub fn serve(registry: Arc<Registry>, events: EventSink) -> Result<()> {
    let listener = Listener::bind(CONTROL_PORT)?;
    // The host waits for this line on the console before it dials (see the runtime's
    // sandbox boot): dialing earlier races the guest's vsock driver.
    log::boot_step("listening");
    log::info(READY_LINE);
    loop {
        // A failed accept or spawn loses one connection, never the VM.
        let conn = match listener.accept() {
            Ok(conn) => conn,
            Err(e) => {
                log::error(&format!("control accept: {e}"));
                std::thread::sleep(std::time::Duration::from_millis(100));
                continue;
            }
        };
        let registry = registry.clone();
        let events = events.clone();
        let spawned =
            std::thread::Builder::new().name("control".into()).spawn(move || match handle(conn, &registry, &events) {
                Ok(()) | Err(FrameError::Closed) => {}
                Err(e) => log::error(&format!("control connection: {e}")),
            });
        if let Err(e) = spawned {
            log::error(&format!("control thread: {e}"));
        }
    }
}

fn handle(conn: Stream, registry: &Registry, events: &EventSink) -> Result<(), FrameError> {
    let mut reader = conn.try_clone()?;
    let writer: Writer = Arc::new(Mutex::new(conn));
    let mut shaken = false;
    loop {
        let req: Request = read_frame(&mut reader)?;
        let result = match (&req.body, shaken) {
            (RequestBody::Handshake { version }, _) if *version == PROTOCOL_VERSION => {
                shaken = true;
                Ok(Reply::Handshake { version: PROTOCOL_VERSION, agent_version: env!("CARGO_PKG_VERSION").into() })
            }
            (RequestBody::Handshake { version }, _) => Err(AgentError::new(
                ErrorKind::FailedPrecondition,
                format!("protocol version {version} unsupported (agent speaks {PROTOCOL_VERSION})"),
            )),
            (_, false) => Err(AgentError::new(ErrorKind::FailedPrecondition, "handshake required first")),
            (body, true) => dispatch(registry, events, body.clone()).map_err(|e| crate::refusal::to_wire(&e)),
        };
        let response = AgentMessage::Response(Response {
            id: req.id,
            result: match result {
                Ok(reply) => Outcome::Ok(reply),
                Err(e) => Outcome::Error(e),
            },
        });
        write_frame(&mut *writer.lock().unwrap(), &response)?;
        if shaken && matches!(req.body, RequestBody::Handshake { .. }) {
            events.attach(writer.clone());
        }
        #[cfg(feature = "hostile")]
        if let RequestBody::StartContainer { container_id } = &req.body {
            if crate::hostile::has(container_id, "stop-reading") {
                log::info("hostile: stop-reading: no request is read from now on");
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(3600));
                }
            }
        }
    }
}

fn dispatch(registry: &Registry, events: &EventSink, body: RequestBody) -> Result<Reply> {
    Ok(match body {
        RequestBody::Handshake { .. } => unreachable!("handled by the caller"),
        RequestBody::Ping => Reply::Empty,
        RequestBody::ConfigureNetwork { interfaces, routes } => {
            crate::network::configure(&interfaces, &routes)?;
            Reply::Empty
        }
        RequestBody::CreateContainer { container_id, spec } => {
            #[cfg(feature = "hostile")]
            let parsed: Option<libcontainer::oci_spec::runtime::Spec> = serde_json::from_value(spec.clone()).ok();
            let (pid, early_exit) = registry.create(&container_id, spec)?;
            if let Some(event) = early_exit {
                events.send(event);
            }
            #[cfg(feature = "hostile")]
            if let Some(spec) = &parsed {
                crate::hostile::on_create(&container_id, spec, events);
            }
            Reply::Created { pid }
        }
        RequestBody::StartContainer { container_id } => {
            registry.start(&container_id)?;
            Reply::Empty
        }
        RequestBody::SignalProcess { container_id, exec_id, signal, all } => {
            registry.signal(&container_id, exec_id.as_deref(), signal, all)?;
            Reply::Empty
        }
        RequestBody::ExecProcess { container_id, exec_id, process } => {
            let (pid, early_exit) = registry.exec(&container_id, &exec_id, process)?;
            if let Some(event) = early_exit {
                events.send(event);
            }
            Reply::Created { pid }
        }
        RequestBody::PauseContainer { container_id } => {
            registry.pause(&container_id)?;
            Reply::Empty
        }
        RequestBody::ResumeContainer { container_id } => {
            registry.resume(&container_id)?;
            Reply::Empty
        }
        RequestBody::ListProcesses { container_id } => {
            Reply::Processes { processes: registry.processes(&container_id)? }
        }
        RequestBody::ContainerStats { container_id } => Reply::Stats { stats: registry.stats(&container_id)? },
        RequestBody::UpdateResources { container_id, update } => {
            registry.update(&container_id, &update)?;
            Reply::Empty
        }
        RequestBody::ResizeTerminal { container_id, exec_id, width, height } => {
            registry.resize_terminal(&container_id, exec_id.as_deref(), width, height)?;
            Reply::Empty
        }
        RequestBody::RemoveProcess { container_id, exec_id } => {
            registry.remove_process(&container_id, &exec_id)?;
            Reply::Empty
        }
        RequestBody::RemoveContainer { container_id } => {
            registry.remove(&container_id)?;
            Reply::Empty
        }
    })
}
