//! An exec'd process under its container's seccomp filter, as runc gives it.
//!
//! libcontainer 0.7 builds an exec's spec from the container's namespaces, cgroup path,
//! personality and time offsets only: the container's seccomp profile is left out, so
//! `hull exec` and `kubectl exec` ran unfiltered. The filter is loaded here instead, by the
//! executor libcontainer calls last, just before execve. By then libcontainer has dropped the
//! process's capabilities, and without no_new_privs the kernel lets only CAP_SYS_ADMIN load a
//! filter. So libcontainer is given the process with CAP_SYS_ADMIN and CAP_SETPCAP added and
//! without `noNewPrivileges`, and this executor sets no_new_privs if it was asked for, loads
//! the filter, then drops the capabilities to what the process asked: runc's order.

use std::path::Path;

use anyhow::{Context, Result};
use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::{LinuxCapabilities, LinuxSeccomp, Spec};
use serde_json::{json, Value};

/// What loading the filter needs for the moment between libcontainer's drop and ours.
const LOADING_CAPS: [&str; 2] = ["CAP_SYS_ADMIN", "CAP_SETPCAP"];

#[derive(Clone)]
pub struct SeccompExecutor {
    seccomp: LinuxSeccomp,
    capabilities: Option<LinuxCapabilities>,
    no_new_privileges: bool,
}

/// For an exec whose container has a seccomp profile: rewrites `process_file` as described
/// above and returns the executor that finishes the job; `None` without a profile.
pub fn prepare(process_file: &Path, container_config: &Path) -> Result<Option<SeccompExecutor>> {
    let spec: Spec = serde_json::from_slice(&std::fs::read(container_config)?)
        .with_context(|| format!("reading {}", container_config.display()))?;
    let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) else { return Ok(None) };
    let mut process: Value = serde_json::from_slice(&std::fs::read(process_file)?)?;
    let no_new_privileges = process.get("noNewPrivileges") == Some(&Value::Bool(true));
    let capabilities: Option<LinuxCapabilities> = match process.get("capabilities") {
        Some(c) if !c.is_null() => Some(serde_json::from_value(c.clone()).context("process.capabilities")?),
        // Without capabilities libcontainer drops none: the process keeps root's, and can load.
        _ => None,
    };
    if let Some(object) = process.as_object_mut() {
        object.remove("noNewPrivileges");
    }
    if capabilities.is_some() {
        for set in ["bounding", "effective", "permitted"] {
            let list = &mut process["capabilities"][set];
            if !list.is_array() {
                *list = json!([]);
            }
            let names = list.as_array_mut().expect("made an array above");
            for cap in LOADING_CAPS {
                if !names.iter().any(|n| n == cap) {
                    names.push(json!(cap));
                }
            }
        }
    }
    std::fs::write(process_file, serde_json::to_vec(&process)?)?;
    Ok(Some(SeccompExecutor { seccomp, capabilities, no_new_privileges }))
}

fn failed(e: impl std::fmt::Display) -> ExecutorError {
    ExecutorError::Other(e.to_string())
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        if self.no_new_privileges {
            nix::sys::prctl::set_no_new_privs().map_err(|e| failed(format!("no_new_privs: {e}")))?;
        }
        libcontainer::seccomp::initialize_seccomp(&self.seccomp).map_err(|e| failed(format!("seccomp: {e}")))?;
        if let Some(caps) = &self.capabilities {
            let syscall = libcontainer::syscall::syscall::create_syscall();
            libcontainer::capabilities::drop_privileges(caps, syscall.as_ref())
                .map_err(|e| failed(format!("dropping capabilities: {e}")))?;
        }
        DefaultExecutor {}.exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        DefaultExecutor {}.validate(spec)
    }
}
