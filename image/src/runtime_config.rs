//! The runtime spec (`config.json`) an image config implies, laid over a base spec, as the
//! image spec's conversion rules (`conversion.md`) and Docker's `run` have it.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::os::fd::OwnedFd;

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use oci_spec::image::ImageConfiguration;
use serde_json::{json, Value};

use crate::users;
use crate::ImageError;

/// `/etc/passwd` and `/etc/group` bigger than this are refused.
const MAX_ID_FILE: u64 = 1 << 20;

/// A small text file of the rootfs, resolved inside it; empty when it does not exist.
fn read_in_root(root: &OwnedFd, rel: &str) -> Result<String, ImageError> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOCTTY | OFlag::O_NONBLOCK)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS | ResolveFlag::RESOLVE_NO_XDEV);
    let fd = match openat2(root, rel, how) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(String::new()),
        Err(e) => return Err(ImageError::io(format!("rootfs/{rel}"), e.into())),
    };
    let file = std::fs::File::from(fd);
    let meta = file.metadata().map_err(|e| ImageError::io(format!("rootfs/{rel}"), e))?;
    if !meta.is_file() || meta.len() > MAX_ID_FILE {
        return Err(ImageError::invalid(
            format!("rootfs/{rel}"),
            format!("not a regular file of at most {MAX_ID_FILE} bytes"),
        ));
    }
    let mut bytes = Vec::new();
    file.take(MAX_ID_FILE).read_to_end(&mut bytes).map_err(|e| ImageError::io(format!("rootfs/{rel}"), e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `NAME=VALUE` lists merged: a later entry replaces an earlier one of the same name.
fn merge_env(base: &[String], image: &[String]) -> Vec<String> {
    let name = |e: &str| e.split_once('=').map_or(e, |(n, _)| n).to_string();
    // The last value of each name, in the order names first appeared.
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    for entry in base.iter().chain(image) {
        if values.insert(name(entry), entry.clone()).is_none() {
            order.push(name(entry));
        }
    }
    order.into_iter().filter_map(|n| values.remove(&n)).collect()
}

/// Label namespaces that do not become annotations: containerd's CRI plugin, kubelet and
/// hull itself take instructions from these, and an image must not give them.
pub const RESERVED_ANNOTATIONS: &[&str] =
    &["io.kubernetes.", "io.containerd.", "io.github.hull.", "io.katacontainers."];

/// Lays the image config over `spec`. `args`, when given, replace the image's `Cmd` (the
/// `Entrypoint` stays), as `docker run IMAGE ARGS…` does. Returns the labels left out
/// ([`RESERVED_ANNOTATIONS`]).
pub fn apply(
    spec: &mut Value,
    image: &ImageConfiguration,
    rootfs: &OwnedFd,
    args: Option<&[String]>,
    ref_name: Option<&str>,
) -> Result<Vec<String>, ImageError> {
    let config = image.config().clone().unwrap_or_default();
    let mut dropped = Vec::new();
    let mut argv: Vec<String> = config.entrypoint().clone().unwrap_or_default();
    match args {
        Some(a) => argv.extend(a.iter().cloned()),
        None => argv.extend(config.cmd().clone().unwrap_or_default()),
    }
    if argv.is_empty() {
        return Err(ImageError::invalid("image config", "has neither Entrypoint nor Cmd: give the command after --"));
    }
    let base_env: Vec<String> = serde_json::from_value(spec["process"]["env"].clone()).unwrap_or_default();
    let env = merge_env(&base_env, config.env().as_deref().unwrap_or_default());
    let cwd = config.working_dir().clone().filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(ImageError::invalid("image config WorkingDir", format!("{cwd:?} is not an absolute path")));
    }
    let user = match config.user().as_deref().filter(|u| !u.is_empty()) {
        None => users::Identity { uid: 0, gid: 0, additional_gids: vec![] },
        Some(u) => {
            let passwd = read_in_root(rootfs, "etc/passwd")?;
            let group = read_in_root(rootfs, "etc/group")?;
            users::resolve(u, &passwd, &group).map_err(|r| ImageError::invalid("image config User", r))?
        }
    };
    let process = &mut spec["process"];
    process["args"] = json!(argv);
    process["env"] = json!(env);
    process["cwd"] = json!(cwd);
    process["user"] = json!({"uid": user.uid, "gid": user.gid});
    if !user.additional_gids.is_empty() {
        process["user"]["additionalGids"] = json!(user.additional_gids);
    }

    // Labels become annotations, but for the namespaces runtimes and orchestrators read
    // their own instructions from; then the conversion's own keys (which win).
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in config.labels().clone().unwrap_or_default() {
        if RESERVED_ANNOTATIONS.iter().any(|p| key.starts_with(p)) {
            dropped.push(key);
        } else {
            annotations.insert(key, value);
        }
    }
    let mut put = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            annotations.insert(format!("org.opencontainers.image.{k}"), v);
        }
    };
    put("os", Some(image.os().to_string()));
    put("architecture", Some(image.architecture().to_string()));
    put("variant", image.variant().clone());
    put("author", image.author().clone());
    put("created", image.created().clone());
    put("stopSignal", config.stop_signal().clone());
    put(
        "exposedPorts",
        config.exposed_ports().clone().map(|mut p| {
            p.sort();
            p.join(",")
        }),
    );
    put("ref.name", ref_name.map(str::to_string));
    spec["annotations"] = json!(annotations);
    spec["root"]["path"] = json!("rootfs");
    Ok(dropped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_env_replaces_the_base_by_name() {
        let base = vec!["PATH=/bin".to_string(), "TERM=xterm".to_string()];
        let image = vec!["PATH=/usr/bin:/bin".to_string(), "GREETING=hi".to_string()];
        assert_eq!(merge_env(&base, &image), vec!["PATH=/usr/bin:/bin", "TERM=xterm", "GREETING=hi"]);
    }
}
