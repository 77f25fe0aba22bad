//! Loading and validating an OCI bundle on the host.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

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
        let dir = dir.canonicalize().map_err(|e| anyhow!("bundle {}: {e}", dir.display()))?;
        if !dir.is_dir() {
            bail!("bundle {}: not a directory", dir.display());
        }
        let config = dir.join("config.json");
        let file = File::open(&config).map_err(|e| anyhow!("{}: {e}", config.display()))?;
        let raw: serde_json::Value = serde_json::from_reader(BufReader::new(file))
            .map_err(|e| anyhow!("{}: not valid JSON: {e}", config.display()))?;
        match raw.get("ociVersion").and_then(|v| v.as_str()) {
            Some(v) if v.starts_with("1.") => {}
            Some(v) => bail!("{}: field `ociVersion`: version {v:?} is not supported (1.x is)", config.display()),
            None => bail!("{}: field `ociVersion` is missing or not a string", config.display()),
        }
        let spec: Spec = serde_path_to_error::deserialize(&raw).map_err(|e| {
            let field = e.path().to_string();
            anyhow!("{}: field `{}`: {}", config.display(), field, e.inner())
        })?;

        let root = spec.root().as_ref().ok_or_else(|| anyhow!("{}: field `root` is missing", config.display()))?;
        let rootfs = dir.join(root.path());
        let rootfs = rootfs
            .canonicalize()
            .map_err(|e| anyhow!("{}: field `root.path`: {}: {e}", config.display(), rootfs.display()))?;
        if !rootfs.is_dir() {
            bail!("{}: field `root.path`: {} is not a directory", config.display(), rootfs.display());
        }
        if let Some(process) = spec.process() {
            if process.args().as_ref().is_none_or(|a| a.is_empty()) {
                bail!("{}: field `process.args`: must name a program", config.display());
            }
        }
        let netns = Self::network_namespace(&spec, &config)?;
        let binds = Self::bind_mounts(&spec, &dir, &config)?;
        Self::check_tmpcopyup(&spec, &rootfs, &config)?;
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
            let field = format!("{}: field `mounts[{index}].source`", config.display());
            let source = mount.source().as_ref().ok_or_else(|| anyhow!("{field} is missing"))?;
            let source = dir.join(source).canonicalize().map_err(|e| anyhow!("{field}: {}: {e}", source.display()))?;
            let kind = std::fs::metadata(&source).map_err(|e| anyhow!("{field}: {}: {e}", source.display()))?.file_type();
            if kind.is_block_device() || kind.is_char_device() || kind.is_socket() || kind.is_fifo() {
                bail!("{field}: {} is a device, socket or FIFO, which cannot be shared into a VM", source.display());
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
                bail!(
                    "{}: field `mounts[{i}].options`: tmpcopyup over {}, which is not empty, is not supported",
                    config.display(),
                    mount.destination().display()
                );
            }
        }
        Ok(())
    }

    /// A VM cannot join the host's network: refuse a config without a network namespace.
    fn network_namespace(spec: &Spec, config: &Path) -> Result<Option<PathBuf>> {
        let namespaces = spec.linux().as_ref().and_then(|l| l.namespaces().clone()).unwrap_or_default();
        match namespaces.iter().find(|ns| ns.typ() == LinuxNamespaceType::Network) {
            None => bail!(
                "{}: field `linux.namespaces`: no network namespace means host networking, which a VM \
                 cannot share; add {{\"type\": \"network\"}} (or a \"path\" to an existing one)",
                config.display()
            ),
            Some(ns) => match ns.path() {
                None => Ok(None),
                Some(path) if path.exists() => Ok(Some(path.clone())),
                Some(path) => bail!(
                    "{}: field `linux.namespaces`: network namespace {} does not exist",
                    config.display(),
                    path.display()
                ),
            },
        }
    }

    /// The process this bundle runs, or an error naming the field.
    pub fn require_process(&self) -> Result<()> {
        self.spec
            .process()
            .as_ref()
            .map(|_| ())
            .with_context(|| format!("{}: field `process` is missing: nothing to run", self.dir.join("config.json").display()))
    }
}
