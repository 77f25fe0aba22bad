//! Initial vCPU state for the 64-bit boot protocol: flat GDT, identity-mapped first GiB, long
//! mode on, `rsi` pointing at the zero page.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::*;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot page tables or GDT into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("{0}: {1}")]
    Kvm(&'static str, kvm_ioctls::Error),
}

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// A GDT entry from flags, base and limit, in the processor's scattered layout.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM segment register matching GDT entry `index`.
fn segment(entry: u64, index: u8) -> kvm_segment {
    let bit = |shift: u64| ((entry >> shift) & 1) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | (((entry >> 56) & 0xff) << 24),
        limit: (((entry >> 32) & 0x000f_0000) | (entry & 0x0000_ffff)) as u32,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        padding: 0,
        unusable: u8::from(bit(47) == 0),
    }
}

/// Write the GDT, IDT and identity page tables, and load them into `sregs`.
pub fn setup_sregs(mem: &GuestMemoryMmap, vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut sregs = vcpu.get_sregs().map_err(|e| RegsError::Kvm("KVM_GET_SREGS", e))?;

    // The 64-bit boot protocol (Documentation/arch/x86/boot.rst) wants flat segments at
    // __BOOT_CS = 0x10 and __BOOT_DS = 0x18; a bzImage's decompressor relies on them.
    let gdt: [u64; 5] = [
        gdt_entry(0, 0, 0),            // null
        gdt_entry(0, 0, 0),            // unused
        gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code, selector 0x10
        gdt_entry(0xc093, 0, 0xfffff), // data, selector 0x18
        gdt_entry(0x808b, 0, 0xfffff), // TSS, selector 0x20
    ];
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + (i as u64) * 8))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;

    let code = segment(gdt[2], 2);
    let data = segment(gdt[3], 3);
    let tss = segment(gdt[4], 4);
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    // Identity-map the first GiB with 2 MiB pages: enough for the kernel's early code, which
    // builds its own tables before touching anything above.
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))?;
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
    sregs.efer |= EFER_LME | EFER_LMA;

    vcpu.set_sregs(&sregs).map_err(|e| RegsError::Kvm("KVM_SET_SREGS", e))
}

/// General registers at entry: `rip` = kernel entry, `rsi` = zero page (boot protocol).
pub fn setup_regs(vcpu: &VcpuFd, entry: u64) -> Result<(), RegsError> {
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(|e| RegsError::Kvm("KVM_SET_REGS", e))
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() };
    vcpu.set_fpu(&fpu).map_err(|e| RegsError::Kvm("KVM_SET_FPU", e))
}

/// Route the local APIC's LINT0 to ExtINT (the PIC) and LINT1 to NMI, as firmware would.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    const APIC_LVT0: usize = 0x350;
    const APIC_LVT1: usize = 0x360;
    const MODE_EXTINT: u32 = 0x7;
    const MODE_NMI: u32 = 0x4;
    let mut lapic = vcpu.get_lapic().map_err(|e| RegsError::Kvm("KVM_GET_LAPIC", e))?;
    for (reg, mode) in [(APIC_LVT0, MODE_EXTINT), (APIC_LVT1, MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().iter().enumerate() {
            lapic.regs[reg + i] = *b as _;
        }
    }
    vcpu.set_lapic(&lapic).map_err(|e| RegsError::Kvm("KVM_SET_LAPIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_back() {
        let code = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.l, code.db, code.present, code.type_, code.selector), (1, 0, 1, 0xb, 8));
        assert_eq!(code.limit, 0xfffff);
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.l, data.db, data.g, data.type_), (0, 1, 1, 0x3));
        assert_eq!(segment(0, 0).unusable, 1);
    }
}
