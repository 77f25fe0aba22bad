//! vhost-device-vsock: the userspace vsock device for QEMU (these hosts have no
//! /dev/vhost-vsock). It serves the hybrid unix socket the host dials. It maps all of guest
//! memory and parses the guest's rings, so it runs jailed (see [`crate::jail`]): the sandbox's
//! uid, no capabilities, a root holding its binary and its sockets' directory, no network.

use std::path::Path;
use std::process::{Command, Stdio};

use super::{Result, SandboxError};
use crate::jail::JailSpec;
use crate::process::ChildProc;
use crate::state::StateDir;

pub fn spawn(binary: &Path, dir: &StateDir, guest_cid: u32, jail: &JailSpec) -> Result<ChildProc> {
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
    let mut jail = jail.clone();
    jail.root = dir.jail_root("vsock");
    jail.read_only.push(binary.to_path_buf());
    jail.apply(&mut cmd)?;
    Ok(ChildProc::spawn("vhost-device-vsock", &mut cmd)?)
}
