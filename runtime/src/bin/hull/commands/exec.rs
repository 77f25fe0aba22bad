//! `hull exec`: run another process in a running container.
//!
//! The process starts through the container's supervisor (which owns the agent connection);
//! this command then connects the process's stdio streams itself and waits for its status.
//! With `-d`, a detached copy of this command does the relaying and waiting, and its pid is
//! the one `--pid-file` names: it lives exactly as long as the exec'd process and exits with
//! its status, which is what podman/conmon wait on.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use hull::state::Status;
use hull::terminal::{self, Console, Tty};
use serde_json::{json, Value};

use crate::cli::{Cli, ExecArgs};
use crate::supervisor::control::{request, request_reply, ControlRequest};

pub fn run(cli: &Cli, args: &ExecArgs) -> Result<i32> {
    let (dir, state) = super::container(cli, &args.id, "exec in", &[Status::Running])?;
    let process = build_process(&state.bundle, args)?;
    let terminal = process["terminal"] == json!(true);
    if args.detach {
        if terminal && args.console_socket.is_none() {
            bail!("exec -d with a terminal needs --console-socket to hand the terminal to");
        }
        return detach(cli, args);
    }
    let console = args.console_socket.clone().map(Console::Socket).unwrap_or(Console::Own);

    let signals = crate::supervisor::block_forwarded_signals()?;
    let exec_id = match args.ready_fd {
        Some(_) => std::env::var("HULL_EXEC_ID").context("detached exec without its id")?,
        None => new_exec_id(),
    };
    let socket = dir.control_socket();
    // The host ends first, a terminal's master sent to --console-socket among them: runc sends
    // it before `exec -d` returns, and conmon reads its console socket once the runtime's exec
    // has exited; sent later, conmon sees no terminal and fails the exec.
    let started = terminal::endpoints(terminal, &console).map_err(anyhow::Error::from).and_then(|(ends, tty)| {
        let mut process = process;
        // A terminal whose size is known now (our own) gives it to the process as its
        // consoleSize, which the guest sets before the process gets far, as runc does: a
        // resize sent after the start can come after the process read its size. A pty sent to
        // a console socket has none yet: conmon sizes it later, and that arrives as a resize.
        if process.get("consoleSize").is_none() {
            if let Some((width, height)) = tty.as_ref().and_then(Tty::size) {
                process["consoleSize"] = json!({ "height": height, "width": width });
            }
        }
        request(&socket, &ControlRequest::Exec { exec_id: exec_id.clone(), process }, Duration::from_secs(90))?;
        Ok((ends, tty))
    });
    if let Some(fd) = args.ready_fd {
        let mut ready = crate::detach::take_ready_fd(fd);
        let _ = match &started {
            Ok(_) => ready.write_all(b"ok\n"),
            Err(e) => write!(ready, "{e:#}"),
        };
    }
    let (ends, tty) = started?;
    let mut relays = hull::stdio::attach(&dir.vsock_socket(), &args.id, Some(&exec_id), ends)?;

    let forward_socket = socket.clone();
    let forward_exec = exec_id.clone();
    let size_of = tty.as_ref().map(Tty::watcher).transpose()?;
    let resize = move || {
        let Some((width, height)) = size_of.as_ref().and_then(|fd| terminal::size(fd.as_fd())) else { return };
        let req = ControlRequest::Resize { exec_id: Some(forward_exec.clone()), width, height };
        let _ = request(&forward_socket, &req, Duration::from_secs(10));
    };
    resize();
    let forward_socket = socket.clone();
    let forward_exec = exec_id.clone();
    std::thread::Builder::new().name("exec-signals".into()).spawn(move || {
        while let Ok(sig) = signals.wait() {
            if sig == nix::sys::signal::Signal::SIGWINCH {
                resize();
                continue;
            }
            let req = ControlRequest::Kill { signal: sig as i32, all: false, exec_id: Some(forward_exec.clone()) };
            let _ = request(&forward_socket, &req, Duration::from_secs(10));
        }
    })?;

    let reply = request_reply(&socket, &ControlRequest::Wait { exec_id }, None)?;
    relays.finish(Duration::from_secs(5));
    reply.status.ok_or_else(|| anyhow!("supervisor did not report the exec's status"))
}

/// `exec -d`: start a detached copy of this command that relays and waits; it reports back
/// once the process has started.
fn detach(cli: &Cli, args: &ExecArgs) -> Result<i32> {
    let mut cmd = crate::detach::hull_command(cli)?;
    cmd.arg("exec").args(["--ready-fd", &crate::detach::READY_FD.to_string()]);
    if let Some(p) = &args.process {
        cmd.arg("--process").arg(p);
    }
    for e in &args.env {
        cmd.arg("--env").arg(e);
    }
    if let Some(cwd) = &args.cwd {
        cmd.arg("--cwd").arg(cwd);
    }
    if let Some(user) = &args.user {
        cmd.arg("--user").arg(user);
    }
    for cap in &args.caps {
        cmd.arg("--cap").arg(cap);
    }
    if args.no_new_privs {
        cmd.arg("--no-new-privs");
    }
    for gid in &args.additional_gids {
        cmd.arg("--additional-gids").arg(gid.to_string());
    }
    if args.tty {
        cmd.arg("--tty");
    }
    if let Some(socket) = &args.console_socket {
        cmd.arg("--console-socket").arg(socket);
    }
    cmd.arg(&args.id).arg("--").args(&args.command);
    cmd.env("HULL_EXEC_ID", new_exec_id());
    let pid = crate::detach::spawn(cmd, PathBuf::from("the --log file"))?;
    if let Some(path) = &args.pid_file {
        crate::pid_file::write(path, pid)?;
    }
    Ok(0)
}

fn new_exec_id() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("exec-{}-{nanos}", std::process::id())
}

/// The OCI process to run: `--process FILE`, or the container's own process with COMMAND,
/// then the flags applied on top (as runc does).
fn build_process(bundle: &std::path::Path, args: &ExecArgs) -> Result<Value> {
    let mut process = match &args.process {
        Some(path) => {
            let bytes = std::fs::read(path).map_err(|e| anyhow!("--process {}: {e}", path.display()))?;
            let value: Value = serde_json::from_slice(&bytes)
                .map_err(|e| anyhow!("--process {}: not valid JSON: {e}", path.display()))?;
            serde_path_to_error::deserialize::<_, oci_spec::runtime::Process>(&value)
                .map_err(|e| anyhow!("--process {}: field `{}`: {}", path.display(), e.path(), e.inner()))?;
            value
        }
        None => {
            if args.command.is_empty() {
                bail!("exec needs a command (or --process FILE)");
            }
            let config = bundle.join("config.json");
            let spec: Value =
                serde_json::from_slice(&std::fs::read(&config).map_err(|e| anyhow!("{}: {e}", config.display()))?)
                    .map_err(|e| anyhow!("{}: {e}", config.display()))?;
            let mut p =
                spec.get("process").cloned().unwrap_or_else(|| json!({"cwd": "/", "user": {"uid": 0, "gid": 0}}));
            p["args"] = json!(args.command);
            p["terminal"] = json!(false);
            p
        }
    };
    if args.tty {
        process["terminal"] = json!(true);
    }
    if !args.env.is_empty() {
        let mut env: Vec<Value> = process["env"].as_array().cloned().unwrap_or_default();
        for var in &args.env {
            let name = var.split('=').next().unwrap_or_default();
            env.retain(|e| e.as_str().and_then(|s| s.split('=').next()) != Some(name));
            env.push(json!(var));
        }
        process["env"] = json!(env);
    }
    if let Some(cwd) = &args.cwd {
        process["cwd"] = json!(cwd);
    }
    if let Some(user) = &args.user {
        let (uid, gid) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user.as_str(), None),
        };
        let uid: u32 = uid.parse().map_err(|_| anyhow!("--user {user:?}: expected UID[:GID] as numbers"))?;
        process["user"]["uid"] = json!(uid);
        if let Some(g) = gid {
            let gid: u32 = g.parse().map_err(|_| anyhow!("--user {user:?}: expected UID[:GID] as numbers"))?;
            process["user"]["gid"] = json!(gid);
        }
    }
    for cap in &args.caps {
        if !hull::spec::is_known_capability(cap) {
            bail!("--cap {cap:?}: unknown capability");
        }
        for set in ["bounding", "effective", "permitted"] {
            let list = &mut process["capabilities"][set];
            if !list.is_array() {
                *list = json!([]);
            }
            let list = list.as_array_mut().unwrap();
            if !list.iter().any(|c| c == cap) {
                list.push(json!(cap));
            }
        }
    }
    if args.no_new_privs {
        process["noNewPrivileges"] = json!(true);
    }
    if !args.additional_gids.is_empty() {
        process["user"]["additionalGids"] = json!(args.additional_gids);
    }
    if args.preserve_fds > 0 {
        bail!("--preserve-fds {}: open file descriptors cannot be passed into a VM", args.preserve_fds);
    }
    if args.console_socket.is_some() && !args.tty {
        bail!("--console-socket needs --tty");
    }
    Ok(process)
}
