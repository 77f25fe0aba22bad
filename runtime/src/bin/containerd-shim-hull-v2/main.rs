//! `containerd-shim-hull-v2`: the containerd shim v2 for hull, one per sandbox VM.
//!
//! containerd runs the binary three ways:
//! - `start`: find or start the shim daemon for this container's sandbox and print its ttrpc
//!   address. Containers carrying a CRI sandbox id share their pod's daemon (and VM).
//! - (hidden) `serve`: the daemon. It holds the listening socket `start` bound, lives in a
//!   mount namespace of its own, and serves the Task API until containerd shuts it down.
//! - `delete`: clean up after a daemon that died, and report the task as killed.

mod events;
mod metrics;
mod mounts;
mod service;

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::{Message, MessageField};
use nix::sys::signal::{SigSet, Signal};

use hull::state::StateDir;
use service::{Control, Service, TaskService};

/// Where shim daemons keep their sockets (`<hash>.sock`) and sandbox dirs (`<hash>/`).
pub const SHIM_ROOT: &str = "/run/hull/shim";
/// CRI annotations that group a pod's containers into one sandbox.
const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The daemon's listening socket, passed by `start`.
const LISTENER_FD: i32 = 3;

/// The flags containerd passes (Go `flag` syntax: `-name value`, `-name=value`).
#[derive(Debug, Default)]
pub struct Args {
    pub namespace: String,
    pub address: String,
    pub publish_binary: String,
    pub id: String,
    pub bundle: Option<PathBuf>,
    pub debug: bool,
    pub action: String,
}

impl Args {
    pub fn parse(argv: impl IntoIterator<Item = String>) -> Result<Args> {
        let mut args = Args::default();
        let mut it = argv.into_iter();
        while let Some(arg) = it.next() {
            let Some(flag) = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-')) else {
                args.action = arg;
                continue;
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (flag, None),
            };
            if matches!(name, "debug" | "v" | "version") {
                match name {
                    "debug" => args.debug = inline.as_deref() != Some("false"),
                    _ => args.action = "version".into(),
                }
                continue;
            }
            let value = match inline {
                Some(v) => v,
                None => it.next().ok_or_else(|| anyhow!("flag -{name} needs a value"))?,
            };
            match name {
                "namespace" => args.namespace = value,
                "address" => args.address = value,
                "publish-binary" => args.publish_binary = value,
                "id" => args.id = value,
                "bundle" => args.bundle = Some(value.into()),
                // Flags of newer containerd versions that change nothing here.
                "socket" | "ttrpc-address" => {}
                other => bail!("unknown flag -{other}"),
            }
        }
        Ok(args)
    }

    fn bundle_dir(&self) -> Result<PathBuf> {
        match &self.bundle {
            Some(b) => Ok(b.clone()),
            None => std::env::current_dir().context("the bundle (working directory)"),
        }
    }
}

fn main() {
    // Sockets, sandbox dirs and logs are root's alone; hooks and virtiofsd get 022 back.
    // SAFETY: umask(2) only sets this process's file mode creation mask.
    unsafe { libc::umask(0o077) };
    std::process::exit(run());
}

/// Parse containerd's flags and do what it asks; returns the exit code.
fn run() -> i32 {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("containerd-shim-hull-v2: {e:#}");
            return 1;
        }
    };
    let result = match args.action.as_str() {
        "start" => start(&args),
        "delete" => delete(&args),
        "serve" => serve(&args),
        "version" => {
            println!("containerd-shim-hull-v2 {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        other => Err(anyhow!("unknown action {other:?} (containerd runs this shim with start or delete)")),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("containerd-shim-hull-v2: {e:#}");
            1
        }
    }
}

/// The sandbox a container belongs to: its pod's sandbox id, or itself.
fn sandbox_of(bundle: &Path, id: &str) -> String {
    let annotations = fs::read(bundle.join("config.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .map(|v| v["annotations"].clone())
        .unwrap_or_default();
    match (annotations[CRI_CONTAINER_TYPE].as_str(), annotations[CRI_SANDBOX_ID].as_str()) {
        (Some("container"), Some(sandbox)) if hull_protocol::validate_id(sandbox).is_ok() => sandbox.to_string(),
        _ => id.to_string(),
    }
}

/// A short, stable name for a sandbox of one containerd (its address) and namespace: CRI ids
/// are 64 characters, and socket paths must stay under 108 bytes.
fn sandbox_key(args: &Args, sandbox: &str) -> String {
    let input = format!("{}\0{}\0{}", args.address, args.namespace, sandbox);
    let fnv = |seed: u64| input.bytes().fold(seed, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    format!("{:016x}{:016x}", fnv(0xcbf29ce484222325), fnv(0x84222325cbf29ce4))
}

fn socket_path(key: &str) -> PathBuf {
    Path::new(SHIM_ROOT).join(format!("{key}.sock"))
}

fn is_serving(socket: &Path) -> bool {
    UnixStream::connect(socket).is_ok()
}

/// Where a daemon records its pid and start time, in its sandbox dir.
const PID_FILE: &str = "shim.pid";

/// Is the daemon that owns sandbox dir `dir` still running? Its pid file names it, with its
/// start time so a reused pid does not count; a zombie (containerd, its subreaper, has not
/// reaped it yet) is not running. Its socket is no proof either way.
fn daemon_alive(dir: &Path) -> bool {
    let Ok(text) = fs::read_to_string(dir.join(PID_FILE)) else { return false };
    let mut fields = text.split_whitespace().map(|f| f.parse::<u64>().ok());
    let (Some(pid), Some(start)) = (fields.next().flatten(), fields.next().flatten()) else { return false };
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).unwrap_or("X");
    hull::process::start_time(pid as i32) == Some(start) && !matches!(state, "Z" | "X")
}

fn start(args: &Args) -> Result<()> {
    let bundle = args.bundle_dir()?;
    hull_protocol::validate_id(&args.id).map_err(|e| anyhow!("-id: {e}"))?;
    let sandbox = sandbox_of(&bundle, &args.id);
    let key = sandbox_key(args, &sandbox);
    let socket = socket_path(&key);
    let address = format!("unix://{}", socket.display());

    if is_serving(&socket) {
        // The pod's daemon (or, for a repeated start, this container's own) is up: join it.
        fs::write(bundle.join("address"), &address).context("writing the bundle's address file")?;
        println!("{address}");
        return Ok(());
    }
    if sandbox != args.id {
        bail!("the shim of sandbox {sandbox} is not running");
    }
    let _ = fs::remove_file(&socket);
    // A daemon that exits removes SHIM_ROOT when it is empty; one retry covers that race.
    let bind = || {
        fs::create_dir_all(SHIM_ROOT)?;
        UnixListener::bind(&socket)
    };
    let listener = bind().or_else(|_| bind()).with_context(|| format!("binding {}", socket.display()))?;

    let listen_fd = listener.as_raw_fd();
    let mut cmd = Command::new(std::env::current_exe().context("locating the shim binary")?);
    // The daemon gets containerd's flags back, parsed, so a value that happens to read "start"
    // (an id, a namespace) is never mistaken for the action.
    cmd.args([
        "-namespace",
        &args.namespace,
        "-address",
        &args.address,
        "-publish-binary",
        &args.publish_binary,
        "-id",
        &args.id,
    ])
    .arg("-bundle")
    .arg(&bundle);
    if args.debug {
        cmd.arg("-debug");
    }
    cmd.arg("serve").current_dir(&bundle).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    hull::process::inherit_fds(&mut cmd, vec![(listen_fd, LISTENER_FD)]);
    hull::process::new_session(&mut cmd);
    let child = cmd.spawn().context("starting the shim daemon")?;
    tracing::debug!(pid = child.id(), "shim daemon started");
    fs::write(bundle.join("address"), &address).context("writing the bundle's address file")?;
    println!("{address}");
    Ok(())
}

/// Clean up after a daemon that is gone: containerd calls this when a shim died or failed to
/// start, and expects the task's end on stdout.
fn delete(args: &Args) -> Result<()> {
    let bundle = args.bundle_dir()?;
    // The daemon mounted only in its own namespace, but an older or foreign one may not have.
    hull::share::unmount(&bundle.join("rootfs"));
    let sandbox = sandbox_of(&bundle, &args.id);
    let key = sandbox_key(args, &sandbox);
    let socket = socket_path(&key);
    let dir = Path::new(SHIM_ROOT).join(&key);
    // containerd calls this as soon as the connection drops: a killed daemon may still be
    // exiting, and one that was shut down is still cleaning up after itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while daemon_alive(&dir) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if daemon_alive(&dir) {
        // containerd reads stderr as warnings and logs them.
        eprintln!("shim of sandbox {sandbox} is still running: leaving its state to it");
    } else {
        let _ = fs::remove_file(&socket);
        remove_sandbox_dir(&dir)?;
        let _ = fs::remove_dir(SHIM_ROOT);
    }
    let response = DeleteResponse {
        pid: 0,
        exit_status: 128 + libc::SIGKILL as u32,
        exited_at: MessageField::some(events::timestamp(SystemTime::now())),
        ..Default::default()
    };
    std::io::stdout().write_all(&response.write_to_bytes()?)?;
    Ok(())
}

/// Remove a sandbox dir, refusing to descend into anything still mounted under it (a
/// container's root filesystem would be deleted with it).
fn remove_sandbox_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let prefix = format!("{}/", dir.display());
    if let Some(line) = mountinfo.lines().find(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&prefix))) {
        bail!(
            "{} still has a mount below it ({}); not removing it",
            dir.display(),
            line.split(' ').nth(4).unwrap_or("")
        );
    }
    fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))
}

fn init_logging(args: &Args) {
    let level = if args.debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("HULL_LOG").unwrap_or_else(|_| level.into());
    // containerd reads the `log` FIFO in the bundle and copies it into its own log.
    let file = match std::env::var_os("HULL_SHIM_LOG") {
        Some(path) => OpenOptions::new().create(true).append(true).open(path).ok(),
        None => OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open("log").ok().inspect(|f| {
            // SAFETY: F_SETFL on an fd we own.
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
        }),
    };
    if let Some(file) = file {
        let _ =
            tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_writer(Mutex::new(file)).try_init();
    }
}

fn serve(args: &Args) -> Result<()> {
    // The listening socket must not leak into the VMM and daemons we start: a dead shim's
    // socket would still accept connections while they wind down.
    // SAFETY: F_SETFD on the fd `start` passed us.
    if unsafe { libc::fcntl(LISTENER_FD, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        bail!("the listening socket (fd {LISTENER_FD}) is missing: run this shim through containerd");
    }
    // While this is the only thread: a mount namespace of our own.
    mounts::enter_private_namespace()?;
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    signals.thread_block()?;
    init_logging(args);

    let bundle = args.bundle_dir()?;
    let sandbox = sandbox_of(&bundle, &args.id);
    let key = sandbox_key(args, &sandbox);
    let dir = StateDir::new(Path::new(SHIM_ROOT), &key)?;
    remove_sandbox_dir(&dir.dir)?;
    dir.create()?;
    let me = std::process::id();
    let started = hull::process::start_time(me as i32).unwrap_or(0);
    fs::write(dir.dir.join(PID_FILE), format!("{me} {started}\n"))?;
    hull::share::make_propagating(&dir.share_rw_dir(), &dir.share_dir())?;
    tracing::info!(sandbox, dir = %dir.dir.display(), "shim serving");

    let (control_tx, control_rx) = mpsc::channel();
    let events = events::Publisher::start(std::env::var("TTRPC_ADDRESS").unwrap_or_default(), args.namespace.clone())?;
    let service = Service::new(dir.clone(), events, control_tx.clone());
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        if let Ok(sig) = signals.wait() {
            tracing::info!(?sig, "shutting down on signal");
            let _ = control_tx.send(Control::Exit);
        }
    })?;

    let task = containerd_shim_protos::create_task(std::sync::Arc::new(TaskService(service.clone())));
    // `start` put our listening socket on LISTENER_FD; the server owns it from here.
    let mut server = ttrpc::Server::new().add_listener(LISTENER_FD)?.register_service(task);
    server.start().map_err(|e| anyhow!("serving ttrpc: {e}"))?;

    for msg in control_rx {
        match msg {
            Control::Run(job) => job(),
            Control::Exit => break,
        }
    }
    // Let the reply to Shutdown reach containerd before the socket goes.
    std::thread::sleep(Duration::from_millis(20));
    service.teardown();
    hull::share::unmount(&dir.share_dir());
    hull::share::unmount(&dir.share_rw_dir());
    let _ = fs::remove_file(socket_path(&key));
    if let Err(e) = remove_sandbox_dir(&dir.dir) {
        tracing::warn!("{e:#}");
    }
    // Only succeeds when no other sandbox is left.
    let _ = fs::remove_dir(SHIM_ROOT);
    tracing::info!("shim exiting");
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn parses_containerd_flags() {
        let a = Args::parse(argv(
            "-namespace k8s.io -address /run/c.sock -publish-binary /usr/bin/containerd -id abc -debug start",
        ))
        .unwrap();
        assert_eq!((a.namespace.as_str(), a.address.as_str(), a.id.as_str()), ("k8s.io", "/run/c.sock", "abc"));
        assert!(a.debug);
        assert_eq!(a.action, "start");
        let a = Args::parse(argv("--id=x -bundle /b delete")).unwrap();
        assert_eq!(a.bundle.as_deref(), Some(Path::new("/b")));
        assert_eq!(a.action, "delete");
        assert!(Args::parse(argv("-frobnicate 1 start")).unwrap_err().to_string().contains("frobnicate"));
        assert!(Args::parse(argv("-id")).is_err());
    }

    #[test]
    fn sandbox_keys_are_short_and_distinct() {
        let a = Args {
            address: "/run/containerd/containerd.sock".into(),
            namespace: "default".into(),
            ..Default::default()
        };
        let k1 = sandbox_key(&a, &"f".repeat(64));
        let k2 = sandbox_key(&a, &"e".repeat(64));
        assert_eq!(k1.len(), 32);
        assert_ne!(k1, k2);
        assert!(socket_path(&k1).as_os_str().len() < 100);
        let b = Args { namespace: "k8s.io".into(), ..a };
        assert_ne!(sandbox_key(&b, &"f".repeat(64)), k1);
    }

    #[test]
    fn pod_members_find_their_sandbox() {
        let dir = std::env::temp_dir().join(format!("hull-shim-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let write = |v: serde_json::Value| fs::write(dir.join("config.json"), v.to_string()).unwrap();
        write(serde_json::json!({"annotations": {CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "pod1"}}));
        assert_eq!(sandbox_of(&dir, "c1"), "pod1");
        write(serde_json::json!({"annotations": {CRI_CONTAINER_TYPE: "sandbox", CRI_SANDBOX_ID: "pod1"}}));
        assert_eq!(sandbox_of(&dir, "pod1"), "pod1");
        write(serde_json::json!({"annotations": {CRI_CONTAINER_TYPE: "container", CRI_SANDBOX_ID: "../x"}}));
        assert_eq!(sandbox_of(&dir, "c1"), "c1", "an id that is not a valid path component is ignored");
        fs::remove_dir_all(&dir).unwrap();
    }
}
