//! Forwarded TCP connections (CRI port-forward): the host opens one vsock connection per TCP
//! connection that reached the pod's loopback on its side and names the port
//! ([`hull_protocol::forward`]); the agent connects to that port on the loopback of the
//! sandbox network namespace, the one the pod's containers share, and relays bytes both ways.

use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use hull_protocol::forward::{self, ForwardReply, ForwardRequest};
use hull_protocol::network::SANDBOX_NETNS;
use hull_protocol::FORWARD_PORT;

use crate::log;
use crate::vsock::{Listener, Stream};

/// How long each connect to the sandbox's loopback may take: it is local, and both attempts
/// must fit well within the host's 10 s for an answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one direction may go on once the other has ended.
const LINGER: Duration = Duration::from_secs(1);

pub fn serve() -> io::Result<()> {
    let listener = Listener::bind(FORWARD_PORT)?;
    std::thread::Builder::new().name("forward-accept".into()).spawn(move || loop {
        match listener.accept() {
            Ok(conn) => {
                let _ = std::thread::Builder::new().name("forward".into()).spawn(move || {
                    if let Err(e) = relay(conn) {
                        log::error(&format!("forwarded connection: {e}"));
                    }
                });
            }
            Err(e) => {
                log::error(&format!("forward accept: {e}"));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    })?;
    Ok(())
}

fn relay(mut conn: Stream) -> io::Result<()> {
    let line = forward::read_line(&mut conn)?;
    let request: ForwardRequest = line.parse().map_err(io::Error::other)?;
    let tcp = match connect_in_sandbox(request.port) {
        Ok(tcp) => tcp,
        Err(e) => {
            let why = format!("port {}: {e}", request.port);
            conn.write_all(ForwardReply::refused(&why).to_string().as_bytes())?;
            return Ok(());
        }
    };
    conn.write_all(ForwardReply::Connected.to_string().as_bytes())?;
    let (tcp_in, conn_in) = (tcp.try_clone()?, conn.try_clone()?);
    let (done, ended) = std::sync::mpsc::channel();
    let up_done = done.clone();
    let up = std::thread::Builder::new().name("forward-up".into()).spawn({
        let tcp = tcp.try_clone()?;
        move || {
            let _ = io::copy(&mut { conn_in }, &mut &tcp);
            let _ = tcp.shutdown(std::net::Shutdown::Write);
            let _ = up_done.send(());
        }
    })?;
    let down = std::thread::Builder::new().name("forward-down".into()).spawn({
        let conn = conn.try_clone()?;
        move || {
            let mut conn = conn;
            let _ = io::copy(&mut &tcp_in, &mut conn);
            conn.shutdown_write();
            let _ = done.send(());
        }
    })?;
    // Once either direction has ended, the other gets a second, then the connection ends,
    // as containerd ends its own: vhost-device-vsock carries no half-close to the host, which
    // would otherwise wait for the end for ever.
    let _ = ended.recv();
    let _ = ended.recv_timeout(LINGER);
    conn.shutdown_both();
    let _ = tcp.shutdown(std::net::Shutdown::Both);
    let _ = up.join();
    let _ = down.join();
    Ok(())
}

/// Connect to `port` on the sandbox namespace's loopback, IPv4 first, as containerd dials
/// `localhost` in a runc pod's namespace. This thread enters the namespace for good: it only
/// serves this connection.
fn connect_in_sandbox(port: u16) -> io::Result<TcpStream> {
    let netns = std::fs::File::open(SANDBOX_NETNS)
        .map_err(|e| io::Error::new(e.kind(), format!("the sandbox has no network namespace ({e})")))?;
    nix::sched::setns(&netns, nix::sched::CloneFlags::CLONE_NEWNET)?;
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&v4, CONNECT_TIMEOUT).or_else(|e4| {
        TcpStream::connect_timeout(&SocketAddr::from((Ipv6Addr::LOCALHOST, port)), CONNECT_TIMEOUT).map_err(|_| e4)
    })
}
