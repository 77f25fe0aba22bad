//! The supervisor's control socket: how later CLI invocations (`start`, `kill`, `exec`, …)
//! reach the process that owns the container's pod. One JSON request per connection, one
//! JSON reply; the requests are the pod's operations on the one container.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use hull::pod::PodError;
use hull_protocol::ErrorKind;
use serde::{Deserialize, Serialize};

/// Largest request or reply line accepted (requests are tiny; `ps` replies are the largest).
const MAX_LINE: u64 = 4 << 20;

/// How long a refused client gets to send its request before it is told why.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ControlRequest {
    Start,
    /// Signal the init (or every process with `all`), or one exec'd process.
    Kill {
        signal: i32,
        all: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
    },
    /// Start an OCI `process` in the running container; `hull exec` connects its streams.
    Exec {
        exec_id: String,
        process: serde_json::Value,
    },
    /// Answer once exec `exec_id` has ended, with its status; the exec is forgotten then.
    Wait {
        exec_id: String,
    },
    /// Set the size of a terminal (the init's without `exec_id`).
    Resize {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exec_id: Option<String>,
        width: u16,
        height: u16,
    },
    Pause,
    Resume,
    /// List the container's processes.
    Ps,
    /// Read the container's resource counters.
    Stats,
    /// Change the container's limits.
    Update {
        update: hull_protocol::ResourceUpdate,
    },
    /// Stop the container and the VM now (`delete --force`).
    Destroy,
}

/// A failed request: the core's error kind and message.
#[derive(Debug, Clone, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl From<PodError> for ControlError {
    fn from(e: PodError) -> Self {
        ControlError { kind: e.kind(), message: e.to_string() }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ControlError>,
    /// Exit status, for `wait`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
    /// For `ps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<Vec<hull_protocol::ProcessInfo>>,
    /// For `stats`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<hull_protocol::ContainerStats>,
}

impl ControlReply {
    pub fn failed(kind: ErrorKind, message: impl Into<String>) -> Self {
        ControlReply { error: Some(ControlError { kind, message: message.into() }), ..Default::default() }
    }
}

impl<E: Into<ControlError>> From<Result<ControlReply, E>> for ControlReply {
    fn from(r: Result<ControlReply, E>) -> Self {
        r.unwrap_or_else(|e| ControlReply { error: Some(e.into()), ..Default::default() })
    }
}

/// What serves the control socket.
pub trait Handler: Send + Sync {
    /// Answer one request.
    fn handle(&self, req: ControlRequest) -> ControlReply;
    /// Called before a request is read: false refuses it (the supervisor is finishing).
    fn begin(&self) -> bool;
    /// Called once its reply has been written (or could not be).
    fn end(&self);
}

/// Accept requests on `path`, each on a thread of its own, answered by `handler`.
pub fn serve(path: &Path, handler: Arc<dyn Handler>) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| anyhow!("binding {}: {e}", path.display()))?;
    std::thread::Builder::new().name("control".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            let handler = handler.clone();
            let _ = std::thread::Builder::new().name("control-conn".into()).spawn(move || {
                let refusal = match peer_allowed(&conn) {
                    Err(why) => {
                        tracing::warn!("control socket: {why}");
                        Some(ControlReply::failed(ErrorKind::FailedPrecondition, why))
                    }
                    Ok(()) if !handler.begin() => {
                        Some(ControlReply::failed(ErrorKind::FailedPrecondition, "the container has stopped"))
                    }
                    Ok(()) => None,
                };
                match refusal {
                    Some(reply) => {
                        // The request is read (and dropped) first: a refusal written and closed
                        // before the request arrives meets the client's write with EPIPE, and
                        // the client never learns why it was refused.
                        let _ = read_request(&conn, REFUSAL_READ_TIMEOUT);
                        write_reply(conn, &reply);
                    }
                    None => {
                        answer(conn, &*handler);
                        handler.end();
                    }
                }
            });
        }
    })?;
    Ok(())
}

/// Only root, or the user the supervisor runs as, may send it requests. (The socket is 0600 in
/// a 0700 directory; this holds even if someone loosens those.)
fn peer_allowed(conn: &UnixStream) -> Result<(), String> {
    let creds = nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| format!("reading the peer's credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    match creds.uid() {
        0 => Ok(()),
        uid if uid == me => Ok(()),
        uid => Err(format!("uid {uid} may not control this container")),
    }
}

fn answer(conn: UnixStream, handler: &dyn Handler) {
    let reply = match read_request(&conn, Duration::from_secs(10)) {
        Ok(req) => handler.handle(req),
        Err(why) => ControlReply::failed(ErrorKind::InvalidArgument, why),
    };
    write_reply(conn, &reply);
}

/// Read one request line (at most `MAX_LINE` bytes, within `timeout`).
fn read_request(conn: &UnixStream, timeout: Duration) -> Result<ControlRequest, String> {
    let _ = conn.set_read_timeout(Some(timeout));
    let mut line = String::new();
    match BufReader::new(conn.take(MAX_LINE)).read_line(&mut line) {
        Err(e) => Err(format!("reading request: {e}")),
        Ok(_) => serde_json::from_str::<ControlRequest>(&line).map_err(|e| format!("malformed request: {e}")),
    }
}

fn write_reply(mut conn: UnixStream, reply: &ControlReply) {
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = conn.write_all(&serde_json::to_vec(reply).unwrap_or_default());
    let _ = conn.write_all(b"\n");
}

/// Send one request to the supervisor whose control socket is `path`.
pub fn request(path: &Path, req: &ControlRequest, timeout: Duration) -> Result<()> {
    request_reply(path, req, Some(timeout)).map(|_| ())
}

/// Send one request and return the supervisor's reply (`timeout: None` waits as long as it
/// takes, for `wait`).
pub fn request_reply(path: &Path, req: &ControlRequest, timeout: Option<Duration>) -> Result<ControlReply> {
    let mut conn = UnixStream::connect(path).map_err(|e| anyhow!("container supervisor not reachable ({e})"))?;
    conn.set_read_timeout(timeout)?;
    conn.set_write_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(&serde_json::to_vec(req)?)?;
    conn.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new((&conn).take(MAX_LINE)).read_line(&mut line)?;
    if line.is_empty() {
        // The supervisor ended while handling the request: expected only for `destroy`.
        return match req {
            ControlRequest::Destroy => Ok(ControlReply::default()),
            _ => Err(anyhow!("container supervisor exited without answering")),
        };
    }
    let reply: ControlReply = serde_json::from_str(&line).map_err(|e| anyhow!("supervisor reply: {e}"))?;
    match reply.error {
        None => Ok(reply),
        Some(e) => Err(e.into()),
    }
}
