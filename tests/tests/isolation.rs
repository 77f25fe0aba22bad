//! What the host side of a sandbox may touch and who may touch it: modes of the state, the
//! control socket's peer check.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::process::Command;

use hull_tests::{text, Env};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

/// State dirs 0700, files 0600, sockets writable by their owner only: nothing of a sandbox
/// is readable or reachable by another user, whatever umask the caller had.
#[test]
fn a_sandboxs_state_is_roots_alone() {
    let env = Env::new("modes");
    let b = env.bundle("b", &["sleep", "300"]);
    // Its stdio is kept by the supervisor, so files rather than pipes.
    let err = env.dir.join("create.err");
    let status = env
        .hull()
        .args(["create", "--bundle", b.path(), "c1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .pre_exec_umask(0)
        .status()
        .unwrap();
    assert!(status.success(), "create: {}", std::fs::read_to_string(&err).unwrap_or_default());
    let dir = env.root.join("c1");
    assert_eq!(mode(&env.root), 0o700, "{}", env.root.display());
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let mut seen = 0;
    for entry in walk(&dir) {
        let meta = std::fs::symlink_metadata(&entry).unwrap();
        let m = meta.permissions().mode() & 0o7777;
        let kind = meta.file_type();
        if kind.is_dir() {
            assert_eq!(m & 0o077, 0, "{} is {m:o}", entry.display());
        } else if kind.is_socket() {
            assert_eq!(m & 0o022, 0, "socket {} is {m:o}: others could connect", entry.display());
        } else {
            assert_eq!(m & 0o077, 0, "{} is {m:o}", entry.display());
        }
        seen += 1;
    }
    assert!(seen >= 6, "only {seen} entries under {}", dir.display());
    let out = env.hull_out(&["delete", "--force", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

/// The control socket answers root and its own user only, even when its modes are loosened.
#[test]
fn the_control_socket_refuses_other_users() {
    let env = Env::new("peercred");
    let b = env.bundle("b", &["sleep", "300"]);
    let out = env.hull_detached(&["create", "--bundle", b.path(), "c1"]);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let socket = env.root.join("c1/control.sock");
    for dir in [env.dir.as_path(), env.root.as_path(), &env.root.join("c1")] {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = "import socket,sys\n\
                  s=socket.socket(socket.AF_UNIX)\n\
                  s.connect(sys.argv[1])\n\
                  s.sendall(b'{\"op\":\"destroy\"}\\n')\n\
                  print(s.recv(4096).decode())";
    let out = Command::new("python3").args(["-c", script]).arg(&socket).uid(65534).gid(65534).output().unwrap();
    let reply = text(&out.stdout);
    assert!(reply.contains("uid 65534 may not control this container"), "{reply}{}", text(&out.stderr));
    let state: serde_json::Value = serde_json::from_slice(&env.hull_out(&["state", "c1"]).stdout).unwrap();
    assert_eq!(state["status"], "created", "another user's request was carried out");
    let out = env.hull_out(&["delete", "c1"]);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    env.assert_clean();
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        found.push(path.clone());
        if std::fs::symlink_metadata(&path).map(|m| m.is_dir()).unwrap_or(false) {
            found.extend(walk(&path));
        }
    }
    found
}

trait UmaskExt {
    fn pre_exec_umask(&mut self, mask: u32) -> &mut Self;
}

impl UmaskExt for Command {
    /// Run with the caller's umask set to `mask` (a careless caller's 0).
    fn pre_exec_umask(&mut self, mask: u32) -> &mut Self {
        // SAFETY: umask(2) between fork and exec is async-signal-safe and touches no memory.
        unsafe {
            self.pre_exec(move || {
                libc::umask(mask as libc::mode_t);
                Ok(())
            })
        }
    }
}
