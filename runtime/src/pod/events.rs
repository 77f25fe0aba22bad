//! The one stream of what happens in a pod, in the order it happened.
//!
//! Transitions the host asked for (`Started`, `Paused`, `Resumed`) and the ones the guest
//! reports (`Exited`, `Oom`) are handed to the pod's [`EventSink`] under its table lock, so a
//! process's `Started` always comes before its `Exited`, and a front end that publishes an
//! event of its own after an operation (containerd's TaskDelete after a delete) publishes it
//! after the events that operation depended on. Only processes this host started produce
//! events, each exit once, and OOM kills no more often than processes were started: a guest
//! that floods notices cannot grow anything.

use std::sync::Arc;
use std::time::SystemTime;

/// How a process ended: its status (the exit code, or 128 + the signal) and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub status: i32,
    pub at: SystemTime,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodEvent {
    /// A container's init (no `exec_id`) or an exec started.
    Started {
        container_id: String,
        exec_id: Option<String>,
    },
    Exited {
        container_id: String,
        exec_id: Option<String>,
        exit: Exit,
    },
    Paused {
        container_id: String,
    },
    Resumed {
        container_id: String,
    },
    /// The OOM killer struck in the container; comes before the exit it caused.
    Oom {
        container_id: String,
    },
    /// The VM or its agent is gone; every process still running has an `Exited` (255) after.
    SandboxFailed {
        reason: String,
    },
}

/// Where a pod's events go. Called with the pod's table lock held: it must queue the event
/// (a channel send) and never call back into the pod.
pub type EventSink = Arc<dyn Fn(PodEvent) + Send + Sync>;
