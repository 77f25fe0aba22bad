//! An exec'd process under its container's seccomp filter, as runc gives it.
//!
//! libcontainer 0.7 builds an exec's spec from the container's namespaces, cgroup path,
//! personality and time offsets only: the container's seccomp profile is left out, so
//! `hull exec` and `kubectl exec` ran unfiltered. The filter is loaded here instead, by the
//! executor libcontainer calls last, just before execve, in runc's order:
//!
//! - With `noNewPrivileges`, libcontainer has dropped the capabilities and set no_new_privs,
//!   and the kernel lets anyone load a filter then: the executor only loads it.
//! - Without it, loading takes CAP_SYS_ADMIN, which libcontainer has dropped by then. So the
//!   process is handed to libcontainer with CAP_SYS_ADMIN added to the effective and
//!   permitted sets it names, and the executor loads the filter, then sets those two sets
//!   back to what the process asked. The bounding set is never widened, so execve cannot
//!   bring CAP_SYS_ADMIN back; a set the process leaves out stays as libcontainer leaves it.

use std::path::Path;

use anyhow::{Context, Result};
use caps::CapSet;
use libcontainer::capabilities::CapabilityExt;
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorSetEnvsError, ExecutorValidationError};
use oci_spec::runtime::{Capabilities, LinuxSeccomp, Spec};
use serde_json::{json, Value};

/// What loading a filter without no_new_privs takes.
const LOADING_CAP: &str = "CAP_SYS_ADMIN";

#[derive(Clone)]
pub struct SeccompExecutor {
    seccomp: LinuxSeccomp,
    /// The effective and permitted sets to put back after loading, when widened for it.
    restore: Vec<(CapSet, Capabilities)>,
}

/// For an exec whose container has a seccomp profile: rewrites `process_file` as described
/// above and returns the executor that finishes the job; `None` without a profile.
pub fn prepare(process_file: &Path, container_config: &Path) -> Result<Option<SeccompExecutor>> {
    let spec: Spec = serde_json::from_slice(&std::fs::read(container_config)?)
        .with_context(|| format!("reading {}", container_config.display()))?;
    let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) else { return Ok(None) };
    let mut process: Value = serde_json::from_slice(&std::fs::read(process_file)?)?;
    let mut restore = Vec::new();
    if process.get("noNewPrivileges") != Some(&Value::Bool(true)) {
        for (key, set) in [("effective", CapSet::Effective), ("permitted", CapSet::Permitted)] {
            let Some(list) = process.get_mut("capabilities").and_then(|c| c.get_mut(key)) else { continue };
            let Some(names) = list.as_array_mut() else { continue };
            if names.iter().any(|n| n == LOADING_CAP) {
                continue;
            }
            let original: Capabilities = serde_json::from_value(Value::Array(names.clone()))
                .with_context(|| format!("process.capabilities.{key}"))?;
            names.push(json!(LOADING_CAP));
            restore.push((set, original));
        }
    }
    std::fs::write(process_file, serde_json::to_vec(&process)?)?;
    Ok(Some(SeccompExecutor { seccomp, restore }))
}

fn failed(e: impl std::fmt::Display) -> ExecutorError {
    ExecutorError::Other(e.to_string())
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        // The notify fd, if any, is close-on-exec; the host refuses notify profiles anyway.
        libcontainer::seccomp::initialize_seccomp(&self.seccomp).map_err(|e| failed(format!("seccomp: {e}")))?;
        let syscall = libcontainer::syscall::syscall::create_syscall();
        // Effective first: it must stay within permitted at every step.
        for (set, caps) in &self.restore {
            let caps: caps::CapsHashSet = caps.iter().map(|c| c.to_cap()).collect();
            syscall.set_capability(*set, &caps).map_err(|e| failed(format!("restoring capabilities: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }

    fn setup_envs(&self, envs: std::collections::HashMap<String, String>) -> Result<(), ExecutorSetEnvsError> {
        DefaultExecutor {}.setup_envs(envs)
    }
}
