//! Loading and validating an OCI bundle on the host.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{LinuxNamespaceType, Spec};

/// A bundle that cannot be run, naming the file and, where one is to blame, the field.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("bundle {}: {source}", dir.display())]
    Dir { dir: PathBuf, source: std::io::Error },
    #[error("bundle {}: not a directory", .0.display())]
    NotADirectory(PathBuf),
    #[error("{}: {source}", config.display())]
    Config { config: PathBuf, source: std::io::Error },
    #[error("{}: not valid JSON: {source}", config.display())]
    Json { config: PathBuf, source: serde_json::Error },
    #[error("{}: field `{field}`{message}", config.display())]
    Field { config: PathBuf, field: String, message: String },
}

type Result<T> = std::result::Result<T, BundleError>;

/// An error in field `field` of `config`; `message` follows the field's name (": …" or " is …").
fn field(config: &Path, field: impl Into<String>, message: impl std::fmt::Display) -> BundleError {
    BundleError::Field { config: config.to_path_buf(), field: field.into(), message: message.to_string() }
}

/// A bind mount of config.json, shared into the guest over virtio-fs.
#[derive(Debug, Clone)]
pub struct BindMount {
    /// Position in `mounts`, which names its place in the share.
    pub index: usize,
    /// Canonical host path.
    pub source: PathBuf,
    pub is_dir: bool,
    /// `ro` in its options (the last of `ro`/`rw` wins): read-only on the host side too, so a
    /// guest kernel that ignores its own mount flags still cannot write through virtio-fs.
    pub read_only: bool,
}

/// A bundle whose config.json parsed and whose rootfs exists.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Absolute, canonical bundle directory.
    pub dir: PathBuf,
    pub spec: Spec,
    /// Absolute, canonical root filesystem.
    pub rootfs: PathBuf,
    /// The raw config, kept so fields oci-spec does not model survive the trip to the guest.
    pub raw: serde_json::Value,
    /// The network namespace to attach the VM to (`None`: a new, loopback-only one).
    pub netns: Option<PathBuf>,
    pub binds: Vec<BindMount>,
}

impl Bundle {
    pub fn load(dir: &Path) -> Result<Bundle> {
        let dir = dir.canonicalize().map_err(|source| BundleError::Dir { dir: dir.to_path_buf(), source })?;
        if !dir.is_dir() {
            return Err(BundleError::NotADirectory(dir));
        }
        let config = dir.join("config.json");
        let file = File::open(&config).map_err(|source| BundleError::Config { config: config.clone(), source })?;
        let raw: serde_json::Value = serde_json::from_reader(BufReader::new(file))
            .map_err(|source| BundleError::Json { config: config.clone(), source })?;
        match raw.get("ociVersion").and_then(|v| v.as_str()) {
            Some(v) if v.starts_with("1.") => {}
            Some(v) => return Err(field(&config, "ociVersion", format!(": version {v:?} is not supported (1.x is)"))),
            None => return Err(field(&config, "ociVersion", " is missing or not a string")),
        }
        let spec: Spec = serde_path_to_error::deserialize(&raw)
            .map_err(|e| field(&config, e.path().to_string(), format!(": {}", e.inner())))?;

        let root = spec.root().as_ref().ok_or_else(|| field(&config, "root", " is missing"))?;
        let rootfs = dir.join(root.path());
        let rootfs =
            rootfs.canonicalize().map_err(|e| field(&config, "root.path", format!(": {}: {e}", rootfs.display())))?;
        if !rootfs.is_dir() {
            return Err(field(&config, "root.path", format!(": {} is not a directory", rootfs.display())));
        }
        if let Some(process) = spec.process() {
            if process.args().as_ref().is_none_or(|a| a.is_empty()) {
                return Err(field(&config, "process.args", ": must name a program"));
            }
        }
        let netns = Self::network_namespace(&spec, &config)?;
        let binds = Self::bind_mounts(&spec, &dir, &config)?;
        Self::check_tmpcopyup(&spec, &rootfs, &config)?;
        Self::check_seccomp_notify(&spec, &config)?;
        Ok(Bundle { dir, spec, rootfs, raw, netns, binds })
    }

    /// Bind mounts reach the guest through the share; only directories and regular files can.
    fn bind_mounts(spec: &Spec, dir: &Path, config: &Path) -> Result<Vec<BindMount>> {
        use std::os::unix::fs::FileTypeExt;
        let mut binds = Vec::new();
        for (index, mount) in spec.mounts().clone().unwrap_or_default().iter().enumerate() {
            let options = mount.options().clone().unwrap_or_default();
            let is_bind = mount.typ().as_deref() == Some("bind") || options.iter().any(|o| o == "bind" || o == "rbind");
            if !is_bind {
                continue;
            }
            let name = format!("mounts[{index}].source");
            let source = mount.source().as_ref().ok_or_else(|| field(config, &name, " is missing"))?;
            let source = dir
                .join(source)
                .canonicalize()
                .map_err(|e| field(config, &name, format!(": {}: {e}", source.display())))?;
            let kind = std::fs::metadata(&source)
                .map_err(|e| field(config, &name, format!(": {}: {e}", source.display())))?
                .file_type();
            if kind.is_block_device() || kind.is_char_device() || kind.is_socket() || kind.is_fifo() {
                let why =
                    format!(": {} is a device, socket or FIFO, which cannot be shared into a VM", source.display());
                return Err(field(config, &name, why));
            }
            let read_only = options.iter().rev().find(|o| *o == "ro" || *o == "rw").is_some_and(|o| o == "ro");
            binds.push(BindMount { index, source, is_dir: kind.is_dir(), read_only });
        }
        Ok(binds)
    }

    /// runc's `tmpcopyup` (fill a tmpfs with what the image has at its mountpoint) is not
    /// something the guest's runtime does; over an empty or missing directory it changes
    /// nothing, and that is what podman's `--read-only` asks for (`/run`, `/tmp`, `/var/tmp`).
    fn check_tmpcopyup(spec: &Spec, rootfs: &Path, config: &Path) -> Result<()> {
        for (i, mount) in spec.mounts().clone().unwrap_or_default().iter().enumerate() {
            if !mount.options().as_ref().is_some_and(|o| o.iter().any(|o| o == "tmpcopyup")) {
                continue;
            }
            let target = rootfs.join(mount.destination().strip_prefix("/").unwrap_or(mount.destination()));
            let has_content = std::fs::read_dir(&target).map(|mut d| d.next().is_some()).unwrap_or(false);
            if has_content {
                let why =
                    format!(": tmpcopyup over {}, which is not empty, is not supported", mount.destination().display());
                return Err(field(config, format!("mounts[{i}].options"), why));
            }
        }
        Ok(())
    }

    /// Seccomp user notification hands the filter's listener fd to an agent on the host at
    /// `listenerPath`; the filter runs in the guest kernel, and an fd cannot cross the VM.
    fn check_seccomp_notify(spec: &Spec, config: &Path) -> Result<()> {
        let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) else { return Ok(()) };
        let why = ": seccomp user notification cannot cross the VM (the filter runs in the guest kernel, \
                   its listener fd cannot reach a host agent)";
        if seccomp.listener_path().is_some() {
            return Err(field(config, "linux.seccomp.listenerPath", why));
        }
        let notify =
            |a: &oci_spec::runtime::LinuxSeccompAction| *a == oci_spec::runtime::LinuxSeccompAction::ScmpActNotify;
        if notify(&seccomp.default_action()) {
            return Err(field(config, "linux.seccomp.defaultAction", why));
        }
        for (i, rule) in seccomp.syscalls().clone().unwrap_or_default().iter().enumerate() {
            if notify(&rule.action()) {
                return Err(field(config, format!("linux.seccomp.syscalls[{i}].action"), why));
            }
        }
        Ok(())
    }

    /// A VM cannot join the host's network: refuse a config without a network namespace.
    fn network_namespace(spec: &Spec, config: &Path) -> Result<Option<PathBuf>> {
        let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
        match namespaces.iter().find(|ns| ns.typ() == LinuxNamespaceType::Network) {
            None => Err(field(
                config,
                "linux.namespaces",
                ": no network namespace means host networking, which a VM cannot share; add \
                 {\"type\": \"network\"} (or a \"path\" to an existing one)",
            )),
            Some(ns) => match ns.path() {
                None => Ok(None),
                Some(path) if path.exists() => Ok(Some(path.clone())),
                Some(path) => Err(field(
                    config,
                    "linux.namespaces",
                    format!(": network namespace {} does not exist", path.display()),
                )),
            },
        }
    }

    /// The process this bundle runs, or an error naming the field.
    pub fn require_process(&self) -> Result<()> {
        match self.spec.process() {
            Some(_) => Ok(()),
            None => Err(field(&self.dir.join("config.json"), "process", " is missing: nothing to run")),
        }
    }
}
