//! An OCI image layout, as a directory or as a tar of one (`podman save --format
//! oci-archive`, `skopeo copy … oci-archive:`): `oci-layout`, `index.json` and `blobs/ALG/HEX`.
//!
//! Blob paths are built from parsed digests only (an algorithm and lowercase hex), and files
//! are opened beneath the layout directory's fd with no symlink followed anywhere on the way,
//! so neither a descriptor nor a planted link can name a file outside the layout. Every blob read goes through a [`BlobReader`] that checks it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use nix::fcntl::{open, openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::Mode;
use oci_spec::image::{Descriptor, Digest};
use serde::de::DeserializeOwned;

use crate::digest::BlobReader;
use crate::tar_stream::Extended;
use crate::ImageError;

/// The biggest JSON document (index, manifest, config) read into memory.
pub const MAX_JSON: u64 = 4 << 20;

pub struct Layout {
    source: Source,
    /// The layout's path, for messages.
    path: PathBuf,
}

enum Source {
    /// The layout directory, opened once: its files are looked up beneath it with no
    /// symlink followed (a `blobs -> /elsewhere` link would hand out another store's blobs).
    Dir(OwnedFd),
    /// A tar of a layout: the regular files' data spans, by normalized name.
    Tar { file: Arc<File>, files: HashMap<String, (u64, u64)> },
}

/// A span of an archive, read with positioned reads so several can be open at once.
struct Span {
    file: Arc<File>,
    pos: u64,
    end: u64,
}

impl Read for Span {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(room);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// A file beneath the layout directory `dir`: no symlink on the way, no FIFO to block on.
fn open_beneath(dir: &OwnedFd, name: &str) -> io::Result<File> {
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    Ok(File::from(openat2(dir, name, how)?))
}

fn normalize(name: &Path) -> String {
    let s = name.to_string_lossy();
    let s = s.trim_start_matches("./");
    s.trim_end_matches('/').to_string()
}

impl Layout {
    /// Opens `path`, a layout directory or a tar archive of one, and checks its `oci-layout`.
    pub fn open(path: &Path) -> Result<Self, ImageError> {
        let meta = std::fs::metadata(path).map_err(|e| ImageError::io(path.display(), e))?;
        let source = if meta.is_dir() {
            let dir = open(path, OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
                .map_err(|e| ImageError::io(path.display(), e.into()))?;
            Source::Dir(dir)
        } else {
            let file = Arc::new(File::open(path).map_err(|e| ImageError::io(path.display(), e))?);
            let mut files = HashMap::new();
            let mut archive = tar::Archive::new(Span { file: file.clone(), pos: 0, end: meta.len() });
            let entries = archive.entries().map_err(|e| ImageError::invalid(path.display(), e))?.raw(true);
            let mut extended = Extended::default();
            for entry in entries {
                let mut entry = entry
                    .map_err(|e| ImageError::invalid(path.display(), format!("not a tar of an image layout: {e}")))?;
                let bad = |r: String| ImageError::invalid(path.display(), r);
                if extended.absorb(&mut entry).map_err(bad)? {
                    continue;
                }
                let names = extended.names(&entry).map_err(bad)?;
                if entry.header().entry_type().is_file() {
                    let name = Path::new(std::ffi::OsStr::from_bytes(&names.path));
                    files.insert(normalize(name), (entry.raw_file_position(), entry.size()));
                }
            }
            Source::Tar { file, files }
        };
        let layout = Layout { source, path: path.to_path_buf() };
        let header: serde_json::Value = layout.read_file_json("oci-layout")?;
        match header.get("imageLayoutVersion").and_then(|v| v.as_str()) {
            Some(v) if v.starts_with("1.") => Ok(layout),
            other => Err(ImageError::invalid(
                format!("{}/oci-layout", path.display()),
                format!("imageLayoutVersion {other:?}: only 1.x layouts are read"),
            )),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn describe(&self, name: &str) -> String {
        format!("{}/{name}", self.path.display())
    }

    /// A file of the layout by its name relative to the layout's root, and its size.
    fn open_file(&self, name: &str) -> Result<(Box<dyn Read + Send>, u64), ImageError> {
        match &self.source {
            Source::Dir(dir) => {
                let path = self.path.join(name);
                let file = open_beneath(dir, name).map_err(|e| ImageError::io(path.display(), e))?;
                let meta = file.metadata().map_err(|e| ImageError::io(path.display(), e))?;
                if !meta.is_file() {
                    return Err(ImageError::invalid(path.display(), "not a regular file"));
                }
                Ok((Box::new(file), meta.len()))
            }
            Source::Tar { file, files } => {
                let &(pos, size) = files
                    .get(name)
                    .ok_or_else(|| ImageError::io(self.describe(name), io::Error::from(io::ErrorKind::NotFound)))?;
                Ok((Box::new(Span { file: file.clone(), pos, end: pos + size }), size))
            }
        }
    }

    /// A small JSON file that is not a blob (`oci-layout`, `index.json`).
    pub fn read_file_json<T: DeserializeOwned>(&self, name: &str) -> Result<T, ImageError> {
        let (file, size) = self.open_file(name)?;
        if size > MAX_JSON {
            return Err(ImageError::invalid(self.describe(name), format!("{size} bytes, more than {MAX_JSON}")));
        }
        let mut bytes = Vec::new();
        file.take(MAX_JSON).read_to_end(&mut bytes).map_err(|e| ImageError::io(self.describe(name), e))?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::invalid(self.describe(name), e))
    }

    fn blob_name(digest: &Digest) -> String {
        format!("blobs/{}/{}", digest.algorithm(), digest.digest())
    }

    /// A checking reader over the blob `desc` names.
    pub fn blob(&self, desc: &Descriptor) -> Result<BlobReader<Box<dyn Read + Send>>, ImageError> {
        let digest = desc.digest();
        let (file, size) = self.open_file(&Self::blob_name(digest)).map_err(|e| ImageError::blob(digest, e))?;
        if size != desc.size() {
            return Err(ImageError::blob(digest, format!("is {size} bytes, its descriptor says {}", desc.size())));
        }
        BlobReader::new(file, digest, desc.size())
    }

    /// A JSON blob (manifest, index, config), verified before it is parsed.
    pub fn blob_json<T: DeserializeOwned>(&self, desc: &Descriptor) -> Result<T, ImageError> {
        if desc.size() > MAX_JSON {
            return Err(ImageError::blob(
                desc.digest(),
                format!("{} bytes, more than {MAX_JSON} for a JSON blob", desc.size()),
            ));
        }
        let mut reader = self.blob(desc)?;
        let mut bytes = Vec::new();
        reader.read_to_end(&mut bytes).map_err(|e| ImageError::blob(desc.digest(), e))?;
        reader.finish()?;
        serde_json::from_slice(&bytes).map_err(|e| ImageError::blob(desc.digest(), e))
    }
}
