//! vhost-device-vsock: the userspace vsock device for QEMU (these hosts have no
//! /dev/vhost-vsock). It serves the hybrid unix socket the host dials.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::Result;

use crate::process::ChildProc;
use crate::state::StateDir;

pub fn spawn(binary: &Path, dir: &StateDir, guest_cid: u32) -> Result<ChildProc> {
    let log = std::fs::File::create(dir.dir.join("vsock.log"))?;
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
    ChildProc::spawn("vhost-device-vsock", &mut cmd)
}
