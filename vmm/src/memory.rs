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
}
