//! Guest RAM: one memfd, mapped shared. Nothing else maps it any more (virtio-fs copies through
//! its own bounce memfd, `virtio::fs`), but the balloon's MADV_REMOVE needs a shared mapping.

use std::ffi::CStr;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::arch::layout::{MMIO_GAP_END, MMIO_GAP_START};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("memfd_create for guest memory: {0}")]
    Memfd(std::io::Error),
    #[error("sizing guest memory ({0} MiB): {1}")]
    Truncate(u64, std::io::Error),
    #[error("mapping guest memory: {0}")]
    Map(String),
    #[error("memory_mib: {0} is out of range (16 to 65536)")]
    Size(u64),
}

/// The RAM ranges for `size` bytes: below the MMIO gap, and the remainder above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![(GuestAddress(0), MMIO_GAP_START), (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START)]
    }
}

/// Create guest memory of `mib` MiB backed by one memfd (each range at its own file offset).
pub fn create(mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    create_named(mib, c"hull-guest-ram")
}

/// The same, with the memfd named `name` (it shows in /proc/PID/maps), for memory laid out like
/// guest RAM that is not the guest's: virtio-fs's bounce memory.
pub fn create_named(mib: u64, name: &CStr) -> Result<GuestMemoryMmap, MemoryError> {
    if !(16..=65536).contains(&mib) {
        return Err(MemoryError::Size(mib));
    }
    let size = mib << 20;
    // SAFETY: memfd_create takes a valid NUL-terminated name and flags; it returns a new fd or -1.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(MemoryError::Memfd(std::io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).map_err(|e| MemoryError::Truncate(mib, e))?;
    let file = std::sync::Arc::new(file);
    let mut offset = 0u64;
    let ranges: Vec<_> = ram_ranges(size)
        .into_iter()
        .map(|(addr, len)| {
            let fo = FileOffset::from_arc(file.clone(), offset);
            offset += len;
            (addr, len as usize, Some(fo))
        })
        .collect();
    GuestMemoryMmap::from_ranges_with_files(ranges).map_err(|e| MemoryError::Map(e.to_string()))
}

/// Guest memory of `mib` MiB mapped `MAP_PRIVATE` from a snapshot file whose memory starts at
/// `offset`: the file's pages are shared (through the page cache) by every VM mapping it, and
/// a page the guest writes becomes this VM's own copy. The file is never written.
pub fn from_snapshot(file: File, offset: u64, mib: u64) -> Result<GuestMemoryMmap, MemoryError> {
    use vm_memory::mmap::MmapRegionBuilder;
    use vm_memory::GuestRegionMmap;
    if !(16..=65536).contains(&mib) {
        return Err(MemoryError::Size(mib));
    }
    let file = std::sync::Arc::new(file);
    let mut at = offset;
    let mut regions = Vec::new();
    for (addr, len) in ram_ranges(mib << 20) {
        let mapping = MmapRegionBuilder::new(len as usize)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(FileOffset::from_arc(file.clone(), at))
            .build()
            .map_err(|e| MemoryError::Map(e.to_string()))?;
        regions
            .push(GuestRegionMmap::new(mapping, addr).ok_or_else(|| MemoryError::Map(format!("region at {addr:?}")))?);
        at += len;
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Map(e.to_string()))
}

/// Copy `len` bytes of `src`, from `src_offset`, into guest memory at `addr` (one region).
///
/// Guest RAM is a shared memfd, so the bytes go in through its write path, not the mapping:
/// the kernel then allocates each page for a write that fills it, neither zeroing it first nor
/// taking a page fault per page, as reading into the mapping does (on this host a kernel and
/// initrd load went from 9.7 to 6.7 ms). Memory that is not a shared file (a snapshot's
/// private mapping, whose file must never be written) takes the plain read.
pub fn fill_from_file(
    mem: &GuestMemoryMmap,
    addr: GuestAddress,
    src: &File,
    src_offset: u64,
    len: u64,
) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    use vm_memory::{Bytes, GuestMemory, GuestMemoryRegion};
    let out_of_range = || {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{len} bytes at {:#x} are not inside one RAM region", addr.0),
        )
    };
    let region = mem.find_region(addr).ok_or_else(out_of_range)?;
    let in_region = addr.0 - region.start_addr().0;
    if in_region.checked_add(len).is_none_or(|end| end > region.len()) {
        return Err(out_of_range());
    }
    let mut input = src.try_clone()?;
    input.seek(SeekFrom::Start(src_offset))?;
    let shared = region.flags() & libc::MAP_SHARED != 0;
    match region.file_offset().filter(|_| shared) {
        Some(fo) => {
            let mut input = input.take(len);
            // A duplicate shares the memfd's file position; nothing else uses it (guest memory
            // is only reached through the mapping), and this runs before any vCPU exists.
            let mut out = fo.file().try_clone()?;
            out.seek(SeekFrom::Start(fo.start() + in_region))?;
            let copied = std::io::copy(&mut input, &mut out)?;
            if copied != len {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("{copied} of {len} bytes")));
            }
            Ok(())
        }
        None => mem
            .read_exact_volatile_from(addr, &mut input, len as usize)
            .map_err(|e| std::io::Error::other(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_around_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START));
        assert_eq!(r[1], (GuestAddress(MMIO_GAP_END), (4 << 30) - MMIO_GAP_START));
    }

    #[test]
    fn memory_is_memfd_backed() {
        use vm_memory::{GuestMemory, GuestMemoryRegion};
        let m = create(32).unwrap();
        let region = m.iter().next().unwrap();
        assert!(region.file_offset().is_some());
        assert!(create(1).is_err());
    }

    fn temp_file(bytes: &[u8]) -> File {
        use std::io::Write;
        let path = std::env::temp_dir().join(format!("hull-vmm-fill-{}-{}", std::process::id(), bytes.len()));
        let mut f = File::create(&path).unwrap();
        f.write_all(bytes).unwrap();
        let f = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        f
    }

    #[test]
    fn fill_from_file_puts_the_bytes_where_the_guest_reads_them() {
        use vm_memory::Bytes;
        let bytes: Vec<u8> = (0..3 * 4096 + 17).map(|i| (i * 7 + 3) as u8).collect();
        let src = temp_file(&bytes);
        let mem = create(16).unwrap();
        // From an offset in the file, to an address that is not page aligned.
        fill_from_file(&mem, GuestAddress(0x10_0005), &src, 100, bytes.len() as u64 - 100).unwrap();
        let mut back = vec![0u8; bytes.len() - 100];
        mem.read_slice(&mut back, GuestAddress(0x10_0005)).unwrap();
        assert_eq!(back, &bytes[100..]);
        // Around it, memory is still zero.
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0004)).unwrap(), 0);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x10_0005 + back.len() as u64)).unwrap(), 0);
    }

    #[test]
    fn fill_from_file_refuses_what_does_not_fit_or_is_not_there() {
        let src = temp_file(&[1u8; 4096]);
        let mem = create(16).unwrap();
        assert!(fill_from_file(&mem, GuestAddress((16 << 20) - 100), &src, 0, 4096).is_err());
        assert!(fill_from_file(&mem, GuestAddress(16 << 20), &src, 0, 1).is_err());
        // The file ends before `len` bytes.
        let err = fill_from_file(&mem, GuestAddress(0), &src, 0, 8192).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    }

    #[test]
    fn fill_from_file_never_writes_a_private_mapping_s_file() {
        use vm_memory::Bytes;
        let snap = temp_file(&vec![9u8; 16 << 20]);
        let mem = from_snapshot(snap.try_clone().unwrap(), 0, 16).unwrap();
        let src = temp_file(&[5u8; 4096]);
        fill_from_file(&mem, GuestAddress(0x1000), &src, 0, 4096).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 5);
        let mut first = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&snap, &mut first, 0x1000).unwrap();
        assert_eq!(first[0], 9, "the snapshot file was written");
    }
}
