//! Guest physical memory map. The low addresses follow the Linux x86 boot protocol and match what
//! Firecracker and QEMU's microvm use, so a stock kernel finds everything where it looks.

/// Global descriptor table (five entries) and, right after it, the empty interrupt descriptor
/// table used for the 64-bit entry.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x528;
/// Linux's "zero page": `struct boot_params`.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU (grows down, below the zero page's next page).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity-mapping page tables: PML4, one PDPT, one page directory (1 GiB in 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// Extended BIOS data area; the MP table lives here, where the kernel scans for it.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of "high" memory, where the kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit MMIO hole: virtio-mmio devices live at its start; RAM above it continues at 4 GiB.
pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Each virtio-mmio device gets one 4 KiB window.
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IO-APIC and local APIC windows inside the gap, for the MP table.
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const APIC_ADDR: u32 = 0xfee0_0000;
/// First GSI handed to virtio-mmio devices (0-4 are legacy ISA: timer, keyboard, cascade, COM2, COM1).
pub const FIRST_DEVICE_IRQ: u32 = 5;
/// IO-APIC pins; the MP table announces this many.
pub const IRQ_MAX: u32 = 23;
/// KVM's TSS and identity-map pages, placed just below the IO-APIC as QEMU and Firecracker do.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
