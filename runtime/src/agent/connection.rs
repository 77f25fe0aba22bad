//! The agent's control connection: framed requests out, responses and notices in.
//!
//! One reader thread demultiplexes what the agent writes: responses go to the caller waiting
//! on that request id, events to a bounded channel the pod drains. Everything read is bounded
//! (frame cap) and every call has a deadline: the guest is not trusted to answer.

use std::collections::HashMap;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hull_protocol::{read_frame, write_frame, AgentMessage, Event, FrameError, Outcome, Reply, Request, RequestBody};

use super::AgentError;

/// Calls awaiting a reply; `None` once the connection is gone, so later calls fail at once.
type Pending = Arc<Mutex<Option<HashMap<u64, Sender<Outcome>>>>>;

/// Notices queued for the pod before the reader stops reading: a guest that floods events
/// stalls its own connection instead of growing host memory.
const NOTICE_QUEUE: usize = 64;

/// How long one write of a request may block: a guest that stops reading must not hold the
/// caller (and every caller behind the writer lock) forever.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the reader thread reports besides responses.
#[derive(Debug)]
pub enum AgentNotice {
    Event(Event),
    /// The connection ended or the agent sent something invalid.
    Lost(String),
}

pub struct Connection {
    writer: Mutex<UnixStream>,
    pending: Pending,
    next_id: Arc<AtomicU64>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Connection {
    /// Wrap an established stream and start its reader thread.
    pub fn over(stream: UnixStream) -> std::io::Result<(Connection, Receiver<AgentNotice>)> {
        Self::with_write_timeout(stream, WRITE_TIMEOUT)
    }

    pub fn with_write_timeout(
        stream: UnixStream,
        write_timeout: Duration,
    ) -> std::io::Result<(Connection, Receiver<AgentNotice>)> {
        stream.set_write_timeout(Some(write_timeout))?;
        let mut reader = stream.try_clone()?;
        reader.set_read_timeout(None)?;
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
                        let waiter = lock(&reader_pending).as_mut().and_then(|p| p.remove(&resp.id));
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
                        if notice_tx.send(AgentNotice::Event(ev)).is_err() {
                            break "nobody follows the agent's events any more".to_string();
                        }
                    }
                    Err(FrameError::Closed) => break "agent closed the connection".to_string(),
                    Err(e) => break format!("agent connection: {e}"),
                }
            };
            // Fail every waiting call and any later one, then tell the pod.
            lock(&reader_pending).take();
            let _ = notice_tx.send(AgentNotice::Lost(reason));
        })?;
        Ok((Connection { writer: Mutex::new(stream), pending, next_id }, notice_rx))
    }

    pub fn call(&self, body: RequestBody, timeout: Duration) -> Result<Reply, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        match lock(&self.pending).as_mut() {
            Some(pending) => pending.insert(id, tx),
            None => return Err(AgentError::Lost),
        };
        let request = Request { id, body };
        {
            let mut writer = lock(&self.writer);
            if let Err(e) = write_frame(&mut *writer, &request) {
                // Half a frame may have gone out: the stream is out of step for good. Fail
                // every call, and end the reader too, so the pod learns the agent is lost.
                lock(&self.pending).take();
                let _ = writer.shutdown(std::net::Shutdown::Both);
                return Err(AgentError::Send(e));
            }
        }
        let outcome = rx.recv_timeout(timeout).map_err(|e| {
            self.forget(id);
            match e {
                mpsc::RecvTimeoutError::Timeout => AgentError::Timeout(timeout),
                mpsc::RecvTimeoutError::Disconnected => AgentError::Lost,
            }
        })?;
        match outcome {
            Outcome::Ok(reply) => Ok(reply),
            Outcome::Error(e) => Err(AgentError::Refused { kind: e.kind, message: e.message }),
        }
    }

    fn forget(&self, id: u64) {
        if let Some(pending) = lock(&self.pending).as_mut() {
            pending.remove(&id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hull_protocol::Response;

    /// Answer request `id` with `empty`, as the agent would.
    fn reply_empty(guest: &mut UnixStream, id: u64) {
        write_frame(guest, &AgentMessage::Response(Response { id, result: Outcome::Ok(Reply::Empty) })).unwrap();
    }

    /// A fake agent that answers one request and then sends garbage: the client must fail the
    /// next call instead of hanging, and report the connection lost.
    #[test]
    fn hostile_agent_fails_calls_not_the_host() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let (conn, notices) = Connection::over(host).unwrap();
        let fake = std::thread::spawn(move || {
            let req: Request = read_frame(&mut guest).unwrap();
            reply_empty(&mut guest, req.id);
            let _: Request = read_frame(&mut guest).unwrap();
            use std::io::Write;
            guest.write_all(&u32::MAX.to_be_bytes()).unwrap(); // absurd frame length
            guest
        });
        assert!(matches!(conn.call(RequestBody::Ping, Duration::from_secs(5)).unwrap(), Reply::Empty));
        let err = conn.call(RequestBody::Ping, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, AgentError::Lost), "{err}");
        match notices.recv_timeout(Duration::from_secs(5)).unwrap() {
            AgentNotice::Lost(reason) => assert!(reason.contains("exceeds"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }
        drop(fake.join());
    }

    #[test]
    fn silent_agent_times_out() {
        let (host, _guest) = UnixStream::pair().unwrap();
        let (conn, _notices) = Connection::over(host).unwrap();
        let err = conn.call(RequestBody::Ping, Duration::from_millis(100)).unwrap_err();
        assert!(matches!(err, AgentError::Timeout(_)), "{err}");
        assert!(err.to_string().contains("did not answer"), "{err}");
    }

    /// A reply that arrives after its call timed out is dropped; the connection survives and
    /// later calls still work. A reply to an id never sent is a protocol violation.
    #[test]
    fn late_reply_is_dropped_but_unsent_id_is_fatal() {
        let (host, mut guest) = UnixStream::pair().unwrap();
        let (conn, notices) = Connection::over(host).unwrap();
        let err = conn.call(RequestBody::Ping, Duration::from_millis(50)).unwrap_err();
        assert!(err.to_string().contains("did not answer"));
        let first: Request = read_frame(&mut guest).unwrap();
        reply_empty(&mut guest, first.id);
        let fake = std::thread::spawn(move || {
            let req: Request = read_frame(&mut guest).unwrap();
            reply_empty(&mut guest, req.id);
            reply_empty(&mut guest, 999);
            guest
        });
        assert!(matches!(conn.call(RequestBody::Ping, Duration::from_secs(5)).unwrap(), Reply::Empty));
        match notices.recv_timeout(Duration::from_secs(5)).unwrap() {
            AgentNotice::Lost(reason) => assert!(reason.contains("never sent"), "{reason}"),
            other => panic!("unexpected {other:?}"),
        }
        let err = conn.call(RequestBody::Ping, Duration::from_secs(5)).unwrap_err();
        assert!(matches!(err, AgentError::Lost), "{err}");
        drop(fake.join());
    }

    /// A guest that never reads its control socket: the write fails at its deadline instead of
    /// blocking the caller forever.
    #[test]
    fn guest_that_stops_reading_cannot_block_a_write() {
        let (host, guest) = UnixStream::pair().unwrap();
        let write_timeout = Duration::from_millis(300);
        let (conn, _notices) = Connection::with_write_timeout(host, write_timeout).unwrap();
        let big = serde_json::Value::String("x".repeat(512 * 1024));
        let started = std::time::Instant::now();
        let mut failed = None;
        for _ in 0..64 {
            let body = RequestBody::CreateContainer { container_id: "c".into(), spec: big.clone() };
            if let Err(e) = conn.call(body, Duration::from_millis(1)) {
                if matches!(e, AgentError::Send(_)) {
                    failed = Some(e);
                    break;
                }
            }
        }
        assert!(failed.is_some(), "writes never blocked: the socket buffer is larger than expected");
        assert!(started.elapsed() < write_timeout * 20, "took {:?}", started.elapsed());
        drop(guest);
    }
}
