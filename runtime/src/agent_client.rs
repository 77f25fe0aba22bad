//! Client of the agent's control connection.
//!
//! One reader thread demultiplexes what the agent writes: responses go to the caller waiting
//! on that request id, events to a channel the supervisor drains. Everything read is bounded
//! (frame cap) and every call has a deadline: the guest is not trusted to answer.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use hull_protocol::{
    read_frame, write_frame, AgentMessage, Event, FrameError, Outcome, Reply, Request, RequestBody, CONTROL_PORT,
    PROTOCOL_VERSION,
};

use crate::vsock;

/// How long one call may take. Container creation under TCG is the slowest legitimate call.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Calls awaiting a reply; `None` once the connection is gone, so later calls fail at once.
type Pending = Arc<Mutex<Option<HashMap<u64, Sender<Outcome>>>>>;

/// Notices queued for the supervisor before the reader stops reading: a guest that floods
/// events stalls its own connection instead of growing host memory.
const NOTICE_QUEUE: usize = 64;

pub struct AgentClient {
    writer: Mutex<UnixStream>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
}

/// What the reader thread reports besides responses.
#[derive(Debug)]
pub enum AgentNotice {
    Event(Event),
    /// The connection ended or the agent sent something invalid.
    Lost(String),
}

impl AgentClient {
    /// Connect to the agent through the hybrid vsock socket, retrying while the guest boots,
    /// then perform the version handshake. `alive` is polled between attempts so a VM that
    /// died is reported at once instead of at the deadline.
    pub fn connect(
        uds: &Path,
        deadline: Instant,
        mut alive: impl FnMut() -> Result<()>,
    ) -> Result<(AgentClient, Receiver<AgentNotice>)> {
        let stream = loop {
            alive()?;
            match vsock::connect(uds, CONTROL_PORT, Duration::from_secs(5)) {
                Ok(stream) => break stream,
                Err(e) if Instant::now() > deadline => bail!("agent did not answer on vsock port {CONTROL_PORT}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let (client, notices) = Self::over(stream)?;
        match client.call(RequestBody::Handshake { version: PROTOCOL_VERSION })? {
            Reply::Handshake { version, agent_version } => {
                tracing::debug!(version, agent_version, "agent handshake");
            }
            other => bail!("agent answered the handshake with {other:?}"),
        }
        Ok((client, notices))
    }

    /// Wrap an established connection (also used by tests with a fake agent).
    pub fn over(stream: UnixStream) -> Result<(AgentClient, Receiver<AgentNotice>)> {
        let mut reader = stream.try_clone()?;
        let pending: Pending = Arc::new(Mutex::new(Some(HashMap::new())));
        let (notice_tx, notice_rx) = mpsc::sync_channel(NOTICE_QUEUE);
        let reader_pending = pending.clone();
        let next_id = Arc::new(AtomicU64::new(1));
        let issued = next_id.clone();
        std::thread::Builder::new().name("agent-reader".into()).spawn(move || {
            let notice_tx: SyncSender<AgentNotice> = notice_tx;
            let reason = loop {
                match read_frame::<AgentMessage>(&mut reader) {
                    Ok(AgentMessage::Response(resp)) => {
                        let waiter = reader_pending.lock().unwrap().as_mut().and_then(|p| p.remove(&resp.id));
                        match waiter {
                            Some(tx) => {
                                let _ = tx.send(resp.result);
                            }
                            // A late answer to a call that already timed out.
                            None if resp.id < issued.load(Ordering::Relaxed) => {
                                tracing::debug!(id = resp.id, "dropping a late agent reply");
                            }
                            None => break format!("agent answered request id {} that was never sent", resp.id),
                        }
                    }
                    Ok(AgentMessage::Event(ev)) => {
                        let _ = notice_tx.send(AgentNotice::Event(ev));
                    }
                    Err(FrameError::Closed) => break "agent closed the connection".to_string(),
                    Err(e) => break format!("agent connection: {e}"),
                }
            };
            // Fail every waiting call and any later one, then tell the supervisor.
            reader_pending.lock().unwrap().take();
            let _ = notice_tx.send(AgentNotice::Lost(reason));
        })?;
        Ok((AgentClient { writer: Mutex::new(stream), pending, next_id }, notice_rx))
    }

    pub fn call(&self, body: RequestBody) -> Result<Reply> {
        self.call_with_timeout(body, CALL_TIMEOUT)
    }

    pub fn call_with_timeout(&self, body: RequestBody, timeout: Duration) -> Result<Reply> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        match self.pending.lock().unwrap().as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => bail!("agent connection lost"),
        };
        let request = Request { id, body };
        if let Err(e) = write_frame(&mut *self.writer.lock().unwrap(), &request) {
            self.forget(id);
            bail!("sending to the agent: {e}");
        }
        let outcome = rx.recv_timeout(timeout).map_err(|e| {
            self.forget(id);
            match e {
                mpsc::RecvTimeoutError::Timeout => anyhow!("agent did not answer within {timeout:?}"),
                mpsc::RecvTimeoutError::Disconnected => anyhow!("agent connection lost"),
            }
        })?;
        match outcome {
            Outcome::Ok(reply) => Ok(reply),
            Outcome::Error(e) => Err(anyhow!("agent: {}", e.message)),
        }
    }

    fn forget(&self, id: u64) {
        if let Some(pending) = self.pending.lock().unwrap().as_mut() {
            pending.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_protocol::Response;

    /// A fake agent that answers one request and then sends garbage: the client must fail the
    /// next call instead of hanging, and report the connection lost.
    #[test]
    fn hostile_agent_fails_calls_not_the_host() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let (client, notices) = AgentClient::over(host).unwrap();
        let fake = std::thread::spawn(move || {
            let req: Request = read_frame(&mut guest).unwrap();
            write_frame(&mut guest, &AgentMessage::Response(Response { id: req.id, result: Outcome::Ok(Reply::Empty) }))
                .unwrap();
            let _: Request = read_frame(&mut guest).unwrap();
            use std::io::Write;
            guest.write_all(&u32::MAX.to_be_bytes()).unwrap(); // absurd frame length
            guest
        });
        assert!(matches!(client.call(RequestBody::Ping).unwrap(), Reply::Empty));
        let err = client.call_with_timeout(RequestBody::Ping, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("connection lost"), "{err}");
        match notices.recv_timeout(Duration::from_secs(5)).unwrap() {
            AgentNotice::Lost(reason) => assert!(reason.contains("exceeds"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }
        drop(fake.join());
    }

    #[test]
    fn silent_agent_times_out() {
        let (host, _guest) = UnixStream::pair().unwrap();
        let (client, _notices) = AgentClient::over(host).unwrap();
        let err = client.call_with_timeout(RequestBody::Ping, Duration::from_millis(100)).unwrap_err();
        assert!(err.to_string().contains("did not answer"), "{err}");
    }
}

#[cfg(test)]
mod late_reply_tests {
    use super::*;
    use hull_protocol::Response;

    /// A reply that arrives after its call timed out is dropped; the connection survives and
    /// later calls still work. A reply to an id never sent is a protocol violation.
    #[test]
    fn late_reply_is_dropped_but_unsent_id_is_fatal() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let (client, notices) = AgentClient::over(host).unwrap();
        let err = client.call_with_timeout(RequestBody::Ping, Duration::from_millis(50)).unwrap_err();
        assert!(err.to_string().contains("did not answer"));
        let first: Request = read_frame(&mut guest).unwrap();
        write_frame(&mut guest, &AgentMessage::Response(Response { id: first.id, result: Outcome::Ok(Reply::Empty) })).unwrap();
        let fake = std::thread::spawn(move || {
            let req: Request = read_frame(&mut guest).unwrap();
            write_frame(&mut guest, &AgentMessage::Response(Response { id: req.id, result: Outcome::Ok(Reply::Empty) })).unwrap();
            write_frame(&mut guest, &AgentMessage::Response(Response { id: 999, result: Outcome::Ok(Reply::Empty) })).unwrap();
            guest
        });
        assert!(matches!(client.call(RequestBody::Ping).unwrap(), Reply::Empty));
        match notices.recv_timeout(Duration::from_secs(5)).unwrap() {
            AgentNotice::Lost(reason) => assert!(reason.contains("never sent"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }
        let err = client.call_with_timeout(RequestBody::Ping, Duration::from_secs(5)).unwrap_err();
        assert!(err.to_string().contains("connection lost"), "{err}");
        drop(fake.join());
    }
}
