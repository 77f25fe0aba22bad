//! Layers as a hostile image chooses them, applied one after the other to a fresh rootfs
//! next to a canary directory. Entry names and link targets are built from components that
//! matter (`..`, `.`, whiteout prefixes, the opaque marker, absolute starts, names earlier
//! entries used), so the fuzzer spends its time on whiteouts, symlinks and hard links rather
//! than on tar checksums; a leading 0xff byte hands the rest over as a raw tar stream instead.
//! Nothing may panic, nothing may appear outside the rootfs, the canary must stay as it was.
#![no_main]

use std::fs;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use hull_image::layer::{Applier, Limits};
use libfuzzer_sys::fuzz_target;

const PARTS: &[&str] = &["a", "b", "c", "..", ".", ".wh.a", ".wh.b", ".wh..wh..opq", ".wh..wh.x", "canary", "file", "/", ""];

/// One scratch dir inside the fuzz crate's target dir, reused by every run.
fn scratch() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/layer-apply");
        fs::create_dir_all(&d).unwrap();
        d
    })
}

struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn next(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    /// A name of one to four parts; an absolute one if the first part is "/".
    fn name(&mut self) -> Option<String> {
        let n = self.next()? % 4 + 1;
        let mut out = String::new();
        for i in 0..n {
            let part = PARTS[usize::from(self.next()?) % PARTS.len()];
            if i > 0 && !out.ends_with('/') {
                out.push('/');
            }
            out.push_str(part);
        }
        Some(out)
    }
}

fn entry(tar: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, name: &str, link: &str, mode: u32, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    let old = header.as_old_mut();
    if name.len() >= old.name.len() || link.len() >= old.linkname.len() {
        return;
    }
    old.name[..name.len()].copy_from_slice(name.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

/// Layers decoded from `data`: each entry takes a kind byte (0xfe ends the layer), a name,
/// and for links a target.
fn layers(data: &[u8]) -> Vec<Vec<u8>> {
    if let Some((&0xff, raw)) = data.split_first() {
        return vec![raw.to_vec()];
    }
    let mut input = Bytes(data);
    let mut out = Vec::new();
    let mut tar = tar::Builder::new(Vec::new());
    while let Some(kind) = input.next() {
        if kind == 0xfe {
            out.push(std::mem::replace(&mut tar, tar::Builder::new(Vec::new())).into_inner().unwrap());
            continue;
        }
        let Some(name) = input.name() else { break };
        let mode = 0o600 | u32::from(kind & 0x70) << 2;
        match kind % 7 {
            0 => entry(&mut tar, tar::EntryType::Directory, &name, "", mode | 0o700, b""),
            1 => entry(&mut tar, tar::EntryType::Regular, &name, "", mode, b"fuzz"),
            2 | 3 => {
                let Some(target) = input.name() else { break };
                let kind = if kind % 7 == 2 { tar::EntryType::Symlink } else { tar::EntryType::Link };
                entry(&mut tar, kind, &name, &target, 0o777, b"");
            }
            4 => entry(&mut tar, tar::EntryType::Fifo, &name, "", mode, b""),
            5 => entry(&mut tar, tar::EntryType::Char, &name, "", mode, b""),
            _ => entry(&mut tar, tar::EntryType::Regular, &format!("{name}/.wh.file"), "", 0o644, b""),
        }
    }
    out.push(tar.into_inner().unwrap());
    out
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch().join("run");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(dir.join("rootfs")).unwrap();
    fs::create_dir_all(dir.join("canary")).unwrap();
    fs::write(dir.join("canary/file"), b"canary").unwrap();
    let root: OwnedFd = fs::File::open(dir.join("rootfs")).unwrap().into();
    let mut applier = Applier::new(root, Limits { max_unpacked_bytes: 1 << 20, max_entries: 256 });
    for (i, layer) in layers(data).iter().enumerate() {
        if applier.apply(&layer[..], &format!("layer{i}")).is_err() {
            break;
        }
    }
    let _ = applier.finish();
    assert_eq!(listing(&dir), ["canary", "rootfs"], "something was written next to the rootfs");
    assert_eq!(listing(&dir.join("canary")), ["file"], "something was written into the canary");
    assert_eq!(fs::read(dir.join("canary/file")).unwrap(), b"canary");
    let _ = fs::remove_dir_all(&dir);
});
