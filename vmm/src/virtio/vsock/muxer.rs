//! The host side of the hybrid vsock: maps guest connections to unix sockets.
//!
//! - Host-initiated: a host process connects to `uds`, writes `CONNECT <port>\n`; the muxer asks
//!   the guest (REQUEST) and, once the guest accepts (RESPONSE), answers `OK <local port>\n`.
//! - Guest-initiated: a REQUEST to host port P connects to `<uds>_P`.
//!
//! Everything is bounded, because the guest is not trusted: connections, half-open host
//! connections, the queue of packets waiting for guest rx buffers, and each connection's buffer
//! of guest bytes the host has not taken yet (which is exactly the credit we advertise: a guest
//! sending beyond it breaks the protocol and gets its connection reset). Nothing here blocks:
//! the event loop is shared by every device.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::num::Wrapping;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

pub use vmm_sys_util::epoll::EventSet;

use super::packet::*;
use hull_protocol::LogBudget;

/// Credit we grant per connection: guest bytes we will buffer for a slow host reader.
pub const BUF_ALLOC: u32 = 128 * 1024;
pub const MAX_CONNECTIONS: usize = 256;
/// Host sockets that connected but have not finished their `CONNECT` line.
pub const MAX_PENDING_HOST: usize = 64;
/// Packets waiting for guest rx buffers (data is read from sockets only when a buffer exists,
/// so these are control packets and one data marker per connection).
pub const MAX_RX_BACKLOG: usize = 1024;
const CONNECT_LINE_MAX: usize = 32;
const FIRST_LOCAL_PORT: u32 = 1 << 30;

/// Changes to the event loop's interest list, applied by the device (which owns the loop ops).
#[derive(Debug, PartialEq, Eq)]
pub enum FdOp {
    Add(RawFd, EventSet),
    Modify(RawFd, EventSet),
    Remove(RawFd),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The host asked (CONNECT); REQUEST is on its way to the guest.
    Connecting,
    Established,
    /// The guest shut down both directions; deliver what is buffered, then reset.
    Draining,
}

type Key = (u32, u32); // (host port, guest port)

struct Connection {
    stream: UnixStream,
    state: State,
    peer_buf_alloc: u32,
    peer_fwd_cnt: Wrapping<u32>,
    /// Bytes sent to the guest.
    rx_cnt: Wrapping<u32>,
    /// Guest bytes handed to the host socket.
    fwd_cnt: Wrapping<u32>,
    last_fwd_cnt_sent: Wrapping<u32>,
    /// Guest bytes the host socket has not accepted yet (at most BUF_ALLOC).
    tx_buf: VecDeque<u8>,
    interest: EventSet,
    /// Queued for reading into a guest rx buffer.
    read_queued: bool,
    /// Reading paused until the guest grants credit.
    waiting_credit: bool,
    /// The host hung up (or errored): the fd is out of the event loop, which would otherwise
    /// report the hang-up forever; what is still buffered is drained without waiting for events.
    hung_up: bool,
    /// The host will send no more (read returned end of file).
    host_eof: bool,
    /// The guest will send no more; the host sees end of file once tx_buf is flushed.
    guest_eof: bool,
}

impl Connection {
    fn new(stream: UnixStream, state: State) -> Self {
        Connection {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: Wrapping(0),
            rx_cnt: Wrapping(0),
            fwd_cnt: Wrapping(0),
            last_fwd_cnt_sent: Wrapping(0),
            tx_buf: VecDeque::new(),
            interest: EventSet::empty(),
            read_queued: false,
            waiting_credit: false,
            hung_up: false,
            host_eof: false,
            guest_eof: false,
        }
    }

    /// How many bytes the guest can still take.
    fn peer_free(&self) -> u32 {
        let in_flight = (self.rx_cnt - self.peer_fwd_cnt).0;
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Write as much of tx_buf as the socket takes; pass the guest's end of file on once all is
    /// written.
    fn flush(&mut self) -> std::io::Result<()> {
        while !self.tx_buf.is_empty() {
            let (a, _) = self.tx_buf.as_slices();
            match self.stream.write(a) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt += Wrapping(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.guest_eof {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

enum RxItem {
    /// A control packet for connection `key` (credit fields filled in when sent).
    Control { key: Key, op: u16, flags: u32 },
    /// Read host data for `key` into the next rx buffer.
    Data(Key),
}

pub struct Muxer {
    guest_cid: u64,
    uds: PathBuf,
    listener: UnixListener,
    pending: HashMap<RawFd, (UnixStream, Vec<u8>)>,
    conns: HashMap<Key, Connection>,
    by_fd: HashMap<RawFd, Key>,
    rx: VecDeque<RxItem>,
    next_local_port: u32,
    fd_ops: Vec<FdOp>,
    closed: Vec<UnixStream>,
    dropped: LogBudget,
    violations: LogBudget,
}

impl Muxer {
    pub fn new(guest_cid: u64, uds: PathBuf, listener: UnixListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Ok(Muxer {
            guest_cid,
            uds,
            listener,
            pending: HashMap::new(),
            conns: HashMap::new(),
            by_fd: HashMap::new(),
            rx: VecDeque::new(),
            next_local_port: FIRST_LOCAL_PORT,
            fd_ops: Vec::new(),
            closed: Vec::new(),
            dropped: LogBudget::new(1),
            violations: LogBudget::new(4),
        })
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    pub fn take_fd_ops(&mut self) -> Vec<FdOp> {
        std::mem::take(&mut self.fd_ops)
    }

    pub fn has_rx(&self) -> bool {
        !self.rx.is_empty()
    }

    pub fn rx_backlog(&self) -> usize {
        self.rx.len()
    }

    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Packets dropped because the guest let the backlog fill.
    pub fn dropped_packets(&self) -> u64 {
        self.dropped.seen()
    }

    /// The driver reset the device: every connection ends (hosts see their sockets close) and
    /// nothing queued for the old driver survives.
    pub fn reset_all(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        self.rx.clear();
    }

    /// Queue a packet for the guest. When the guest has let the backlog fill (it is not
    /// taking packets), the packet is dropped: that only hurts the guest's own connections.
    fn push_rx(&mut self, item: RxItem) -> bool {
        if self.rx.len() >= MAX_RX_BACKLOG {
            if self.dropped.allow() {
                tracing::warn!("vsock: the guest is not taking packets; {} dropped so far", self.dropped.seen());
            }
            return false;
        }
        self.rx.push_back(item);
        true
    }

    fn control(&mut self, key: Key, op: u16, flags: u32) -> bool {
        self.push_rx(RxItem::Control { key, op, flags })
    }

    fn queue_read(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if c.read_queued || c.host_eof {
            return;
        }
        c.read_queued = true;
        if !self.push_rx(RxItem::Data(key)) {
            if let Some(c) = self.conns.get_mut(&key) {
                c.read_queued = false;
            }
        }
    }

    fn set_interest(&mut self, key: Key, want: EventSet) {
        if let Some(c) = self.conns.get_mut(&key) {
            if c.interest != want && !c.hung_up {
                c.interest = want;
                self.fd_ops.push(FdOp::Modify(c.stream.as_raw_fd(), want));
            }
        }
    }

    /// Watch for host data again, or, once the host hung up, keep draining without events.
    fn want_more_host_data(&mut self, key: Key) {
        let Some(c) = self.conns.get(&key) else { return };
        if c.hung_up {
            self.queue_read(key);
        } else {
            let want = c.interest | EventSet::IN;
            self.set_interest(key, want);
        }
    }

    fn remove(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            self.by_fd.remove(&c.stream.as_raw_fd());
            if c.hung_up {
                // Already out of the event loop.
                self.closed.push(c.stream);
            } else {
                self.close(c.stream);
            }
        }
    }

    fn reset(&mut self, key: Key) {
        self.remove(key);
        let _ = self.control(key, OP_RST, 0);
    }

    fn violation(&mut self, key: Key, what: &str) {
        if self.violations.allow() {
            tracing::warn!("vsock: guest port {} {what}; resetting ({} such so far)", key.1, self.violations.seen());
        }
        self.reset(key);
    }

    fn header(&self, key: Key, op: u16, flags: u32, len: u32) -> Header {
        let (buf_alloc, fwd_cnt) = match self.conns.get(&key) {
            Some(c) => (BUF_ALLOC, c.fwd_cnt.0),
            None => (0, 0),
        };
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// A packet the guest sent (tx queue). `payload` is exactly `hdr.len` bytes.
    pub fn on_guest_packet(&mut self, hdr: &Header, payload: &[u8]) {
        if hdr.src_cid != self.guest_cid || hdr.dst_cid != HOST_CID {
            tracing::trace!("vsock: dropping packet with cids {} -> {}", hdr.src_cid, hdr.dst_cid);
            return;
        }
        let key = (hdr.dst_port, hdr.src_port);
        if hdr.type_ != TYPE_STREAM {
            if hdr.op != OP_RST {
                self.control(key, OP_RST, 0);
            }
            return;
        }
        if hdr.op == OP_REQUEST {
            self.guest_connect(key, hdr);
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else {
            if hdr.op != OP_RST {
                self.control(key, OP_RST, 0);
            }
            return;
        };
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        match hdr.op {
            OP_RESPONSE => {
                if conn.state != State::Connecting {
                    self.violation(key, "answered a request nobody made");
                    return;
                }
                conn.state = State::Established;
                // A fresh socket's buffer always takes this short line.
                let line = format!("OK {}\n", key.0);
                if conn.stream.write_all(line.as_bytes()).is_err() {
                    self.reset(key);
                    return;
                }
                self.want_more_host_data(key);
            }
            OP_RW => {
                if conn.state != State::Established || conn.guest_eof {
                    self.violation(key, "sent data outside an open connection");
                    return;
                }
                if conn.tx_buf.len() + payload.len() > BUF_ALLOC as usize {
                    self.violation(key, "sent beyond its credit");
                    return;
                }
                conn.tx_buf.extend(payload);
                if conn.flush().is_err() {
                    self.reset(key);
                    return;
                }
                let backlog = !conn.tx_buf.is_empty();
                let credit_due = (conn.fwd_cnt - conn.last_fwd_cnt_sent).0 >= BUF_ALLOC / 2;
                let want = if backlog { conn.interest | EventSet::OUT } else { conn.interest };
                self.set_interest(key, want);
                if credit_due {
                    self.send_credit_update(key);
                }
            }
            OP_CREDIT_UPDATE => self.credit_changed(key),
            OP_CREDIT_REQUEST => self.send_credit_update(key),
            OP_SHUTDOWN => {
                let both = SHUTDOWN_RCV | SHUTDOWN_SEND;
                if hdr.flags & both == both {
                    if conn.tx_buf.is_empty() {
                        self.reset(key);
                    } else {
                        conn.state = State::Draining;
                        self.set_interest(key, EventSet::OUT);
                    }
                } else if hdr.flags & SHUTDOWN_SEND != 0 {
                    conn.guest_eof = true;
                    if conn.tx_buf.is_empty() {
                        let _ = conn.stream.shutdown(std::net::Shutdown::Write);
                    }
                }
            }
            OP_RST => self.remove(key),
            _ => self.violation(key, "sent an unknown operation"),
        }
    }

    fn send_credit_update(&mut self, key: Key) {
        if let Some(c) = self.conns.get_mut(&key) {
            c.last_fwd_cnt_sent = c.fwd_cnt;
            self.control(key, OP_CREDIT_UPDATE, 0);
        }
    }

    fn credit_changed(&mut self, key: Key) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        if c.waiting_credit && c.peer_free() > 0 {
            c.waiting_credit = false;
            self.want_more_host_data(key);
        }
    }

    fn guest_connect(&mut self, key: Key, hdr: &Header) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.control(key, OP_RST, 0);
            return;
        }
        let path = PathBuf::from(format!("{}_{}", self.uds.display(), key.0));
        let stream = match connect_nonblocking(&path) {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!("vsock: guest connect to host port {}: {}: {e}", key.0, path.display());
                self.control(key, OP_RST, 0);
                return;
            }
        };
        let fd = stream.as_raw_fd();
        let mut conn = Connection::new(stream, State::Established);
        conn.peer_buf_alloc = hdr.buf_alloc;
        conn.peer_fwd_cnt = Wrapping(hdr.fwd_cnt);
        conn.interest = EventSet::IN;
        self.conns.insert(key, conn);
        self.by_fd.insert(fd, key);
        self.fd_ops.push(FdOp::Add(fd, EventSet::IN));
        self.control(key, OP_RESPONSE, 0);
    }

    /// The next packet for the guest, if any, fitting a buffer with `room` payload bytes.
    /// Returns the header and payload.
    pub fn next_rx(&mut self, room: usize) -> Option<(Header, Vec<u8>)> {
        while let Some(item) = self.rx.pop_front() {
            match item {
                RxItem::Control { key, op, flags } => {
                    // A connection reset before its control packet left needs nothing more,
                    // except the RST itself.
                    if op != OP_RST && !self.conns.contains_key(&key) {
                        continue;
                    }
                    return Some((self.header(key, op, flags, 0), Vec::new()));
                }
                RxItem::Data(key) if room == 0 => {
                    // A buffer with no room past the header: data waits for a bigger one.
                    self.rx.push_front(RxItem::Data(key));
                    return None;
                }
                RxItem::Data(key) => {
                    if let Some(p) = self.read_host(key, room) {
                        return Some(p);
                    }
                }
            }
        }
        None
    }

    fn read_host(&mut self, key: Key, room: usize) -> Option<(Header, Vec<u8>)> {
        let conn = self.conns.get_mut(&key)?;
        conn.read_queued = false;
        if conn.state != State::Established || conn.host_eof {
            return None;
        }
        let credit = conn.peer_free() as usize;
        if credit == 0 {
            conn.waiting_credit = true;
            let want = conn.interest - EventSet::IN;
            self.set_interest(key, want);
            return Some((self.header(key, OP_CREDIT_REQUEST, 0, 0), Vec::new()));
        }
        let mut buf = vec![0u8; credit.min(room).min(MAX_PAYLOAD)];
        match conn.stream.read(&mut buf) {
            Ok(0) => {
                // The host will send no more. If it is gone altogether, so is the connection:
                // the guest's answering RST finds nothing, which is fine.
                conn.host_eof = true;
                if conn.hung_up {
                    let packet = self.header(key, OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND, 0);
                    self.remove(key);
                    return Some((packet, Vec::new()));
                }
                let want = conn.interest - EventSet::IN;
                self.set_interest(key, want);
                Some((self.header(key, OP_SHUTDOWN, SHUTDOWN_SEND, 0), Vec::new()))
            }
            Ok(n) => {
                conn.rx_cnt += Wrapping(n as u32);
                buf.truncate(n);
                self.want_more_host_data(key);
                Some((self.header(key, OP_RW, 0, n as u32), buf))
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                self.want_more_host_data(key);
                None
            }
            Err(_) => {
                self.reset(key);
                None
            }
        }
    }

    /// Something happened on `fd` (the listener, a half-open host socket or a connection).
    pub fn on_host_event(&mut self, fd: RawFd, events: EventSet) {
        if fd == self.listener.as_raw_fd() {
            self.accept();
        } else if self.pending.contains_key(&fd) {
            self.read_connect_line(fd);
        } else if let Some(&key) = self.by_fd.get(&fd) {
            self.connection_event(key, events);
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.pending.len() >= MAX_PENDING_HOST || stream.set_nonblocking(true).is_err() {
                        tracing::warn!("vsock: too many host connections waiting for CONNECT; refusing one");
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.pending.insert(fd, (stream, Vec::new()));
                    self.fd_ops.push(FdOp::Add(fd, EventSet::IN));
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn read_connect_line(&mut self, fd: RawFd) {
        enum Line {
            Wait,
            Drop,
            Done,
        }
        let Some((stream, line)) = self.pending.get_mut(&fd) else { return };
        let mut byte = [0u8; 1];
        // One byte at a time: whatever follows the line belongs to the connection.
        let outcome = loop {
            match stream.read(&mut byte) {
                Ok(0) => break Line::Drop,
                Ok(_) if byte[0] == b'\n' => break Line::Done,
                Ok(_) => {
                    line.push(byte[0]);
                    if line.len() >= CONNECT_LINE_MAX {
                        break Line::Drop;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break Line::Wait,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => break Line::Drop,
            }
        };
        match outcome {
            Line::Wait => {}
            Line::Drop => {
                let (stream, _) = self.pending.remove(&fd).expect("pending");
                self.close(stream);
            }
            Line::Done => {
                let (stream, line) = self.pending.remove(&fd).expect("pending");
                let port = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|l| l.strip_prefix("CONNECT "))
                    .and_then(|p| p.trim().parse::<u32>().ok());
                match port {
                    Some(port) => self.host_connect(stream, port),
                    None => self.close(stream),
                }
            }
        }
    }

    /// Stop watching `stream` and close it once the event loop has forgotten it (closing first
    /// would let a new socket reuse the number while the loop still maps it to the old one).
    fn close(&mut self, stream: UnixStream) {
        self.fd_ops.push(FdOp::Remove(stream.as_raw_fd()));
        self.closed.push(stream);
    }

    /// Drop sockets whose removal from the event loop has been applied.
    pub fn release_closed(&mut self) {
        self.closed.clear();
    }

    fn host_connect(&mut self, stream: UnixStream, guest_port: u32) {
        let fd = stream.as_raw_fd();
        if self.conns.len() >= MAX_CONNECTIONS {
            self.close(stream);
            return;
        }
        let mut local = self.next_local_port;
        while self.conns.contains_key(&(local, guest_port)) {
            local = local.wrapping_add(1).max(FIRST_LOCAL_PORT);
        }
        self.next_local_port = local.wrapping_add(1).max(FIRST_LOCAL_PORT);
        let key = (local, guest_port);
        let conn = Connection::new(stream, State::Connecting);
        self.conns.insert(key, conn);
        self.by_fd.insert(fd, key);
        // Only hang-ups matter until the guest answers.
        self.fd_ops.push(FdOp::Modify(fd, EventSet::empty()));
        if !self.control(key, OP_REQUEST, 0) {
            // The request could not be queued: the host learns at once (its socket closes).
            self.remove(key);
        }
    }

    fn connection_event(&mut self, key: Key, events: EventSet) {
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if events.contains(EventSet::OUT) {
            if conn.flush().is_err() {
                self.reset(key);
                return;
            }
            if conn.tx_buf.is_empty() {
                if conn.state == State::Draining {
                    self.reset(key);
                    return;
                }
                let want = conn.interest - EventSet::OUT;
                self.set_interest(key, want);
                self.send_credit_update(key);
            }
        }
        let Some(conn) = self.conns.get_mut(&key) else { return };
        if events.intersects(EventSet::HANG_UP | EventSet::ERROR) && !conn.hung_up {
            if conn.state == State::Connecting {
                self.reset(key);
                return;
            }
            // Hang-ups cannot be masked in epoll: leave the loop and drain without it.
            conn.hung_up = true;
            self.fd_ops.push(FdOp::Remove(conn.stream.as_raw_fd()));
            if conn.state == State::Draining {
                self.reset(key);
                return;
            }
            self.queue_read(key);
            return;
        }
        if events.intersects(EventSet::IN | EventSet::READ_HANG_UP) && conn.state == State::Established {
            let want = conn.interest - EventSet::IN;
            self.set_interest(key, want);
            self.queue_read(key);
        }
    }
}

/// Connect to a unix socket without blocking: a listener whose backlog is full refuses
/// (EAGAIN) instead of stalling the event loop.
fn connect_nonblocking(path: &std::path::Path) -> std::io::Result<UnixStream> {
    use nix::sys::socket::{connect, socket, AddressFamily, SockFlag, SockType, UnixAddr};
    let fd: OwnedFd =
        socket(AddressFamily::Unix, SockType::Stream, SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC, None)?;
    let addr = UnixAddr::new(path)?;
    connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    const CID: u64 = 3;

    /// A scratch directory for one test's sockets, removed when the test ends.
    struct Scratch(PathBuf);
    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn muxer(name: &str) -> (Muxer, PathBuf, Scratch) {
        let dir = std::env::temp_dir().join(format!("hull-muxer-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let uds = dir.join("v.sock");
        let listener = UnixListener::bind(&uds).unwrap();
        (Muxer::new(CID, uds.clone(), listener).unwrap(), uds, Scratch(dir))
    }

    fn guest(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
        Header {
            src_cid: CID,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            buf_alloc: 65536,
            ..Default::default()
        }
    }

    /// Deliver every readiness the muxer asked the loop to watch.
    fn pump(m: &mut Muxer) {
        for op in m.take_fd_ops() {
            if let FdOp::Add(fd, _) = op {
                m.on_host_event(fd, EventSet::IN);
            }
        }
        m.release_closed();
    }

    #[test]
    fn host_initiated_connection_carries_data_both_ways_and_closes() {
        let (mut m, uds, _scratch) = muxer("host");
        let mut host = UnixStream::connect(&uds).unwrap();
        host.write_all(b"CONNECT 5000\n").unwrap();
        m.on_host_event(m.listener_fd(), EventSet::IN);
        pump(&mut m);
        let (req, _) = m.next_rx(4096).expect("a REQUEST for the guest");
        assert_eq!((req.op, req.dst_port, req.dst_cid), (OP_REQUEST, 5000, CID));
        let local = req.src_port;

        m.on_guest_packet(&guest(OP_RESPONSE, 5000, local, 0), &[]);
        let mut line = [0u8; 64];
        let n = host.read(&mut line).unwrap();
        assert_eq!(std::str::from_utf8(&line[..n]).unwrap(), format!("OK {local}\n"));

        m.on_guest_packet(&guest(OP_RW, 5000, local, 2), b"hi");
        let mut two = [0u8; 2];
        host.read_exact(&mut two).unwrap();
        assert_eq!(&two, b"hi");

        host.write_all(b"yo").unwrap();
        let fd = host_side_fd(&m, local);
        m.on_host_event(fd, EventSet::IN);
        let (rw, data) = m.next_rx(4096).unwrap();
        assert_eq!((rw.op, data.as_slice()), (OP_RW, &b"yo"[..]));
        assert_eq!(rw.buf_alloc, BUF_ALLOC);

        drop(host);
        m.on_host_event(fd, EventSet::IN | EventSet::HANG_UP);
        let (shut, _) = m.next_rx(4096).unwrap();
        assert_eq!(shut.op, OP_SHUTDOWN);
        m.on_guest_packet(&guest(OP_RST, 5000, local, 0), &[]);
        assert_eq!(m.connection_count(), 0);
    }

    fn host_side_fd(m: &Muxer, local: u32) -> RawFd {
        *m.by_fd.iter().find(|(_, k)| k.0 == local).unwrap().0
    }

    #[test]
    fn guest_connections_reach_uds_port_or_are_reset() {
        let (mut m, uds, _scratch) = muxer("guest");
        m.on_guest_packet(&guest(OP_REQUEST, 40000, 7, 0), &[]);
        assert_eq!(m.next_rx(4096).unwrap().0.op, OP_RST);
        let service = UnixListener::bind(format!("{}_7", uds.display())).unwrap();
        m.on_guest_packet(&guest(OP_REQUEST, 40000, 7, 0), &[]);
        assert_eq!(m.next_rx(4096).unwrap().0.op, OP_RESPONSE);
        let (mut s, _) = service.accept().unwrap();
        m.on_guest_packet(&guest(OP_RW, 40000, 7, 3), b"abc");
        let mut b = [0u8; 3];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"abc");
        // A second REQUEST for the same pair is refused.
        m.on_guest_packet(&guest(OP_REQUEST, 40000, 7, 0), &[]);
        assert_eq!(m.next_rx(4096).unwrap().0.op, OP_RST);
    }

    #[test]
    fn packets_for_no_connection_are_reset_and_the_backlog_is_bounded() {
        let (mut m, _, _scratch) = muxer("flood");
        for i in 0..(MAX_RX_BACKLOG as u32 + 500) {
            m.on_guest_packet(&guest(OP_RW, 50000 + i, 9, 1), b"x");
        }
        assert_eq!(m.rx_backlog(), MAX_RX_BACKLOG);
        assert_eq!(m.dropped_packets(), 500);
        // Wrong CIDs are dropped without a reply.
        let mut h = guest(OP_REQUEST, 1, 2, 0);
        h.src_cid = 99;
        let before = m.rx_backlog();
        m.on_guest_packet(&h, &[]);
        assert_eq!(m.rx_backlog(), before);
    }

    #[test]
    fn a_bad_connect_line_is_dropped() {
        let (mut m, uds, _scratch) = muxer("line");
        let mut host = UnixStream::connect(&uds).unwrap();
        host.write_all(b"HELLO 5\n").unwrap();
        m.on_host_event(m.listener_fd(), EventSet::IN);
        pump(&mut m);
        assert!(!m.has_rx());
        let mut buf = [0u8; 8];
        assert_eq!(host.read(&mut buf).unwrap(), 0, "the host socket is closed");
    }
}
