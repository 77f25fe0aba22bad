//! The per-container state directory under `--root`.
//!
//! `<root>/<id>/` holds `state.json` (written atomically), `lock` (flock serialising CLI verbs on
//! one id), the supervisor's control socket, the VM's sockets, `console.log` and `share/`, the
//! directory virtio-fs exports.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("container id: {0}")]
    InvalidId(String),
    #[error("container with id {0:?} already exists")]
    Exists(String),
    #[error("container {0:?} does not exist")]
    NotFound(String),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("parsing {}: {source}", path.display())]
    Parse { path: PathBuf, source: serde_json::Error },
    #[error("locking container {id:?}: {source}")]
    Lock { id: String, source: std::io::Error },
}

type Result<T> = std::result::Result<T, StateError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

pub const DEFAULT_ROOT: &str = "/run/hull";
/// Largest `state.json` read (it is a few hundred bytes).
const MAX_STATE: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

/// What `state.json` holds: the runtime-spec state plus hull's own fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// The supervisor's pid: it lives exactly as long as the container and exits with its
    /// status, which is what podman/conmon need to wait on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// Start time of the supervisor (see [`crate::process::start_time`]), so a reused pid is
    /// not mistaken for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supervisor_start: Option<u64>,
    pub bundle: PathBuf,
    #[serde(default)]
    pub annotations: serde_json::Map<String, serde_json::Value>,
    /// RFC 3339 creation time.
    pub created: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<i32>,
    /// Redirects installed in a container network namespace, for clean-up after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<crate::network::Record>,
    /// The sandbox's host cgroup (below each hierarchy's root), for clean-up after a crash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
}

impl State {
    /// Is the supervisor recorded here still running? (A supervisor that died abruptly leaves
    /// a state that says `running`; the container is then stopped.) The pid alone could have
    /// been reused, so its start time must match too.
    pub fn supervisor_alive(&self) -> bool {
        let Some(pid) = self.pid else { return false };
        match (self.supervisor_start, crate::process::start_time(pid)) {
            (Some(recorded), Some(now)) => recorded == now && !crate::process::is_zombie(pid),
            _ => false,
        }
    }

    /// The container's status as the CLI reports it.
    pub fn effective_status(&self) -> Status {
        match self.status {
            Status::Stopped => Status::Stopped,
            _ if !self.supervisor_alive() => Status::Stopped,
            s => s,
        }
    }
}

/// Paths of one container's state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub dir: PathBuf,
}

impl StateDir {
    pub fn new(root: &Path, id: &str) -> Result<Self> {
        hull_protocol::validate_id(id).map_err(StateError::InvalidId)?;
        Ok(StateDir { dir: root.join(id) })
    }

    pub fn exists(&self) -> bool {
        self.dir.join("state.json").exists()
    }

    /// Create the directory for a new container; fails when the id is taken.
    pub fn create(&self) -> Result<()> {
        if let Some(parent) = self.dir.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => {
                let lock = self.dir.join("lock");
                File::create(&lock).map_err(io(&lock))?;
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(StateError::Exists(self.id())),
            Err(e) => Err(io(&self.dir)(e)),
        }
    }

    pub fn id(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn control_socket(&self) -> PathBuf {
        self.dir.join("control.sock")
    }
    /// The hybrid vsock socket the runtime dials. It lives in the VMM's jail directory, the
    /// only part of the state dir hull-vmm can see once jailed.
    pub fn vsock_socket(&self) -> PathBuf {
        self.vmm_jail().join("vsock.sock")
    }
    /// The sandbox's sockets, owned by its jail uid: all the jailed VMM and vsock backend
    /// may write. (hull-vmm makes it its root.)
    pub fn vmm_jail(&self) -> PathBuf {
        self.dir.join("vmm")
    }
    pub fn vhost_vsock_socket(&self) -> PathBuf {
        self.vmm_jail().join("vhost-vsock.sock")
    }
    pub fn virtiofsd_socket(&self) -> PathBuf {
        self.vmm_jail().join("virtiofsd.sock")
    }
    /// Where the root of jailed process `name` is built (an empty directory on the host).
    pub fn jail_root(&self, name: &str) -> PathBuf {
        self.dir.join("jail").join(name)
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    /// The directory virtiofsd exports (a read-only skeleton; see [`crate::share`]).
    pub fn share_dir(&self) -> PathBuf {
        self.dir.join("share")
    }
    /// The writable side of a propagating share, which only the host sees.
    pub fn share_rw_dir(&self) -> PathBuf {
        self.dir.join("share-rw")
    }

    pub fn read(&self) -> Result<State> {
        let path = self.state_file();
        let bytes = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .and_then(|mut f| {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(&mut (&mut f).take(MAX_STATE), &mut bytes).map(|_| bytes)
            })
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => StateError::NotFound(self.id()),
                _ => io(&path)(e),
            })?;
        serde_json::from_slice(&bytes).map_err(|source| StateError::Parse { path, source })
    }

    /// Replace `state.json` atomically (temp file + rename), so readers never see half a file.
    pub fn write(&self, state: &State) -> Result<()> {
        let tmp = self.dir.join(".state.json.tmp");
        let bytes = serde_json::to_vec_pretty(state).expect("a state serializes");
        let _ = fs::remove_file(&tmp);
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io(&tmp))?;
        file.write_all(&bytes).and_then(|()| file.sync_all()).map_err(io(&tmp))?;
        fs::rename(&tmp, self.state_file()).map_err(io(&self.state_file()))
    }

    /// Take the lock of an existing container; released when the returned file drops.
    pub fn lock_existing(&self) -> Result<File> {
        let lock = self.dir.join("lock");
        let file = OpenOptions::new().write(true).open(&lock).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StateError::NotFound(self.id()),
            _ => io(&lock)(e),
        })?;
        // SAFETY: flock on an fd we own; it blocks until the lock is ours.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(StateError::Lock { id: self.id(), source: std::io::Error::last_os_error() });
        }
        Ok(file)
    }

    pub fn remove(&self) -> Result<()> {
        match fs::remove_dir_all(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&self.dir)(e)),
        }
    }
}

/// Current time as RFC 3339 (UTC), without pulling a date crate in.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_and_read_back() {
        let root = std::env::temp_dir().join(format!("hull-state-test-{}", std::process::id()));
        let dir = StateDir::new(&root, "c1").unwrap();
        dir.create().unwrap();
        assert!(dir.create().unwrap_err().to_string().contains("already exists"));
        let state = State {
            oci_version: "1.2.0".into(),
            id: "c1".into(),
            status: Status::Created,
            pid: Some(42),
            supervisor_start: None,
            bundle: "/b".into(),
            annotations: Default::default(),
            created: now_rfc3339(),
            exit_status: None,
            network: None,
            cgroup: None,
        };
        dir.write(&state).unwrap();
        let back = dir.read().unwrap();
        assert_eq!(back.status, Status::Created);
        assert_eq!(back.pid, Some(42));
        let json: serde_json::Value = serde_json::from_slice(&fs::read(dir.state_file()).unwrap()).unwrap();
        assert_eq!(json["ociVersion"], "1.2.0");
        assert_eq!(json["status"], "created");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn bad_ids_are_refused() {
        assert!(StateDir::new(Path::new("/tmp"), "../etc").is_err());
    }

    #[test]
    fn rfc3339_shape() {
        let t = now_rfc3339();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20"));
    }
}
