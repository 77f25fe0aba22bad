//! Loading a kernel (64-bit ELF such as vmlinux, or a bzImage), its initrd and command line, and
//! writing the zero page (`struct boot_params`) with the e820 map.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

use super::layout::*;
use crate::memory::ram_ranges;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("kernel {path}: {source}")]
    KernelFile { path: String, source: std::io::Error },
    #[error("kernel {path}: neither a 64-bit ELF nor a bzImage")]
    KernelFormat { path: String },
    #[error("kernel {path}: this bzImage has no 64-bit entry point (XLF_KERNEL_64)")]
    KernelNot64 { path: String },
    #[error("kernel {path}: {source}")]
    KernelLoad { path: String, source: loader::Error },
    #[error("initrd {path}: {source}")]
    InitrdFile { path: String, source: std::io::Error },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below the MMIO gap")]
    InitrdTooBig { path: String, size: u64 },
    #[error("cmdline: {0}")]
    Cmdline(String),
    #[error("writing boot data into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
/// Offset of the 64-bit entry point (startup_64) in a bzImage's protected-mode part.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

/// xloadflags bit: the bzImage has a 64-bit entry point at load address + 0x200.
const XLF_KERNEL_64: u16 = 1;

/// What loading produced: where to jump, the bzImage's setup header if there was one, and the
/// first address past what the kernel will occupy (for a bzImage, including the room its
/// decompressor needs: `init_size` from where it decompresses to).
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub setup_header: Option<setup_header>,
    pub end: u64,
}

/// Load `path`, choosing the loader by its magic number.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let display = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::KernelFile { path: display.clone(), source })?;
    let mut magic = [0u8; 4];
    file.read_exact(&mut magic).map_err(|source| BootError::KernelFile { path: display.clone(), source })?;
    let load_err = |source| BootError::KernelLoad { path: display.clone(), source };
    if &magic == b"\x7fELF" {
        let r = Elf::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
        return Ok(LoadedKernel { entry: r.kernel_load, setup_header: None, end: r.kernel_end });
    }
    // A bzImage carries "HdrS" at 0x202.
    let mut hdr = [0u8; 4];
    file.seek(SeekFrom::Start(0x202))
        .and_then(|_| file.read_exact(&mut hdr))
        .map_err(|source| BootError::KernelFile { path: display.clone(), source })?;
    if u32::from_le_bytes(hdr) != KERNEL_HDR_MAGIC {
        return Err(BootError::KernelFormat { path: display });
    }
    let r = BzImage::load(mem, None, &mut file, Some(GuestAddress(HIMEM_START))).map_err(load_err)?;
    let hdr = r.setup_header.ok_or_else(|| BootError::KernelFormat { path: display.clone() })?;
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(BootError::KernelNot64 { path: display });
    }
    let decompressed_end = hdr.pref_address.max(r.kernel_load.0) + u64::from(hdr.init_size);
    Ok(LoadedKernel {
        entry: GuestAddress(r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
        setup_header: Some(hdr),
        end: r.kernel_end.max(decompressed_end),
    })
}

/// Place the initrd at the top of low memory (below the kernel's `initrd_addr_max` when it
/// gives one), page aligned, above the kernel. Returns (address, size).
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, kernel: &LoadedKernel) -> Result<(u64, u64), BootError> {
    let display = path.display().to_string();
    let mut file = File::open(path).map_err(|source| BootError::InitrdFile { path: display.clone(), source })?;
    let size = file.metadata().map_err(|source| BootError::InitrdFile { path: display.clone(), source })?.len();
    let mut top = mem.last_addr().0.min(MMIO_GAP_START - 1);
    if let Some(max) = kernel.setup_header.map(|h| u64::from(h.initrd_addr_max)).filter(|m| *m > 0) {
        top = top.min(max);
    }
    let addr = (top + 1).checked_sub(size).map(|a| a & !0xfff).filter(|a| *a >= kernel.end);
    let Some(addr) = addr else {
        return Err(BootError::InitrdTooBig { path: display, size });
    };
    mem.read_exact_volatile_from(GuestAddress(addr), &mut file, size as usize).map_err(BootError::Memory)?;
    Ok((addr, size))
}

/// Write the command line.
pub fn load_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    let mut cl = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| BootError::Cmdline(e.to_string()))?;
    cl.insert_str(cmdline).map_err(|e| BootError::Cmdline(e.to_string()))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &cl).map_err(|e| BootError::Cmdline(e.to_string()))
}

/// The e820 map the guest is told about: RAM below the EBDA, and from 1 MiB up (split around
/// the MMIO gap). The EBDA itself (with the MP table) is left out, so it reads as reserved.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64)> {
    let mut map = vec![(0, EBDA_START)];
    for (addr, len) in ram_ranges(mem_size) {
        if addr.0 == 0 {
            map.push((HIMEM_START, len - HIMEM_START));
        } else {
            map.push((addr.0, len));
        }
    }
    map
}

/// Write the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<(u64, u64)>,
    mem_size: u64,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    }
    let hdr = &mut params.hdr;
    hdr.type_of_loader = KERNEL_LOADER_OTHER;
    hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    hdr.header = KERNEL_HDR_MAGIC;
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.cmdline_size = cmdline_len as u32 + 1;
    hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    if let Some((addr, size)) = initrd {
        hdr.ramdisk_image = addr as u32;
        hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(mem_size);
    for (i, (addr, size)) in map.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry { addr: *addr, size: *size, type_: E820_RAM };
    }
    params.e820_entries = map.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn e820_leaves_out_the_ebda_and_the_mmio_gap() {
        let m = e820_map(128 << 20);
        assert_eq!(m, vec![(0, EBDA_START), (HIMEM_START, (128 << 20) - HIMEM_START)]);
        let m = e820_map(4 << 30);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].0 + m[1].1, MMIO_GAP_START);
        assert_eq!(m[2].0, MMIO_GAP_END);
    }

    #[test]
    fn refuses_a_file_that_is_no_kernel() {
        let mem = crate::memory::create(16).unwrap();
        let dir = std::env::temp_dir().join(format!("hull-vmm-boot-{}", std::process::id()));
        std::fs::write(&dir, vec![0u8; 4096]).unwrap();
        let err = load_kernel(&mem, &dir).err().unwrap().to_string();
        std::fs::remove_file(&dir).unwrap();
        assert!(err.contains("neither a 64-bit ELF nor a bzImage"), "{err}");
    }
}
