//! The supervisor's control socket: how later CLI invocations (`start`, `kill`, `delete`)
//! reach the process that owns the VM. One JSON request per connection, one JSON reply.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

use anyhow::{anyhow, Result};
use serde::{Deserialize, Serialize};

/// Largest request line accepted (requests are tiny; the socket is root-only anyway).
const MAX_REQUEST: u64 = 4096;

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
    /// Start an OCI `process` in the running container.
    Exec { exec_id: String, process: serde_json::Value },
    /// Answer once exec `exec_id` has ended, with its status.
    WaitExec { exec_id: String },
    /// Set the size of exec `exec_id`'s terminal.
    Resize { exec_id: String, width: u16, height: u16 },
    Pause,
    Resume,
    /// List the container's processes.
    Ps,
    /// Read the container's resource counters.
    Stats,
    /// Change the container's limits.
    Update { update: hull_protocol::ResourceUpdate },
    /// Stop the container and the VM now (`delete --force`).
    Destroy,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ControlReply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Exit status, for `wait_exec`.
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
    pub fn failed(message: impl Into<String>) -> Self {
        ControlReply { error: Some(message.into()), ..Default::default() }
    }

    pub fn from_result(r: Result<()>) -> Self {
        ControlReply { error: r.err().map(|e| format!("{e:#}")), ..Default::default() }
    }
}

pub type Incoming = (ControlRequest, Sender<ControlReply>);

/// Accept requests on `path` and hand each to `tx` with a channel for the reply.
pub fn serve(path: &Path, tx: Sender<Incoming>) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| anyhow!("binding {}: {e}", path.display()))?;
    std::thread::Builder::new().name("control".into()).spawn(move || {
        for conn in listener.incoming().flatten() {
            let tx = tx.clone();
            let _ = std::thread::Builder::new().name("control-conn".into()).spawn(move || handle(conn, &tx));
        }
    })?;
    Ok(())
}

fn handle(conn: UnixStream, tx: &Sender<Incoming>) {
    let shutting_down = || ControlReply::failed("container supervisor is shutting down");
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = conn.set_write_timeout(Some(Duration::from_secs(10)));
    let mut line = String::new();
    let reply = match BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line) {
        Err(e) => ControlReply::failed(format!("reading request: {e}")),
        Ok(_) => match serde_json::from_str::<ControlRequest>(&line) {
            Err(e) => ControlReply::failed(format!("malformed request: {e}")),
            Ok(req) => {
                let (reply_tx, reply_rx) = mpsc::channel();
                match tx.send((req, reply_tx)) {
                    Err(_) => shutting_down(),
                    Ok(()) => reply_rx.recv().unwrap_or_else(|_| shutting_down()),
                }
            }
        },
    };
    let mut conn = conn;
    let _ = conn.write_all(&serde_json::to_vec(&reply).unwrap_or_default());
    let _ = conn.write_all(b"\n");
}

/// Send one request to the supervisor whose control socket is `path`.
pub fn request(path: &Path, req: &ControlRequest, timeout: Duration) -> Result<()> {
    request_reply(path, req, Some(timeout)).map(|_| ())
}

/// Send one request and return the supervisor's reply (`timeout: None` waits as long as it
/// takes, for `wait_exec`).
pub fn request_reply(path: &Path, req: &ControlRequest, timeout: Option<Duration>) -> Result<ControlReply> {
    let mut conn = UnixStream::connect(path).map_err(|e| anyhow!("container supervisor not reachable ({e})"))?;
    conn.set_read_timeout(timeout)?;
    conn.write_all(&serde_json::to_vec(req)?)?;
    conn.write_all(b"\n")?;
    let mut line = String::new();
    BufReader::new((&conn).take(MAX_REQUEST)).read_line(&mut line)?;
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
        Some(e) => Err(anyhow!(e)),
    }
}
