//! One function per verb.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command as Process;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use super::{Cli, Command, LogFormat};
use crate::bundle::Bundle;
use crate::sandbox::SandboxConfig;
use crate::state::{StateDir, Status};
use crate::supervisor::control::{self, ControlRequest};
use crate::supervisor::{self, Supervisor};
use crate::terminal::Console;

const CONTROL_TIMEOUT: Duration = Duration::from_secs(90);

pub fn dispatch(cli: &Cli) -> Result<i32> {
    let config = SandboxConfig { backend: cli.backend, ..SandboxConfig::default() };
    if cli.rootless == "true" {
        bail!("--rootless true: hull needs root (KVM, tap devices and mounts)");
    }
    match &cli.command {
        Command::Run { bundle, detach: false, pid_file, console_socket, keep, compat, id, .. } => {
            compat.check()?;
            let console = console_socket.clone().map(Console::Socket).unwrap_or(Console::Own);
            run_foreground(cli, bundle, pid_file.as_deref(), id, &config, &console, *keep)
        }
        Command::Run { bundle, detach: true, pid_file, console_socket, compat, id, .. } => {
            compat.check()?;
            create(cli, bundle, pid_file.as_deref(), console_socket.as_deref(), id, true)?;
            Ok(0)
        }
        Command::Create { bundle, pid_file, console_socket, compat, id } => {
            compat.check()?;
            create(cli, bundle, pid_file.as_deref(), console_socket.as_deref(), id, false)?;
            Ok(0)
        }
        Command::Checkpoint { .. } | Command::Restore { .. } => {
            bail!("checkpoint/restore is not supported: a container's memory lives inside its VM")
        }
        Command::Start { id } => {
            let dir = StateDir::new(&cli.root, id)?;
            let _lock = dir.lock_existing()?;
            let state = dir.read()?;
            match supervisor::effective_status(&state) {
                Status::Created => {}
                other => bail!("cannot start a container that is {}", other.as_str()),
            }
            control::request(&dir.control_socket(), &ControlRequest::Start, CONTROL_TIMEOUT)?;
            Ok(0)
        }
        Command::State { id } => {
            let dir = StateDir::new(&cli.root, id)?;
            let mut state = dir.read()?;
            state.status = supervisor::effective_status(&state);
            if state.status == Status::Stopped {
                state.pid = None;
            }
            super::emit(&serde_json::to_string_pretty(&state)?);
            Ok(0)
        }
        Command::Kill { all, id, signal } => {
            let signal = super::signal::parse(signal)?;
            let dir = StateDir::new(&cli.root, id)?;
            let state = dir.read()?;
            match supervisor::effective_status(&state) {
                Status::Created | Status::Running | Status::Paused => {}
                other => bail!("cannot kill a container that is {}", other.as_str()),
            }
            control::request(&dir.control_socket(), &ControlRequest::Kill { signal, all: *all, exec_id: None }, CONTROL_TIMEOUT)?;
            Ok(0)
        }
        Command::Delete { force, id } => {
            delete(cli, id, *force)?;
            Ok(0)
        }
        Command::Spec { bundle } => {
            let path = bundle.join("config.json");
            if path.exists() {
                bail!("{} already exists; remove it first", path.display());
            }
            std::fs::write(&path, serde_json::to_string_pretty(&crate::spec::default_spec())?)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(0)
        }
        Command::Exec(args) => super::exec::exec(cli, args),
        Command::Pause { id } => simple_request(cli, id, ControlRequest::Pause, &[Status::Running]),
        Command::Resume { id } => simple_request(cli, id, ControlRequest::Resume, &[Status::Paused]),
        Command::Ps { format, id } => super::inspect::ps(cli, id, *format),
        Command::List { format, quiet } => super::inspect::list(cli, *format, *quiet),
        Command::Features => super::inspect::features(),
        Command::Events { stats, interval, id } => super::resources::events(cli, id, *stats, *interval),
        Command::Update(args) => super::resources::update(cli, args),
        Command::Supervise { bundle, ready_fd, console_socket, id } => {
            let console = console_socket.clone().map(Console::Socket).unwrap_or(Console::None);
            Ok(supervise(cli, bundle, *ready_fd, id, &config, &console))
        }
    }
}

/// Send `req` to the supervisor of `id`, which must be in one of `allowed`.
fn simple_request(cli: &Cli, id: &str, req: ControlRequest, allowed: &[Status]) -> Result<i32> {
    let dir = StateDir::new(&cli.root, id)?;
    let _lock = dir.lock_existing()?;
    let status = supervisor::effective_status(&dir.read()?);
    if !allowed.contains(&status) {
        bail!("container {id} is {}", status.as_str());
    }
    control::request(&dir.control_socket(), &req, CONTROL_TIMEOUT)?;
    Ok(0)
}

/// `run` without `-d`: this process is the supervisor, relaying its own stdio.
fn run_foreground(
    cli: &Cli,
    bundle: &Path,
    pid_file: Option<&Path>,
    id: &str,
    config: &SandboxConfig,
    console: &Console,
    keep: bool,
) -> Result<i32> {
    let bundle = Bundle::load(bundle)?;
    bundle.require_process()?;
    let dir = StateDir::new(&cli.root, id)?;
    dir.create()?;
    let result = (|| {
        let signals = Supervisor::block_forwarded_signals()?;
        let mut sup = Supervisor::create(dir.clone(), &bundle, config, console, signals)?;
        if let Some(path) = pid_file {
            write_pid_file(path, std::process::id())?;
        }
        if let Err(e) = sup.start() {
            drop(sup);
            return Err(e);
        }
        Ok(sup.serve())
    })();
    // runc's `run` removes the container once it has exited, unless asked to keep it.
    if keep {
        return result;
    }
    if let Ok(state) = dir.read() {
        run_poststop(&state);
    }
    dir.remove()?;
    result
}

/// `create` (and `run -d`): start a detached supervisor and wait until it reports the
/// container created, or why not.
fn create(
    cli: &Cli,
    bundle_path: &Path,
    pid_file: Option<&Path>,
    console_socket: Option<&Path>,
    id: &str,
    start: bool,
) -> Result<()> {
    let bundle = Bundle::load(bundle_path)?;
    if start {
        bundle.require_process()?;
    }
    let terminal = bundle.spec.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
    match (terminal, console_socket) {
        (true, None) => bail!("process.terminal is true: a detached container needs --console-socket to hand the terminal to"),
        (false, Some(_)) => bail!("--console-socket needs a terminal, but process.terminal is false"),
        _ => {}
    }
    let dir = StateDir::new(&cli.root, id)?;
    dir.create()?;
    let result = spawn_supervisor(cli, &bundle, &dir, console_socket);
    let pid = match result {
        Ok(pid) => pid,
        Err(e) => {
            dir.remove()?;
            return Err(e);
        }
    };
    let finish = || -> Result<()> {
        if let Some(path) = pid_file {
            write_pid_file(path, pid)?;
        }
        if start {
            control::request(&dir.control_socket(), &ControlRequest::Start, CONTROL_TIMEOUT)?;
        }
        Ok(())
    };
    if let Err(e) = finish() {
        // Leave nothing running behind a failed verb, as runc does.
        if let Ok(state) = dir.read() {
            let _ = destroy(&dir, &state);
        }
        dir.remove()?;
        return Err(e);
    }
    Ok(())
}

fn spawn_supervisor(cli: &Cli, bundle: &Bundle, dir: &StateDir, console_socket: Option<&Path>) -> Result<u32> {
    let mut cmd = Process::new(supervisor::self_exe()?);
    global_args(cli, &mut cmd);
    cmd.arg("supervise").arg("--bundle").arg(&bundle.dir).arg("--ready-fd").arg("3");
    if let Some(socket) = console_socket {
        cmd.arg("--console-socket").arg(socket);
    }
    cmd.arg(dir.id());
    spawn_detached(cmd, dir.dir.join("supervisor.log"))
}

/// The global flags of this invocation, for a re-executed `hull`.
pub(super) fn global_args(cli: &Cli, cmd: &mut Process) {
    cmd.arg("--root").arg(&cli.root);
    if let Some(log) = &cli.log {
        cmd.arg("--log").arg(log);
    }
    if cli.log_format == LogFormat::Json {
        cmd.args(["--log-format", "json"]);
    }
    if cli.debug {
        cmd.arg("--debug");
    }
    cmd.arg("--backend").arg(match cli.backend {
        crate::hypervisor::BackendKind::Auto => "auto",
        crate::hypervisor::BackendKind::Qemu => "qemu",
        crate::hypervisor::BackendKind::HullVmm => "hull-vmm",
    });
}

/// Start `cmd` in a new session with a readiness pipe on its fd 3, and wait until it writes
/// "ok\n" (returns its pid) or an error (returned as ours) and closes the pipe.
pub(super) fn spawn_detached(mut cmd: Process, log_hint: std::path::PathBuf) -> Result<u32> {
    let (ready_r, ready_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let ready_fd = ready_w.as_raw_fd();
    // SAFETY: dup2 and setsid are async-signal-safe; ready_fd stays open in the parent until
    // spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec set: clear it explicitly then.
            let ok = if ready_fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) == 0 } else { libc::dup2(ready_fd, 3) >= 0 };
            if !ok || libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting a detached hull process")?;
    drop(ready_w);
    let mut report = String::new();
    File::from(ready_r).take(64 * 1024).read_to_string(&mut report)?;
    if report == "ok\n" {
        return Ok(child.id());
    }
    // The supervisor failed; it cleans up its sandbox before exiting. Reap it.
    let mut child = child;
    let _ = child.wait();
    if report.is_empty() {
        bail!("detached hull process exited before reporting (see {})", log_hint.display());
    }
    Err(anyhow!(report.trim_end().to_string()))
}

/// Take the readiness pipe a detached hull process was given (see [`spawn_detached`]).
pub(super) fn take_ready_fd(ready_fd: i32) -> File {
    // SAFETY: our parent placed the write end of its pipe at this fd for us alone.
    let ready = File::from(unsafe { OwnedFd::from_raw_fd(ready_fd) });
    // Processes we start must not inherit it, or our parent would never see EOF.
    let _ = nix::fcntl::fcntl(&ready, nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC));
    ready
}

/// The detached supervisor: report creation on `ready_fd`, then serve until the container
/// exits, and exit with its status.
fn supervise(cli: &Cli, bundle: &Path, ready_fd: i32, id: &str, config: &SandboxConfig, console: &Console) -> i32 {
    let mut ready = take_ready_fd(ready_fd);
    let dir = match StateDir::new(&cli.root, id) {
        Ok(d) => d,
        Err(e) => {
            let _ = write!(ready, "{e:#}");
            return 1;
        }
    };
    let created = Supervisor::block_forwarded_signals()
        .and_then(|signals| Supervisor::create(dir.clone(), &Bundle::load(bundle)?, config, console, signals));
    match created {
        Ok(sup) => {
            let _ = ready.write_all(b"ok\n");
            drop(ready);
            sup.serve()
        }
        Err(e) => {
            tracing::error!("{e:#}");
            let _ = write!(ready, "{e:#}");
            1
        }
    }
}

fn delete(cli: &Cli, id: &str, force: bool) -> Result<()> {
    let dir = StateDir::new(&cli.root, id)?;
    let _lock = dir.lock_existing()?;
    let state = dir.read()?;
    match supervisor::effective_status(&state) {
        Status::Stopped => {}
        Status::Creating => bail!("container {id} is still being created; try again once `create` has returned"),
        Status::Created => destroy(&dir, &state)?,
        _ if force => destroy(&dir, &state)?,
        status => bail!("cannot delete container {id} that is {}; stop it first or use --force", status.as_str()),
    }
    // A supervisor that died without recording the exit could not undo its network set-up.
    if state.status != Status::Stopped {
        if let Some(record) = &state.network {
            if let Err(e) = crate::network::clean_up(record) {
                tracing::warn!("cleaning up the network of {id}: {e:#}");
            }
        }
    }
    run_poststop(&state);
    dir.remove()
}

/// poststop hooks, from the bundle's config (failures are logged: runtime-spec).
fn run_poststop(state: &crate::state::State) {
    let config = state.bundle.join("config.json");
    let hooks = std::fs::read(&config)
        .ok()
        .and_then(|b| serde_json::from_slice::<oci_spec::runtime::Spec>(&b).ok())
        .and_then(|s| s.hooks().clone());
    let mut stopped = state.clone();
    stopped.status = Status::Stopped;
    if let Err(e) = crate::hooks::run(hooks.as_ref(), crate::hooks::Point::Poststop, &stopped) {
        tracing::warn!("{e:#}");
    }
}

/// Tell the supervisor to stop the container and its VM, and wait for it to be gone.
fn destroy(dir: &StateDir, state: &crate::state::State) -> Result<()> {
    if let Err(e) = control::request(&dir.control_socket(), &ControlRequest::Destroy, CONTROL_TIMEOUT) {
        tracing::warn!("asking the supervisor to stop: {e:#}");
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut killed = false;
    while supervisor::is_alive(state) {
        if Instant::now() > deadline && !killed {
            if let Some(pid) = state.pid {
                // SAFETY: kill(2) of the pid whose start time matches our supervisor's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
            killed = true;
        }
        if Instant::now() > deadline + Duration::from_secs(5) {
            bail!("container supervisor did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

pub(super) fn write_pid_file(path: &Path, pid: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, pid.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}
