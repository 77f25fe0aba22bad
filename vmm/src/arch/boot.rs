//! Loading a kernel (64-bit ELF such as vmlinux, or a bzImage), its initrd and command line, and
//! writing the zero page (`struct boot_params`) with the e820 map.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, BzImage, Cmdline, KernelLoader};
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
    #[error("kernel {path}: {what}")]
    KernelElf { path: String, what: String },
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
        return load_elf(mem, &file, &display);
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

const ELF_HEADER_LEN: usize = 64;
const ELF_PHDR_LEN: usize = 56;
const ELF_MACHINE_X86_64: u16 = 62;
const ELF_PT_LOAD: u32 = 1;
/// More program headers than any kernel has: a bound on what is read.
const ELF_MAX_PHDRS: u16 = 64;

/// Load a 64-bit x86 ELF kernel (vmlinux) by its program headers: each PT_LOAD segment goes to
/// its physical address, at or above 1 MiB, through guest memory's write path
/// ([`crate::memory::fill_from_file`]; linux-loader reads into the mapping, a page fault and a
/// zeroed page per 4 KiB). Entry is `e_entry`, which must lie in a loaded segment; a segment's
/// memory past its file bytes (bss) is fresh memory, already zero.
fn load_elf(mem: &GuestMemoryMmap, file: &File, path: &str) -> Result<LoadedKernel, BootError> {
    use std::os::unix::fs::FileExt;
    let bad = |what: String| BootError::KernelElf { path: path.to_string(), what };
    let io = |source| BootError::KernelFile { path: path.to_string(), source };
    let size = file.metadata().map_err(io)?.len();
    let mut eh = [0u8; ELF_HEADER_LEN];
    file.read_exact_at(&mut eh, 0).map_err(io)?;
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    if eh[4] != 2 || eh[5] != 1 || u16_at(&eh, 18) != ELF_MACHINE_X86_64 {
        return Err(bad("not a little-endian 64-bit x86 ELF".into()));
    }
    let (entry, phoff, phentsize, phnum) = (u64_at(&eh, 24), u64_at(&eh, 32), u16_at(&eh, 54), u16_at(&eh, 56));
    if usize::from(phentsize) != ELF_PHDR_LEN || phnum == 0 || phnum > ELF_MAX_PHDRS {
        return Err(bad(format!("program headers: {phnum} of {phentsize} bytes")));
    }
    let mut ph = vec![0u8; ELF_PHDR_LEN * usize::from(phnum)];
    file.read_exact_at(&mut ph, phoff).map_err(io)?;
    let low_end = mem.last_addr().0.min(MMIO_GAP_START - 1) + 1;
    let (mut end, mut entry_loaded) = (0u64, false);
    for h in ph.chunks_exact(ELF_PHDR_LEN) {
        if u32_at(h, 0) != ELF_PT_LOAD {
            continue;
        }
        let (offset, paddr, filesz, memsz) = (u64_at(h, 8), u64_at(h, 24), u64_at(h, 32), u64_at(h, 40));
        let seg_end = paddr.checked_add(memsz).filter(|e| *e <= low_end);
        let Some(seg_end) = seg_end.filter(|_| paddr >= HIMEM_START && filesz <= memsz) else {
            return Err(bad(format!(
                "segment at {paddr:#x} ({memsz:#x} bytes) is not in RAM from 1 MiB to the MMIO gap"
            )));
        };
        if offset.checked_add(filesz).is_none_or(|e| e > size) {
            return Err(bad(format!("segment at {paddr:#x} runs past the end of the file")));
        }
        if filesz > 0 {
            crate::memory::fill_from_file(mem, GuestAddress(paddr), file, offset, filesz).map_err(io)?;
        }
        entry_loaded |= (paddr..seg_end).contains(&entry);
        end = end.max(seg_end);
    }
    if !entry_loaded {
        return Err(bad(format!("entry point {entry:#x} is in no loaded segment")));
    }
    Ok(LoadedKernel { entry: GuestAddress(entry), setup_header: None, end })
}

/// Place the initrd at the top of low memory (below the kernel's `initrd_addr_max` when it
/// gives one), page aligned, above the kernel. Returns (address, size).
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path, kernel: &LoadedKernel) -> Result<(u64, u64), BootError> {
    let display = path.display().to_string();
    let file = File::open(path).map_err(|source| BootError::InitrdFile { path: display.clone(), source })?;
    let size = file.metadata().map_err(|source| BootError::InitrdFile { path: display.clone(), source })?.len();
    let mut top = mem.last_addr().0.min(MMIO_GAP_START - 1);
    if let Some(max) = kernel.setup_header.map(|h| u64::from(h.initrd_addr_max)).filter(|m| *m > 0) {
        top = top.min(max);
    }
    let addr = (top + 1).checked_sub(size).map(|a| a & !0xfff).filter(|a| *a >= kernel.end);
    let Some(addr) = addr else {
        return Err(BootError::InitrdTooBig { path: display, size });
    };
    crate::memory::fill_from_file(mem, GuestAddress(addr), &file, 0, size)
        .map_err(|source| BootError::InitrdFile { path: display, source })?;
    Ok((addr, size))
}

/// x86 Linux keeps this much of the command line (COMMAND_LINE_SIZE 2048, with its NUL) and
/// silently drops the rest: the device parameters, which come last.
pub const LINUX_CMDLINE_MAX: usize = 2047;

/// Write the command line (with the device parameters already appended).
pub fn load_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.len() > LINUX_CMDLINE_MAX {
        return Err(BootError::Cmdline(format!(
            "{} bytes with the device parameters; the guest kernel keeps only {LINUX_CMDLINE_MAX} and would lose its devices",
            cmdline.len()
        )));
    }
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

    /// A 64-bit x86 ELF with PT_LOAD segments (paddr, file bytes, memsz) and a non-load one.
    fn elf(entry: u64, segments: &[(u64, Vec<u8>, u64)]) -> Vec<u8> {
        let phnum = segments.len() + 1;
        let mut data_at = ELF_HEADER_LEN + ELF_PHDR_LEN * phnum;
        let mut out = vec![0u8; data_at];
        out[..4].copy_from_slice(b"\x7fELF");
        out[4] = 2;
        out[5] = 1;
        out[6] = 1;
        out[16..18].copy_from_slice(&2u16.to_le_bytes());
        out[18..20].copy_from_slice(&ELF_MACHINE_X86_64.to_le_bytes());
        out[20..24].copy_from_slice(&1u32.to_le_bytes());
        out[24..32].copy_from_slice(&entry.to_le_bytes());
        out[32..40].copy_from_slice(&(ELF_HEADER_LEN as u64).to_le_bytes());
        out[52..54].copy_from_slice(&(ELF_HEADER_LEN as u16).to_le_bytes());
        out[54..56].copy_from_slice(&(ELF_PHDR_LEN as u16).to_le_bytes());
        out[56..58].copy_from_slice(&(phnum as u16).to_le_bytes());
        // The first program header is a PT_NOTE, which is skipped.
        out[ELF_HEADER_LEN..ELF_HEADER_LEN + 4].copy_from_slice(&4u32.to_le_bytes());
        for (i, (paddr, bytes, memsz)) in segments.iter().enumerate() {
            let h = ELF_HEADER_LEN + ELF_PHDR_LEN * (i + 1);
            out[h..h + 4].copy_from_slice(&ELF_PT_LOAD.to_le_bytes());
            out[h + 8..h + 16].copy_from_slice(&(data_at as u64).to_le_bytes());
            out[h + 16..h + 24].copy_from_slice(&(0xffff_ffff_8000_0000 + paddr).to_le_bytes());
            out[h + 24..h + 32].copy_from_slice(&paddr.to_le_bytes());
            out[h + 32..h + 40].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
            out[h + 40..h + 48].copy_from_slice(&memsz.to_le_bytes());
            out.extend_from_slice(bytes);
            data_at += bytes.len();
        }
        out
    }

    fn file_with(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = std::env::temp_dir().join(format!("hull-vmm-boot-{name}-{}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn an_elf_kernel_loads_as_linux_loader_loads_it() {
        let text: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let data = vec![0x5au8; 300];
        let image = elf(0x20_0010, &[(0x20_0000, text.clone(), 0x4000), (0x30_0000, data.clone(), 0x1000)]);
        let path = file_with("elf", &image);
        let ours_mem = crate::memory::create(16).unwrap();
        let ours = load_kernel(&ours_mem, &path).unwrap();
        let theirs_mem = crate::memory::create(16).unwrap();
        let theirs = linux_loader::loader::Elf::load(
            &theirs_mem,
            None,
            &mut File::open(&path).unwrap(),
            Some(GuestAddress(HIMEM_START)),
        )
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!((ours.entry, ours.end), (theirs.kernel_load, theirs.kernel_end));
        assert_eq!(ours.end, 0x30_1000);
        let mut a = vec![0u8; 0x20_0000];
        let mut b = vec![0u8; 0x20_0000];
        ours_mem.read_slice(&mut a, GuestAddress(0x20_0000)).unwrap();
        theirs_mem.read_slice(&mut b, GuestAddress(0x20_0000)).unwrap();
        assert!(a == b, "guest memory differs from linux-loader's");
        assert_eq!(&a[..text.len()], &text[..]);
        assert_eq!(&a[0x10_0000..0x10_0000 + data.len()], &data[..]);
    }

    #[test]
    fn an_elf_kernel_out_of_bounds_is_refused_with_the_reason() {
        let cases = [
            (elf(0x20_0000, &[(0x8_0000, vec![1; 16], 16)]), "is not in RAM from 1 MiB"),
            (elf(0x20_0000, &[(0xff_0000, vec![1; 16], 0x2_0000)]), "is not in RAM from 1 MiB"),
            (elf(0x20_0000, &[(0x20_0000, vec![1; 32], 16)]), "is not in RAM from 1 MiB"),
            (elf(0x90_0000, &[(0x20_0000, vec![1; 16], 16)]), "entry point 0x900000 is in no loaded segment"),
        ];
        for (i, (image, want)) in cases.iter().enumerate() {
            let path = file_with(&format!("bad{i}"), image);
            let err = load_kernel(&crate::memory::create(16).unwrap(), &path).err().unwrap().to_string();
            std::fs::remove_file(&path).unwrap();
            assert!(err.contains(want), "case {i}: {err}");
        }
        // A segment that says it has more file bytes than the file.
        let mut image = elf(0x20_0000, &[(0x20_0000, vec![1; 16], 16)]);
        image.truncate(image.len() - 8);
        let path = file_with("short", &image);
        let err = load_kernel(&crate::memory::create(16).unwrap(), &path).err().unwrap().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(err.contains("runs past the end of the file"), "{err}");
    }

    #[test]
    fn a_command_line_the_kernel_would_cut_is_refused() {
        let mem = crate::memory::create(16).unwrap();
        load_cmdline(&mem, &"x".repeat(LINUX_CMDLINE_MAX)).unwrap();
        let err = load_cmdline(&mem, &"x".repeat(LINUX_CMDLINE_MAX + 1)).unwrap_err().to_string();
        assert!(err.contains("2048 bytes with the device parameters"), "{err}");
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
