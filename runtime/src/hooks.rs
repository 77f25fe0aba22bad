//! OCI lifecycle hooks that run on the host (runtime-spec 1.2 "POSIX-platform hooks").
//!
//! `prestart`/`createRuntime` run once the sandbox and container exist, `poststart` after the
//! process started, `poststop` when the container is deleted. `createContainer` and
//! `startContainer` run inside the guest (libcontainer runs them in the container's
//! namespaces). Each hook gets the container's state JSON on stdin.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use oci_spec::runtime::{Hook, Hooks};

use crate::state::State;

/// Host-side hook points.
#[derive(Debug, Clone, Copy)]
pub enum Point {
    Prestart,
    CreateRuntime,
    Poststart,
    Poststop,
}

impl Point {
    fn name(self) -> &'static str {
        match self {
            Point::Prestart => "prestart",
            Point::CreateRuntime => "createRuntime",
            Point::Poststart => "poststart",
            Point::Poststop => "poststop",
        }
    }

    fn hooks(self, hooks: &Hooks) -> Vec<Hook> {
        #[allow(deprecated)]
        let list = match self {
            Point::Prestart => hooks.prestart(),
            Point::CreateRuntime => hooks.create_runtime(),
            Point::Poststart => hooks.poststart(),
            Point::Poststop => hooks.poststop(),
        };
        list.clone().unwrap_or_default()
    }
}

/// A hook that failed, naming its point, position and program.
#[derive(Debug, thiserror::Error)]
#[error("{point} hook #{index} ({}): {failure}", path.display())]
pub struct HookError {
    pub point: &'static str,
    pub index: usize,
    pub path: std::path::PathBuf,
    pub failure: Failure,
}

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("starting: {0}")]
    Start(std::io::Error),
    #[error("waiting: {0}")]
    Wait(std::io::Error),
    #[error("timed out after {0}s")]
    Timeout(u64),
    #[error("exited with {status}: {stderr}")]
    Status { status: String, stderr: String },
}

/// Run the hooks of `point` in order; the first failure stops the rest and is returned.
pub fn run(hooks: Option<&Hooks>, point: Point, state: &State) -> Result<(), HookError> {
    let Some(hooks) = hooks else { return Ok(()) };
    let input = serde_json::to_vec(state).expect("a state serializes");
    for (index, hook) in point.hooks(hooks).iter().enumerate() {
        run_one(hook, &input).map_err(|failure| HookError {
            point: point.name(),
            index,
            path: hook.path().clone(),
            failure,
        })?;
    }
    Ok(())
}

/// Run the hooks of `point` (poststart, poststop) all in order, whatever each does: a failure
/// is a warning and the rest still run (runtime-spec 1.2: "the remaining hooks and lifecycle
/// continue as if the hook had succeeded").
pub fn run_warning(hooks: Option<&Hooks>, point: Point, state: &State) {
    let Some(hooks) = hooks else { return };
    let input = serde_json::to_vec(state).expect("a state serializes");
    for (index, hook) in point.hooks(hooks).iter().enumerate() {
        if let Err(failure) = run_one(hook, &input) {
            let e = HookError { point: point.name(), index, path: hook.path().clone(), failure };
            tracing::warn!("{e}");
        }
    }
}

fn run_one(hook: &Hook, input: &[u8]) -> Result<(), Failure> {
    let mut cmd = Command::new(hook.path());
    if let Some(args) = hook.args() {
        if let Some((argv0, rest)) = args.split_first() {
            cmd.arg0(argv0).args(rest);
        }
    }
    cmd.env_clear();
    for var in hook.env().clone().unwrap_or_default() {
        if let Some((k, v)) = var.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped());
    // The usual umask, not the runtime's own 077.
    // SAFETY: umask(2) between fork and exec is async-signal-safe and touches no memory.
    unsafe {
        cmd.pre_exec(|| {
            libc::umask(0o022);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(Failure::Start)?;
    // A hook that does not read its stdin must not block us.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input);
    }
    let timeout = hook.timeout().map(|t| Duration::from_secs(t.max(1) as u64));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(Failure::Wait)? {
            break status;
        }
        if let Some(limit) = timeout.filter(|t| started.elapsed() > *t) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Failure::Timeout(limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut e) = child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        return Err(Failure::Status { status: crate::process::describe(status), stderr: stderr.trim().to_string() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Status;

    fn hook(script: &str) -> Hook {
        serde_json::from_value(serde_json::json!({"path": "/bin/sh", "args": ["sh", "-c", script]})).unwrap()
    }

    fn state() -> State {
        State {
            oci_version: "1.2.0".into(),
            id: "c1".into(),
            status: Status::Stopped,
            pid: None,
            supervisor_start: None,
            bundle: "/nonexistent".into(),
            annotations: Default::default(),
            created: String::new(),
            exit_status: None,
            network: None,
            cgroup: None,
        }
    }

    #[test]
    fn a_failing_post_hook_does_not_stop_the_ones_after_it() {
        let dir = std::env::temp_dir().join(format!("hull-hooks-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mark = dir.join("second-ran");
        let mut hooks = Hooks::default();
        hooks.set_poststop(Some(vec![hook("exit 1"), hook(&format!("read -r s; echo \"$s\" > {}", mark.display()))]));
        run_warning(Some(&hooks), Point::Poststop, &state());
        let seen: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&mark).unwrap()).unwrap();
        assert_eq!(seen["status"], "stopped");
        // `run` (prestart, createRuntime) stops at the first failure and names it.
        let mark2 = dir.join("not-run");
        hooks.set_prestart(Some(vec![hook("echo broke >&2; exit 3"), hook(&format!("touch {}", mark2.display()))]));
        let e = run(Some(&hooks), Point::Prestart, &state()).unwrap_err();
        assert!(e.to_string().contains("prestart hook #0") && e.to_string().contains("broke"), "{e}");
        assert!(!mark2.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
