//! Publishing task events to containerd over its ttrpc socket (`TTRPC_ADDRESS`).
//!
//! Events are queued and forwarded in order by one thread, so a slow or restarting containerd
//! never blocks a task call; an event that cannot be delivered is logged and dropped, which is
//! what containerd's own shims do.

use std::sync::mpsc::{self, Sender};
use std::time::{Duration, SystemTime};

use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskOOM, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim::event::Envelope;
use containerd_shim_protos::shim::events::ForwardRequest;
use containerd_shim_protos::{topics, EventsClient};

/// How long one forward may take before the event is given up.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

pub enum TaskEvent {
    Create(TaskCreate),
    Start(TaskStart),
    Exit(TaskExit),
    Delete(TaskDelete),
    ExecAdded(TaskExecAdded),
    ExecStarted(TaskExecStarted),
    Paused(TaskPaused),
    Resumed(TaskResumed),
    Oom(TaskOOM),
}

impl TaskEvent {
    fn topic_and_body(&self) -> (&'static str, &dyn MessageDyn) {
        match self {
            TaskEvent::Create(e) => (topics::TASK_CREATE_EVENT_TOPIC, e),
            TaskEvent::Start(e) => (topics::TASK_START_EVENT_TOPIC, e),
            TaskEvent::Exit(e) => (topics::TASK_EXIT_EVENT_TOPIC, e),
            TaskEvent::Delete(e) => (topics::TASK_DELETE_EVENT_TOPIC, e),
            TaskEvent::ExecAdded(e) => (topics::TASK_EXEC_ADDED_EVENT_TOPIC, e),
            TaskEvent::ExecStarted(e) => (topics::TASK_EXEC_STARTED_EVENT_TOPIC, e),
            TaskEvent::Paused(e) => (topics::TASK_PAUSED_EVENT_TOPIC, e),
            TaskEvent::Resumed(e) => (topics::TASK_RESUMED_EVENT_TOPIC, e),
            TaskEvent::Oom(e) => (topics::TASK_OOM_EVENT_TOPIC, e),
        }
    }
}

#[derive(Clone)]
pub struct Publisher {
    tx: Sender<TaskEvent>,
}

impl Publisher {
    /// Start the forwarding thread. `address` is containerd's ttrpc socket; when it is empty
    /// (a shim started by hand) events are only logged.
    pub fn start(address: String, namespace: String) -> std::io::Result<Publisher> {
        let (tx, rx) = mpsc::channel::<TaskEvent>();
        std::thread::Builder::new().name("events".into()).spawn(move || {
            let mut client: Option<EventsClient> = None;
            for event in rx {
                let (topic, body) = event.topic_and_body();
                if address.is_empty() {
                    tracing::info!(topic, "event (no containerd to publish to)");
                    continue;
                }
                let request = envelope(&namespace, topic, body);
                // One reconnect per event: containerd may have restarted.
                for attempt in 0..2 {
                    if client.is_none() {
                        client = connect(&address);
                    }
                    let Some(c) = &client else { break };
                    let ctx = ttrpc::context::with_timeout(FORWARD_TIMEOUT.as_nanos() as i64);
                    match c.forward(ctx, &request) {
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(topic, attempt, "publishing event: {e}");
                            client = None;
                        }
                    }
                }
            }
        })?;
        Ok(Publisher { tx })
    }

    pub fn publish(&self, event: TaskEvent) {
        let _ = self.tx.send(event);
    }
}

fn connect(address: &str) -> Option<EventsClient> {
    let url = if address.contains("://") { address.to_string() } else { format!("unix://{address}") };
    match ttrpc::Client::connect(&url) {
        Ok(client) => Some(EventsClient::new(client)),
        Err(e) => {
            tracing::warn!(address, "connecting to containerd for events: {e}");
            None
        }
    }
}

fn envelope(namespace: &str, topic: &str, body: &dyn MessageDyn) -> ForwardRequest {
    let mut any = Any::new();
    // containerd resolves events by their bare protobuf name (no type.googleapis.com/ prefix).
    any.type_url = body.descriptor_dyn().full_name().to_string();
    any.value = body.write_to_bytes_dyn().unwrap_or_default();
    let envelope = Envelope {
        timestamp: MessageField::some(timestamp(SystemTime::now())),
        namespace: namespace.to_string(),
        topic: topic.to_string(),
        event: MessageField::some(any),
        ..Default::default()
    };
    ForwardRequest { envelope: MessageField::some(envelope), ..Default::default() }
}

pub fn timestamp(at: SystemTime) -> Timestamp {
    let since = at.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp { seconds: since.as_secs() as i64, nanos: since.subsec_nanos() as i32, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message;

    #[test]
    fn envelope_names_the_event_by_its_protobuf_name() {
        let exit = TaskExit { container_id: "c".into(), exit_status: 3, ..Default::default() };
        let req = envelope("ns", topics::TASK_EXIT_EVENT_TOPIC, &exit);
        let env = req.envelope.unwrap();
        assert_eq!(env.topic, "/tasks/exit");
        assert_eq!(env.namespace, "ns");
        let any = env.event.unwrap();
        assert_eq!(any.type_url, "containerd.events.TaskExit");
        let back = TaskExit::parse_from_bytes(&any.value).unwrap();
        assert_eq!(back.exit_status, 3);
    }
}
