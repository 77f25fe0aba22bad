//! Minimal AF_VSOCK stream sockets for the guest side.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, Backlog, Shutdown, SockFlag, SockType, VsockAddr};

pub struct Listener(OwnedFd);

impl Listener {
    pub fn bind(port: u32) -> io::Result<Self> {
        let fd = socket::socket(AddressFamily::Vsock, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
        socket::bind(fd.as_raw_fd(), &VsockAddr::new(libc::VMADDR_CID_ANY, port))?;
        socket::listen(&fd, Backlog::new(64)?)?;
        Ok(Listener(fd))
    }

    pub fn accept(&self) -> io::Result<Stream> {
        let fd = socket::accept4(self.0.as_raw_fd(), SockFlag::SOCK_CLOEXEC)?;
        // SAFETY: accept4 returned a new fd that nothing else owns.
        Ok(Stream(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }
}

pub struct Stream(OwnedFd);

impl Stream {
    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(Stream(self.0.try_clone()?))
    }

    pub fn shutdown_write(&self) {
        let _ = socket::shutdown(self.0.as_raw_fd(), Shutdown::Write);
    }

    /// End the connection both ways; a thread blocked reading a clone of it wakes up.
    pub fn shutdown_both(&self) {
        let _ = socket::shutdown(self.0.as_raw_fd(), Shutdown::Both);
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Ok(nix::unistd::read(self.0.as_fd(), buf)?)
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(nix::unistd::write(self.0.as_fd(), buf)?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
