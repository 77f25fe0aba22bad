//! The snapshot file, little endian:
//!
//! ```text
//! 0       header (56 bytes; the rest of the first page is zero)
//! 4096    guest memory: its RAM ranges one after the other, as the guest sees them in
//!         address order; all-zero pages are holes, so the file is as sparse as the guest
//! end     the state: JSON of `Saved` (the VM's state, and a CRC-32 per run of memory written)
//! ```
//!
//! Header: magic `HULLSNAP`, format version (u32), zero (u32), memory offset and length, state
//! offset and length (u64 each), the state's CRC-32, and the CRC-32 of the header bytes before
//! it. The header is written last, after the rest is on disk: a file cut short by a crash has
//! no valid header and is refused. Guest memory starts page-aligned, so a restore maps it
//! straight from the file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

use super::{SnapshotError, VmSnapshot};

pub const MAGIC: &[u8; 8] = b"HULLSNAP";
/// Bumped whenever what is saved, or how, changes: an older file is refused, never guessed at.
pub const VERSION: u32 = 1;
const HEADER_LEN: usize = 56;
const PAGE: u64 = 4096;
pub const MEMORY_OFFSET: u64 = PAGE;
/// Far more than any VM's state (a vCPU's is about 30 KiB of JSON): a bigger claim is corrupt.
const MAX_STATE: u64 = 64 << 20;
/// Memory is copied out in runs of at most this many bytes.
const MAX_RUN: u64 = 1 << 20;

/// A run of written (non-zero) guest memory, at `offset` from the start of memory in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
    pub crc32: u32,
}

/// The state as read back ...
#[derive(Deserialize)]
struct Saved {
    snapshot: VmSnapshot,
    extents: Vec<Extent>,
}

/// ... and as written (the same fields, borrowed).
#[derive(Serialize)]
struct ToSave<'a> {
    snapshot: &'a VmSnapshot,
    extents: &'a [Extent],
}

/// A snapshot file whose header and state passed their checks; its memory is checked by
/// [`Loaded::verify_memory`].
pub struct Loaded {
    pub file: File,
    pub snapshot: VmSnapshot,
    pub extents: Vec<Extent>,
    pub memory_len: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io { path: path.display().to_string(), source }
}

fn corrupt(path: &Path, why: impl Into<String>) -> SnapshotError {
    SnapshotError::Corrupt { path: path.display().to_string(), why: why.into() }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Write `snapshot` and `mem` into `file` (empty, opened for writing; `path` names it in
/// errors). The guest must be paused: memory is read as it is.
pub fn write(file: &File, path: &Path, snapshot: &VmSnapshot, mem: &GuestMemoryMmap) -> Result<(), SnapshotError> {
    let memory_len: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(0).map_err(io(path))?;
    // Sized first: what is never written stays a hole.
    file.set_len(MEMORY_OFFSET + memory_len).map_err(io(path))?;
    let mut extents = Vec::new();
    let mut base = 0u64;
    let mut buf = vec![0u8; MAX_RUN as usize];
    for region in mem.iter() {
        let start = region.start_addr();
        let len = region.len();
        let mut off = 0u64;
        while off < len {
            // Holes of the memory file (never touched, or handed back) are skipped unread:
            // reading them would allocate them.
            let Some((data, data_end)) = data_range(region, off, len) else { break };
            off = data;
            // Skip all-zero pages, then take the non-zero ones that follow, up to MAX_RUN.
            let page = &mut buf[..PAGE as usize];
            mem.read_slice(page, GuestAddress(start.0 + off))
                .map_err(|e| SnapshotError::Invalid(format!("reading guest memory: {e}")))?;
            if page.iter().all(|b| *b == 0) {
                off += PAGE;
                continue;
            }
            let mut run = PAGE;
            while run < MAX_RUN && off + run < data_end {
                let next = &mut buf[run as usize..(run + PAGE) as usize];
                mem.read_slice(next, GuestAddress(start.0 + off + run))
                    .map_err(|e| SnapshotError::Invalid(format!("reading guest memory: {e}")))?;
                if next.iter().all(|b| *b == 0) {
                    break;
                }
                run += PAGE;
            }
            let data = &buf[..run as usize];
            file.write_all_at(data, MEMORY_OFFSET + base + off).map_err(io(path))?;
            extents.push(Extent { offset: base + off, len: run, crc32: crc32fast::hash(data) });
            off += run;
        }
        base += len;
    }
    let state = serde_json::to_vec(&ToSave { snapshot, extents: &extents })
        .map_err(|e| SnapshotError::Invalid(format!("encoding the state: {e}")))?;
    let state_offset = MEMORY_OFFSET + memory_len;
    file.write_all_at(&state, state_offset).map_err(io(path))?;
    file.sync_data().map_err(io(path))?;
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&VERSION.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    for v in [MEMORY_OFFSET, memory_len, state_offset, state.len() as u64] {
        header.extend_from_slice(&v.to_le_bytes());
    }
    header.extend_from_slice(&crc32fast::hash(&state).to_le_bytes());
    let crc = crc32fast::hash(&header);
    header.extend_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(header.len(), HEADER_LEN);
    file.write_all_at(&header, 0).map_err(io(path))?;
    file.sync_data().map_err(io(path))?;
    Ok(())
}

/// The first range of `region` at or after `off` (and before `len`) that its memory file
/// holds data for, page-aligned, as offsets into the region; None when only holes are left.
/// Memory without a file, or a file that cannot say, is all data.
fn data_range(region: &vm_memory::GuestRegionMmap, off: u64, len: u64) -> Option<(u64, u64)> {
    use nix::unistd::{lseek, Whence};
    let Some(fo) = region.file_offset() else { return Some((off, len)) };
    let base = fo.start();
    let at = |whence, from: u64| lseek(fo.file(), (base + from) as i64, whence).map(|p| p as u64);
    let data = match at(Whence::SeekData, off) {
        Ok(p) => p.saturating_sub(base) / PAGE * PAGE,
        // ENXIO: no data after `off` in the whole file.
        Err(nix::errno::Errno::ENXIO) => return None,
        Err(_) => return Some((off, len)),
    };
    if data >= len {
        return None;
    }
    let end = at(Whence::SeekHole, data).map_or(len, |p| p.saturating_sub(base).next_multiple_of(PAGE)).min(len);
    Some((data, end))
}

/// Open and check `path`: header, sizes, the state's checksum, and that the memory runs lie
/// inside memory. Guest memory itself is checked by [`Loaded::verify_memory`].
pub fn read(path: &Path) -> Result<Loaded, SnapshotError> {
    let file = File::open(path).map_err(io(path))?;
    let size = file.metadata().map_err(io(path))?.len();
    let mut header = [0u8; HEADER_LEN];
    if size < HEADER_LEN as u64 {
        return Err(corrupt(path, format!("{size} bytes, shorter than a header")));
    }
    file.read_exact_at(&mut header, 0).map_err(io(path))?;
    if &header[..8] != MAGIC {
        return Err(corrupt(path, "not a hull-vmm snapshot (bad magic; an unfinished file has none)"));
    }
    if crc32fast::hash(&header[..52]) != u32_at(&header, 52) {
        return Err(corrupt(path, "the header's checksum does not match"));
    }
    let version = u32_at(&header, 8);
    if version != VERSION {
        return Err(corrupt(path, format!("format version {version}; this hull-vmm reads version {VERSION}")));
    }
    let (memory_offset, memory_len, state_offset, state_len) =
        (u64_at(&header, 16), u64_at(&header, 24), u64_at(&header, 32), u64_at(&header, 40));
    if memory_offset != MEMORY_OFFSET || memory_len % PAGE != 0 || state_offset != MEMORY_OFFSET + memory_len {
        return Err(corrupt(
            path,
            format!("bad layout (memory at {memory_offset}+{memory_len}, state at {state_offset})"),
        ));
    }
    if state_len > MAX_STATE {
        return Err(corrupt(path, format!("a state of {state_len} bytes (at most {MAX_STATE})")));
    }
    if state_offset.checked_add(state_len) != Some(size) {
        return Err(corrupt(
            path,
            format!("{size} bytes, but the header says {} (truncated or appended to)", state_offset + state_len),
        ));
    }
    let mut state = vec![0u8; state_len as usize];
    file.read_exact_at(&mut state, state_offset).map_err(io(path))?;
    if crc32fast::hash(&state) != u32_at(&header, 48) {
        return Err(corrupt(path, "the state's checksum does not match"));
    }
    let saved: Saved = serde_json::from_slice(&state).map_err(|e| corrupt(path, format!("the state: {e}")))?;
    let mut end = 0u64;
    for e in &saved.extents {
        if e.offset < end || e.len == 0 || e.offset % PAGE != 0 || e.len % PAGE != 0 || e.len > MAX_RUN {
            return Err(corrupt(path, format!("bad memory run {}+{}", e.offset, e.len)));
        }
        end = e.offset.checked_add(e.len).filter(|x| *x <= memory_len).ok_or_else(|| {
            corrupt(path, format!("memory run {}+{} lies outside {memory_len} bytes of memory", e.offset, e.len))
        })?;
    }
    Ok(Loaded { file, snapshot: saved.snapshot, extents: saved.extents, memory_len })
}

impl Loaded {
    /// Read every run of memory the file holds and check its CRC-32.
    pub fn verify_memory(&self, path: &Path) -> Result<(), SnapshotError> {
        let mut buf = vec![0u8; MAX_RUN as usize];
        for e in &self.extents {
            let data = &mut buf[..e.len as usize];
            self.file.read_exact_at(data, MEMORY_OFFSET + e.offset).map_err(io(path))?;
            if crc32fast::hash(data) != e.crc32 {
                return Err(corrupt(path, format!("guest memory at {:#x}: the checksum does not match", e.offset)));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::cpu::VcpuState;
    use crate::snapshot::vm::VmState;
    use crate::snapshot::{FileId, Identity, SerialState};
    use std::os::unix::fs::MetadataExt;

    fn sample() -> VmSnapshot {
        let id = FileId { path: "/k".into(), size: 1, mtime_ns: 2, inode: 3 };
        let vcpu = VcpuState {
            mp_state: Default::default(),
            regs: kvm_bindings::kvm_regs { rip: 0x1234, ..Default::default() },
            sregs: Default::default(),
            xsave: Default::default(),
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            msrs: vec![kvm_bindings::kvm_msr_entry { index: 0x10, data: 99, ..Default::default() }],
            events: Default::default(),
            tsc_khz: Some(2_000_000),
        };
        VmSnapshot {
            identity: Identity {
                vmm: "hull-vmm test".into(),
                kernel: id,
                initrd: None,
                cmdline: "console=ttyS0".into(),
                vcpus: 1,
                memory_mib: 16,
                devices: vec![],
                cpuid: 7,
            },
            vcpus: vec![vcpu],
            vm: VmState {
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
                clock: Default::default(),
            },
            serial: SerialState { scratch: 5, ..Default::default() },
        }
    }

    /// 16 MiB of guest memory with two written runs: one page at 1 MiB, three at 8 MiB.
    fn written(dir: &Path) -> (std::path::PathBuf, GuestMemoryMmap) {
        let mem = crate::memory::create(16).unwrap();
        mem.write_slice(&[0xab; 4096], GuestAddress(1 << 20)).unwrap();
        mem.write_slice(&[0x5a; 3 * 4096], GuestAddress(8 << 20)).unwrap();
        mem.write_slice(b"the end", GuestAddress((8 << 20) + 3 * 4096 - 7)).unwrap();
        let path = dir.join("snap");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        write(&file, &path, &sample(), &mem).unwrap();
        (path, mem)
    }

    fn tmpdir(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("hull-snapshot-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_snapshot_reads_back_whole_and_sparse() {
        let dir = tmpdir("roundtrip");
        let (path, mem) = written(&dir);
        let loaded = read(&path).unwrap();
        loaded.verify_memory(&path).unwrap();
        assert_eq!(loaded.snapshot.identity, sample().identity);
        assert_eq!(loaded.snapshot.vcpus[0].regs.rip, 0x1234);
        assert_eq!(loaded.snapshot.vcpus[0].msrs[0].data, 99);
        assert_eq!(loaded.snapshot.serial.scratch, 5);
        // Only the written pages are in the file, as two runs.
        let runs: Vec<(u64, u64)> = loaded.extents.iter().map(|e| (e.offset, e.len)).collect();
        assert_eq!(runs, [(1 << 20, 4096), (8 << 20, 3 * 4096)]);
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.blocks() * 512 < 1 << 20, "{} bytes allocated for 16 KiB of memory", meta.blocks() * 512);
        // Mapped back, memory is what was written, zeros elsewhere.
        let file = std::fs::File::open(&path).unwrap();
        let back = crate::memory::from_snapshot(file, MEMORY_OFFSET, 16).unwrap();
        let mut a = vec![0u8; 16 << 20];
        let mut b = vec![0u8; 16 << 20];
        mem.read_slice(&mut a, GuestAddress(0)).unwrap();
        back.read_slice(&mut b, GuestAddress(0)).unwrap();
        assert!(a == b);
        // A write to the restored memory stays private: the file keeps the saved bytes.
        back.write_slice(&[1; 4096], GuestAddress(1 << 20)).unwrap();
        read(&path).unwrap().verify_memory(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    type Damage = Box<dyn FnOnce(&Path, &std::fs::File)>;

    fn damaged(name: &str, damage: impl FnOnce(&Path, &std::fs::File)) -> SnapshotError {
        let dir = tmpdir(name);
        let (path, _) = written(&dir);
        let f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        damage(&path, &f);
        let err = match read(&path) {
            Ok(l) => l.verify_memory(&path).unwrap_err(),
            Err(e) => e,
        };
        std::fs::remove_dir_all(&dir).unwrap();
        err
    }

    fn flip(f: &std::fs::File, at: u64) {
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    }

    #[test]
    fn a_damaged_snapshot_is_refused_saying_why() {
        let state_at = MEMORY_OFFSET + (16 << 20);
        let cases: Vec<(&str, Damage, &str)> = vec![
            ("truncated", Box::new(|_, f| f.set_len(f.metadata().unwrap().len() - 100).unwrap()), "truncated"),
            ("appended", Box::new(|_, f| f.set_len(f.metadata().unwrap().len() + 1).unwrap()), "appended"),
            ("empty", Box::new(|_, f| f.set_len(0).unwrap()), "shorter than a header"),
            ("unfinished", Box::new(|_, f| f.write_all_at(&[0; HEADER_LEN], 0).unwrap()), "bad magic"),
            ("header", Box::new(|_, f| flip(f, 20)), "header's checksum"),
            ("state", Box::new(move |_, f| flip(f, state_at + 10)), "state's checksum"),
            ("memory", Box::new(|_, f| flip(f, MEMORY_OFFSET + (8 << 20) + 5)), "guest memory at 0x800000"),
            (
                "version",
                Box::new(|_, f| {
                    let mut h = [0u8; HEADER_LEN];
                    f.read_exact_at(&mut h, 0).unwrap();
                    h[8..12].copy_from_slice(&2u32.to_le_bytes());
                    let crc = crc32fast::hash(&h[..52]);
                    h[52..].copy_from_slice(&crc.to_le_bytes());
                    f.write_all_at(&h, 0).unwrap();
                }),
                "format version 2",
            ),
        ];
        for (name, damage, want) in cases {
            let err = damaged(name, damage).to_string();
            assert!(err.contains(want), "{name}: {err}");
            assert!(err.contains("snapshot"), "{name}: the error names no file: {err}");
        }
    }

    #[test]
    fn another_vms_snapshot_is_refused_naming_the_field() {
        let saved = sample().identity;
        let mut now = saved.clone();
        now.memory_mib = 32;
        let err = saved.check(&now, Path::new("/t/snap")).unwrap_err().to_string();
        assert!(err.contains("memory_mib differs (snapshot: 16, now: 32)"), "{err}");
        let mut now = saved.clone();
        now.kernel.mtime_ns += 1;
        assert!(saved.check(&now, Path::new("/t/snap")).unwrap_err().to_string().contains("kernel differs"));
        saved.check(&saved.clone(), Path::new("/t/snap")).unwrap();
    }
}
