//! OCI image layouts built by the tests, hostile ones included: layer tars are written
//! header by header, so entry names and link targets are exactly what a test says (the
//! `tar` crate's path setters refuse `..` and absolute names, which the hostile corpus needs).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A layer's tar, entry by entry.
pub struct Tar {
    builder: tar::Builder<Vec<u8>>,
}

impl Default for Tar {
    fn default() -> Self {
        Tar::new()
    }
}

impl Tar {
    pub fn new() -> Tar {
        Tar { builder: tar::Builder::new(Vec::new()) }
    }

    /// One entry with `name` and `link` written verbatim into a GNU header.
    pub fn raw(
        mut self,
        kind: tar::EntryType,
        name: &str,
        link: &str,
        mode: u32,
        owner: (u64, u64),
        data: &[u8],
    ) -> Tar {
        let mut header = tar::Header::new_gnu();
        {
            let old = header.as_old_mut();
            assert!(name.len() < old.name.len() && link.len() < old.linkname.len(), "test entry names stay short");
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            old.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_uid(owner.0);
        header.set_gid(owner.1);
        header.set_mtime(1_700_000_000);
        header.set_size(data.len() as u64);
        header.set_cksum();
        self.builder.append(&header, data).unwrap();
        self
    }

    pub fn dir(self, name: &str, mode: u32) -> Tar {
        self.raw(tar::EntryType::Directory, name, "", mode, (0, 0), b"")
    }

    pub fn file(self, name: &str, data: &[u8], mode: u32) -> Tar {
        self.raw(tar::EntryType::Regular, name, "", mode, (0, 0), data)
    }

    pub fn symlink(self, name: &str, target: &str) -> Tar {
        self.raw(tar::EntryType::Symlink, name, target, 0o777, (0, 0), b"")
    }

    pub fn hardlink(self, name: &str, target: &str) -> Tar {
        self.raw(tar::EntryType::Link, name, target, 0o644, (0, 0), b"")
    }

    /// Every file of the directory `from` (a busybox bundle's rootfs), symlinks as symlinks.
    pub fn tree(mut self, from: &Path) -> Tar {
        self.builder.follow_symlinks(false);
        self.builder.append_dir_all(".", from).unwrap();
        self
    }

    pub fn bytes(self) -> Vec<u8> {
        self.builder.into_inner().unwrap()
    }
}

#[derive(Clone, Copy, Debug)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    fn compress(self, tar: &[u8]) -> Vec<u8> {
        match self {
            Compression::None => tar.to_vec(),
            Compression::Gzip => {
                let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                enc.write_all(tar).unwrap();
                enc.finish().unwrap()
            }
            Compression::Zstd => zstd::encode_all(tar, 3).unwrap(),
        }
    }
}

/// An OCI image layout directory.
pub struct Layout {
    pub dir: PathBuf,
    manifests: Vec<Value>,
}

impl Layout {
    pub fn new(dir: &Path) -> Layout {
        fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let layout = Layout { dir: dir.to_path_buf(), manifests: Vec::new() };
        layout.write_index();
        layout
    }

    /// Stores `bytes` as a blob; returns its descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let hex = sha256_hex(bytes);
        fs::write(self.blob_path(&hex), bytes).unwrap();
        json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()})
    }

    pub fn blob_path(&self, hex: &str) -> PathBuf {
        self.dir.join("blobs/sha256").join(hex.trim_start_matches("sha256:"))
    }

    /// An image of `layers` (uncompressed tars) and `config` (the image config's `config`
    /// object), listed in `index.json` under `reference`; returns the manifest's descriptor.
    pub fn image(&mut self, reference: &str, layers: &[(Vec<u8>, Compression)], config: Value) -> Value {
        let manifest = self.manifest(layers, config, |_| {});
        self.add(reference, manifest)
    }

    /// The manifest of an image (as JSON, not yet stored), after `tweak` had its way with it.
    pub fn manifest(&self, layers: &[(Vec<u8>, Compression)], config: Value, tweak: impl FnOnce(&mut Value)) -> Value {
        let diff_ids: Vec<String> = layers.iter().map(|(tar, _)| format!("sha256:{}", sha256_hex(tar))).collect();
        let descriptors: Vec<Value> =
            layers.iter().map(|(tar, c)| self.blob(c.media_type(), &c.compress(tar))).collect();
        let image_config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config_desc =
            self.blob("application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&image_config).unwrap());
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": descriptors,
        });
        tweak(&mut manifest);
        manifest
    }

    /// Stores `manifest` and lists it in `index.json` under `reference`; returns its descriptor.
    pub fn add(&mut self, reference: &str, manifest: Value) -> Value {
        let media = manifest["mediaType"].as_str().unwrap_or("application/vnd.oci.image.manifest.v1+json").to_string();
        let mut desc = self.blob(&media, &serde_json::to_vec(&manifest).unwrap());
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": reference});
        self.manifests.push(desc.clone());
        self.write_index();
        desc
    }

    /// Rewrites `index.json` after `tweak` changed the manifest descriptors.
    pub fn edit_index(&mut self, tweak: impl FnOnce(&mut Vec<Value>)) {
        tweak(&mut self.manifests);
        self.write_index();
    }

    fn write_index(&self) {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": self.manifests,
        });
        fs::write(self.dir.join("index.json"), serde_json::to_vec_pretty(&index).unwrap()).unwrap();
    }

    /// The layout as one tar file (as `skopeo copy oci-archive:` writes), at `to`.
    pub fn archive(&self, to: &Path) {
        let mut builder = tar::Builder::new(fs::File::create(to).unwrap());
        builder.append_dir_all(".", &self.dir).unwrap();
        builder.finish().unwrap();
    }
}

/// A digest of every name, type, mode, owner, link target and content under `dir`: the
/// canary the hostile tests check is untouched.
pub fn tree_digest(dir: &Path) -> String {
    sha256_hex(tree_listing(dir).join("\n").as_bytes())
}

/// Every entry under `dir`, one line each: path, mode, owner, and type with content digest
/// and link count, or link target.
pub fn tree_listing(dir: &Path) -> Vec<String> {
    let mut listing = Vec::new();
    walk(dir, dir, &mut listing);
    listing.sort();
    listing
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    use std::os::unix::fs::MetadataExt;
    for entry in fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).unwrap();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        let mode = meta.mode() & 0o7777;
        let what = if meta.file_type().is_symlink() {
            format!("-> {}", fs::read_link(&path).unwrap().display())
        } else if meta.is_dir() {
            "dir".to_string()
        } else if meta.is_file() {
            format!("file {} links {}", &sha256_hex(&fs::read(&path).unwrap())[..12], meta.nlink())
        } else {
            format!("special {:o}", meta.mode())
        };
        out.push(format!("{rel} {mode:o} {}:{} {what}", meta.uid(), meta.gid()));
        if meta.is_dir() && !meta.file_type().is_symlink() {
            walk(root, &path, out);
        }
    }
}
