//! `unpack`: an image layout in, a bundle (`rootfs/` and `config.json`) out, or nothing
//! out at all: a failed unpack removes what it wrote.

use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{open, openat, OFlag};
use nix::sys::stat::{mkdirat, Mode};
use oci_spec::image::{Digest, ImageConfiguration, Os};
use serde_json::Value;

use crate::digest::Uncompressed;
use crate::layer::{Applier, Limits};
use crate::layout::Layout;
use crate::remove::remove_all_at;
use crate::resolve::{self, LayerCompression, Platform, REF_NAME};
use crate::{runtime_config, ImageError};

pub struct UnpackOptions {
    /// The image layout: a directory or a tar of one.
    pub image: PathBuf,
    /// The `org.opencontainers.image.ref.name` to unpack; `None` if the layout holds one image.
    pub reference: Option<String>,
    pub platform: Platform,
    pub bundle: PathBuf,
    pub limits: Limits,
    /// Replaces the image's `Cmd`.
    pub args: Option<Vec<String>>,
    /// The spec the image config is laid over (the runtime's default spec).
    pub base_spec: Value,
}

/// What an unpack is doing, for a progress line.
pub enum Progress<'a> {
    Manifest { digest: &'a Digest, layers: usize },
    Layer { index: usize, count: usize, digest: &'a Digest, size: u64 },
}

#[derive(Debug)]
pub struct UnpackReport {
    pub manifest: String,
    pub layers: usize,
    pub entries: u64,
    /// Device nodes in the layers that were not created.
    pub skipped_devices: Vec<String>,
    /// Image labels in reserved namespaces, not made annotations.
    pub dropped_labels: Vec<String>,
}

pub fn unpack(opts: &UnpackOptions, progress: &mut dyn FnMut(Progress<'_>)) -> Result<UnpackReport, ImageError> {
    let bundle = &opts.bundle;
    let (bundle_fd, created) = prepare_bundle(bundle)?;
    let mut made = Made::default();
    let result = unpack_into(opts, &bundle_fd, &mut made, progress);
    if result.is_err() {
        // Only what this unpack made goes (another unpack may be filling the same empty
        // directory); best effort: the error being reported is the unpack's.
        if made.rootfs {
            let _ = remove_all_at(bundle_fd.as_fd(), "rootfs".as_ref());
        }
        if made.config {
            let _ = remove_all_at(bundle_fd.as_fd(), "config.json".as_ref());
        }
        drop(bundle_fd);
        if created {
            let _ = std::fs::remove_dir(bundle);
        }
    }
    result
}

/// What an unpack made in the bundle, so that a failed one removes that and nothing else.
#[derive(Default)]
struct Made {
    rootfs: bool,
    config: bool,
}

/// Opens `bundle`, made (mode 0700) unless it is an empty directory already; returns its fd
/// and whether it was made. An existing one must belong to this user and gets mode 0700
/// too: the rootfs may hold set-id-root files, which nobody else may reach.
fn prepare_bundle(bundle: &Path) -> Result<(OwnedFd, bool), ImageError> {
    let created = match std::fs::DirBuilder::new().mode(0o700).create(bundle) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(ImageError::io(bundle.display(), e)),
    };
    let fd = open(bundle, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC, Mode::empty())
        .map_err(|e| match e {
        nix::errno::Errno::ENOTDIR | nix::errno::Errno::ELOOP => {
            ImageError::invalid(bundle.display(), "exists and is not a directory")
        }
        e => ImageError::io(bundle.display(), e.into()),
    })?;
    if !created {
        let st = nix::sys::stat::fstat(&fd).map_err(|e| ImageError::io(bundle.display(), e.into()))?;
        let me = nix::unistd::geteuid().as_raw();
        if st.st_uid != me {
            return Err(ImageError::invalid(
                bundle.display(),
                format!("belongs to uid {}, not to this user ({me})", st.st_uid),
            ));
        }
        let mut dir = nix::dir::Dir::from_fd(fd.try_clone().map_err(|e| ImageError::io(bundle.display(), e))?)
            .map_err(|e| ImageError::io(bundle.display(), e.into()))?;
        if !crate::remove::children(&mut dir).map_err(|e| ImageError::io(bundle.display(), e))?.is_empty() {
            return Err(ImageError::invalid(bundle.display(), "exists and is not empty; unpack makes a new bundle"));
        }
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(0o700))
            .map_err(|e| ImageError::io(bundle.display(), e.into()))?;
    }
    Ok((fd, created))
}

fn unpack_into(
    opts: &UnpackOptions,
    bundle: &OwnedFd,
    made: &mut Made,
    progress: &mut dyn FnMut(Progress<'_>),
) -> Result<UnpackReport, ImageError> {
    let layout = Layout::open(&opts.image)?;
    let (manifest, manifest_desc) = resolve::manifest(&layout, opts.reference.as_deref(), &opts.platform)?;
    progress(Progress::Manifest { digest: manifest_desc.digest(), layers: manifest.layers().len() });
    let config_desc = manifest.config();
    let config: ImageConfiguration = layout.blob_json(config_desc)?;
    if *config.os() != Os::Linux {
        return Err(ImageError::blob(
            config_desc.digest(),
            format!("os {}: only linux images run in hull's guest", config.os()),
        ));
    }
    let diff_ids = config.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(ImageError::blob(
            config_desc.digest(),
            format!("rootfs.diff_ids lists {} layers, the manifest {}", diff_ids.len(), manifest.layers().len()),
        ));
    }

    mkdirat(bundle, "rootfs", Mode::from_bits_truncate(0o755)).map_err(|e| ImageError::io("rootfs", e.into()))?;
    made.rootfs = true;
    let rootfs = openat(
        bundle,
        "rootfs",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io("rootfs", e.into()))?;
    // Not left to the umask: a non-root user in the container must be able to reach `/`.
    nix::sys::stat::fchmod(&rootfs, Mode::from_bits_truncate(0o755)).map_err(|e| ImageError::io("rootfs", e.into()))?;
    let mut applier = Applier::new(rootfs.try_clone().map_err(|e| ImageError::io("rootfs", e))?, opts.limits);
    let mut unpacked: u64 = 0;
    let count = manifest.layers().len();
    for (i, (layer, diff_id)) in manifest.layers().iter().zip(diff_ids).enumerate() {
        let diff_id: Digest = diff_id
            .parse()
            .map_err(|e| ImageError::blob(config_desc.digest(), format!("rootfs.diff_ids[{i}] {diff_id:?}: {e}")))?;
        progress(Progress::Layer { index: i + 1, count, digest: layer.digest(), size: layer.size() });
        let compression = resolve::layer_compression(layer.media_type())
            .ok_or_else(|| ImageError::blob(layer.digest(), "not a layer media type"))?;
        let mut blob = layout.blob(layer)?;
        let name = layer.digest().to_string();
        let applied = (|| {
            let decoded: Box<dyn Read + '_> = match compression {
                LayerCompression::None => Box::new(&mut blob),
                LayerCompression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
                LayerCompression::Zstd => Box::new(
                    zstd::stream::read::Decoder::new(&mut blob)
                        .map_err(|e| ImageError::blob(&name, format!("zstd: {e}")))?,
                ),
            };
            let budget = opts.limits.max_unpacked_bytes - unpacked;
            let mut stream = Uncompressed::new(decoded, &diff_id, budget, opts.limits.max_unpacked_bytes)?;
            applier.apply(&mut stream, &name)?;
            stream.finish().map_err(|e| ImageError::blob(&name, format!("decompressing: {e}")))
        })();
        // A blob that is not what its descriptor says is the error to report, whatever
        // applying it did.
        blob.finish()?;
        let (size, hex) = applied?;
        if hex != diff_id.digest() {
            return Err(ImageError::blob(
                &name,
                format!("uncompressed content hashes to {hex}, not to rootfs.diff_ids[{i}] {diff_id}"),
            ));
        }
        unpacked += size;
    }
    let entries = applier.entries();
    let skipped_devices = applier.finish()?;

    let ref_name =
        manifest_desc.annotations().as_ref().and_then(|a| a.get(REF_NAME).cloned()).or_else(|| opts.reference.clone());
    let mut spec = opts.base_spec.clone();
    let dropped_labels = runtime_config::apply(&mut spec, &config, &rootfs, opts.args.as_deref(), ref_name.as_deref())?;
    write_config(bundle, &spec, made)?;
    Ok(UnpackReport {
        manifest: manifest_desc.digest().to_string(),
        layers: count,
        entries,
        skipped_devices,
        dropped_labels,
    })
}

fn write_config(bundle: &OwnedFd, spec: &Value, made: &mut Made) -> Result<(), ImageError> {
    use std::io::Write;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = openat(bundle, "config.json", flags, Mode::from_bits_truncate(0o644))
        .map_err(|e| ImageError::io("config.json", e.into()))?;
    made.config = true;
    let mut file = std::fs::File::from(fd);
    let text = serde_json::to_string_pretty(spec).map_err(|e| ImageError::invalid("config.json", e))?;
    file.write_all(text.as_bytes()).map_err(|e| ImageError::io("config.json", e))
}
