//! vhost-device-vsock: the userspace vsock device for QEMU (these hosts have no
//! /dev/vhost-vsock). It serves the hybrid unix socket the host dials.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{Result, SandboxError};
use crate::process::ChildProc;
use crate::state::StateDir;

pub fn spawn(binary: &Path, dir: &StateDir, guest_cid: u32) -> Result<ChildProc> {
    let log_path = dir.dir.join("vsock.log");
    let log = std::fs::File::create(&log_path).map_err(|source| SandboxError::Io { path: log_path, source })?;
    let mut cmd = Command::new(binary);
    cmd.arg("--vm")
        .arg(format!(
            "guest-cid={guest_cid},socket={},uds-path={}",
            dir.vhost_vsock_socket().display(),
            dir.vsock_socket().display()
        ))
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    Ok(ChildProc::spawn("vhost-device-vsock", &mut cmd)?)
}
