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

/// How long a connect to the sandbox's loopback may take (it is local: this is generous).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client's direction may go on once the server's has ended.
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
    let (mut tcp_in, mut conn_out) = (tcp.try_clone()?, conn.try_clone()?);
    let (done, upstream_done) = std::sync::mpsc::channel();
    let upstream = std::thread::Builder::new().name("forward-up".into()).spawn(move || {
        let _ = io::copy(&mut conn, &mut &tcp);
        let _ = tcp.shutdown(std::net::Shutdown::Write);
        let _ = done.send(());
    })?;
    let _ = io::copy(&mut tcp_in, &mut conn_out);
    conn_out.shutdown_write();
    // The server is done. As containerd does with its end, the other direction gets a second,
    // then the connection ends: vhost-device-vsock does not carry a half-close to the host,
    // which would otherwise wait for the end for ever.
    let _ = upstream_done.recv_timeout(LINGER);
    conn_out.shutdown_both();
    let _ = tcp_in.shutdown(std::net::Shutdown::Both);
    let _ = upstream.join();
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
