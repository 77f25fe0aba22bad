//! CRI port-forward into a VM: containerd serves `kubectl port-forward` by dialing
//! `localhost:PORT` inside the pod's network namespace on the host, where no process of the
//! guest listens. This puts a listener on the namespace's loopback and an nftables `redirect`
//! of every TCP connection to a loopback address there onto it; each connection's original
//! port (`SO_ORIGINAL_DST`) is sent to the agent over vsock, which connects to that port on
//! the loopback of the sandbox's namespace in the guest ([`hull_protocol::forward`]).
//!
//! Nothing is exposed beyond the pod's namespace: the rule hooks locally made connections
//! only (`output`), and the listener is bound to loopback addresses there. The rules live in
//! that namespace and are removed when the pod stops (or go with the namespace, which
//! containerd removes with the pod; until then a stale table only makes such connections
//! fail).

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hull_protocol::forward::{self, ForwardReply, ForwardRequest};
use nix::sched::CloneFlags;
use nix::sys::socket::{getsockopt, sockopt};

/// The nftables table this module owns in a pod's namespace.
const TABLE: &str = "hull_port_forward";
/// Forwarded connections open at once; more are closed at once (the guest could hold every
/// one it is given open, and each costs the host two threads).
const MAX_CONNECTIONS: usize = 64;
/// How long the agent has to answer a forward request (it connects locally).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one direction may go on once the other has ended.
const LINGER: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("{what}: {source}")]
    Io { what: &'static str, source: io::Error },
    #[error("installing the nftables redirect (nft {}): {why}", TABLE)]
    Nft { why: String },
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> ForwardError {
    move |source| ForwardError::Io { what, source }
}

/// A running forward; dropping it stops it and removes its rules.
pub struct LocalhostForward {
    netns: File,
    stop: Arc<AtomicBool>,
    listeners: Vec<Arc<TcpListener>>,
    acceptors: Vec<JoinHandle<()>>,
}

impl LocalhostForward {
    /// Start forwarding loopback TCP connections in the namespace `netns` to the guest whose
    /// vsock backend listens on `vsock`.
    pub fn start(netns: &File, vsock: &Path) -> Result<LocalhostForward, ForwardError> {
        let netns = netns.try_clone().map_err(io_err("duplicating the namespace fd"))?;
        let listeners = in_netns(&netns, || {
            let v4 = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_err("listening on 127.0.0.1"))?;
            // A namespace without IPv6 on its loopback gets the IPv4 half only.
            let v6 = TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).ok();
            let port =
                |l: &TcpListener| l.local_addr().map(|a| a.port()).map_err(io_err("reading the listener's port"));
            let rules = ruleset(port(&v4)?, v6.as_ref().map(port).transpose()?);
            nft(&rules)?;
            Ok(std::iter::once(v4).chain(v6).map(Arc::new).collect::<Vec<_>>())
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let mut acceptors = Vec::new();
        for listener in &listeners {
            let (l, stopped, counted, path) = (listener.clone(), stop.clone(), open.clone(), vsock.to_path_buf());
            let spawned = std::thread::Builder::new()
                .name("port-forward".into())
                .spawn(move || accept_loop(&l, &stopped, &counted, &path));
            match spawned {
                Ok(handle) => acceptors.push(handle),
                Err(source) => {
                    let partial = LocalhostForward { netns, stop, listeners, acceptors };
                    drop(partial);
                    return Err(ForwardError::Io { what: "starting the port-forward thread", source });
                }
            }
        }
        Ok(LocalhostForward { netns, stop, listeners, acceptors })
    }
}

impl Drop for LocalhostForward {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for listener in &self.listeners {
            // Wakes the blocked accept(2) with EINVAL.
            let _ = nix::sys::socket::shutdown(listener.as_raw_fd(), nix::sys::socket::Shutdown::Read);
        }
        for acceptor in self.acceptors.drain(..) {
            let _ = acceptor.join();
        }
        let removed = in_netns(&self.netns, || nft(&format!("delete table inet {TABLE}\n")));
        if let Err(e) = removed {
            tracing::warn!("removing the port-forward rules: {e}");
        }
    }
}

/// Every TCP connection made in the namespace to a loopback address goes to our listener,
/// except those to the listener's own port (its original port is then that port).
fn ruleset(v4: u16, v6: Option<u16>) -> String {
    // One atomic batch that first removes a table a killed shim left (its redirect to a dead
    // port would come first): `table … {}` makes sure there is one to delete.
    let mut rules = format!(
        "table inet {TABLE} {{}}\ndelete table inet {TABLE}\ntable inet {TABLE} {{\n  chain localhost {{\n    type nat hook output priority -100; policy accept;\n    \
         ip daddr 127.0.0.0/8 tcp dport != {v4} redirect to :{v4}\n"
    );
    if let Some(v6) = v6 {
        rules += &format!("    ip6 daddr ::1 tcp dport != {v6} redirect to :{v6}\n");
    }
    rules += "  }\n}\n";
    rules
}

/// Apply `rules` with `nft -f -`, in the namespace of the calling thread (a child starts in
/// the namespaces of the thread that forks it).
fn nft(rules: &str) -> Result<(), ForwardError> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| ForwardError::Nft { why: format!("running nft: {e} (install nftables)") })?;
    let written = child.stdin.take().map(|mut stdin| stdin.write_all(rules.as_bytes()));
    let out = child.wait_with_output().map_err(|e| ForwardError::Nft { why: format!("waiting for nft: {e}") })?;
    if let Some(Err(e)) = written {
        return Err(ForwardError::Nft { why: format!("writing to nft: {e}") });
    }
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(ForwardError::Nft { why: format!("{}: {}", out.status, stderr.trim()) });
    }
    Ok(())
}

/// Run `f` on a thread that entered `netns`, so this process stays where it is.
fn in_netns<T: Send>(netns: &File, f: impl FnOnce() -> Result<T, ForwardError> + Send) -> Result<T, ForwardError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(netns.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| ForwardError::Io { what: "entering the pod's network namespace", source: e.into() })?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(ForwardError::Io { what: "port-forward set-up", source: io::Error::other("panicked") }))
    })
}

fn accept_loop(listener: &TcpListener, stop: &AtomicBool, open: &Arc<AtomicUsize>, vsock: &Path) {
    let mut backoff = ACCEPT_BACKOFF;
    loop {
        let accepted = listener.accept();
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // A lasting error (EMFILE) would otherwise log ten times a second.
                tracing::warn!("port-forward accept: {e} (next try in {backoff:?})");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = ACCEPT_BACKOFF;
        let Some(slot) = Slot::take(open) else {
            tracing::warn!("port-forward: {MAX_CONNECTIONS} connections already open; refusing a new one");
            reset(&tcp);
            continue;
        };
        let path = vsock.to_path_buf();
        let spawned = std::thread::Builder::new().name("port-forward-conn".into()).spawn(move || {
            let _slot = slot;
            match connect_guest(&tcp, &path) {
                Ok(guest) => relay(tcp, guest),
                Err(e) => {
                    tracing::info!("port-forward connection: {e}");
                    reset(&tcp);
                }
            }
        });
        if let Err(e) = spawned {
            tracing::warn!("port-forward: starting a connection thread: {e}");
        }
    }
}

/// First wait after an accept error; it doubles while errors go on.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One of the [`MAX_CONNECTIONS`], given back when dropped (a panic included).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Option<Slot> {
        open.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| (n < MAX_CONNECTIONS).then_some(n + 1))
            .ok()
            .map(|_| Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Close with a reset, not a clean end: containerd then reports an error for the forward,
/// where a clean close would look like a server that sent nothing.
fn reset(tcp: &TcpStream) {
    let _ = nix::sys::socket::setsockopt(tcp, sockopt::Linger, &libc::linger { l_onoff: 1, l_linger: 0 });
}

/// The port the connection was made to before the redirect.
fn original_port(tcp: &TcpStream) -> io::Result<u16> {
    let local = tcp.local_addr()?;
    let original = match local {
        SocketAddr::V4(_) => getsockopt(tcp, sockopt::OriginalDst).map(|a| u16::from_be(a.sin_port)),
        SocketAddr::V6(_) => getsockopt(tcp, sockopt::Ip6tOriginalDst).map(|a| u16::from_be(a.sin6_port)),
    };
    match original {
        Ok(port) => Ok(port),
        // Not redirected: made to the listener's own port.
        Err(nix::errno::Errno::ENOENT) => Ok(local.port()),
        Err(e) => Err(e.into()),
    }
}

/// Ask the agent to connect to the connection's original port in the guest; the guest has
/// [`REPLY_TIMEOUT`] in all to answer.
fn connect_guest(tcp: &TcpStream, vsock: &Path) -> io::Result<UnixStream> {
    let port = original_port(tcp)?;
    let deadline = Instant::now() + REPLY_TIMEOUT;
    let mut guest = crate::vsock::connect(vsock, hull_protocol::FORWARD_PORT, REPLY_TIMEOUT)?;
    guest.write_all(ForwardRequest { port }.to_string().as_bytes())?;
    let line = forward::read_line(&mut Deadline { stream: &guest, deadline })?;
    match line.parse::<ForwardReply>().map_err(io::Error::other)? {
        ForwardReply::Connected => {}
        ForwardReply::Refused(why) => {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("the guest refused: {why}")));
        }
    }
    guest.set_read_timeout(None)?;
    Ok(guest)
}

/// Reads from a stream until `deadline`, however the bytes trickle in.
struct Deadline<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl io::Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the guest did not answer in time"));
        }
        self.stream.set_read_timeout(Some(left))?;
        (&mut &*self.stream).read(buf)
    }
}

/// Copy bytes both ways. Once either direction has ended, the other gets [`LINGER`], then
/// the connection ends, as containerd ends its own: a guest that stops sending or reading
/// cannot hold the connection (and its slot) open.
fn relay(tcp: TcpStream, guest: UnixStream) {
    let clones =
        (|| Ok::<_, io::Error>((tcp.try_clone()?, tcp.try_clone()?, guest.try_clone()?, guest.try_clone()?)))();
    let Ok((tcp_in, tcp_out, guest_in, guest_out)) = clones else {
        reset(&tcp);
        return;
    };
    let (done, ended) = mpsc::channel();
    let up = std::thread::Builder::new().name("port-forward-up".into()).spawn(pump(tcp_in, guest_out, done.clone()));
    let down = std::thread::Builder::new().name("port-forward-down".into()).spawn(pump(guest_in, tcp_out, done));
    if up.is_ok() && down.is_ok() {
        let _ = ended.recv();
        let _ = ended.recv_timeout(LINGER);
    }
    // Wakes whichever copy still blocks.
    let _ = tcp.shutdown(Shutdown::Both);
    let _ = guest.shutdown(Shutdown::Both);
    for handle in [up, down].into_iter().flatten() {
        let _ = handle.join();
    }
}

/// Copy `from` to `to` until the end, pass the end on, and say so on `done`.
fn pump<R, W>(mut from: R, mut to: W, done: mpsc::Sender<()>) -> impl FnOnce() + Send
where
    R: Read + Send,
    W: Write + HalfClose + Send,
{
    move || {
        let _ = io::copy(&mut from, &mut to);
        to.shutdown_write();
        let _ = done.send(());
    }
}

trait HalfClose {
    fn shutdown_write(&self);
}

impl HalfClose for TcpStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

impl HalfClose for UnixStream {
    fn shutdown_write(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_spare_the_listener_and_cover_both_loopbacks() {
        let rules = ruleset(40000, Some(40001));
        assert!(rules.contains("type nat hook output"), "{rules}");
        assert!(rules.contains("ip daddr 127.0.0.0/8 tcp dport != 40000 redirect to :40000"), "{rules}");
        assert!(rules.contains("ip6 daddr ::1 tcp dport != 40001 redirect to :40001"), "{rules}");
        assert!(!ruleset(40000, None).contains("ip6"));
    }
}
