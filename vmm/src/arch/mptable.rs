//! The Intel MultiProcessor table: how a kernel without ACPI learns about its CPUs, the IO-APIC
//! and how ISA interrupts are wired. Written into the EBDA, where Linux scans for "_MP_".

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{APIC_ADDR, EBDA_START, IOAPIC_ADDR, IRQ_MAX};

#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    #[error("MP table: cannot describe {0} vCPUs (1 to {max})", max = crate::config::MAX_VCPUS)]
    CpuCount(u8),
    #[error("writing the MP table: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
const CPU_STEPPING: u32 = 0x600;
const CPU_FEATURE_APIC: u32 = 1 << 9;
const CPU_FEATURE_FPU: u32 = 1 << 0;
const MP_IRQ_INT: u8 = 0;
const MP_IRQ_NMI: u8 = 1;
const MP_IRQ_EXTINT: u8 = 3;

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)).wrapping_neg()
}

/// Build the floating pointer and configuration table for `cpus` vCPUs, as bytes to be placed
/// at `base`.
pub fn build(cpus: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    // Beyond MAX_VCPUS the table would outgrow the 1 KiB EBDA window it lives in.
    if cpus == 0 || cpus > crate::config::MAX_VCPUS {
        return Err(MpTableError::CpuCount(cpus));
    }
    let ioapic_id = cpus + 1;
    let table_addr = base as u32 + 16;

    let mut entries = Vec::new();
    for cpu in 0..cpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[0, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_STEPPING.to_le_bytes());
        entries.extend_from_slice(&(CPU_FEATURE_APIC | CPU_FEATURE_FPU).to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
    }
    entries.extend_from_slice(&[1, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[2, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDR.to_le_bytes());
    for irq in 0..=IRQ_MAX as u8 {
        // type 3 (I/O interrupt): conforming polarity/trigger, ISA bus irq -> IO-APIC pin.
        entries.extend_from_slice(&[3, MP_IRQ_INT, 0, 0, 0, irq, ioapic_id, irq]);
    }
    // type 4 (local interrupt): ExtINT on LINT0 of every CPU, NMI on LINT1 of every CPU.
    entries.extend_from_slice(&[4, MP_IRQ_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[4, MP_IRQ_NMI, 0, 0, 0, 0, 0xff, 1]);
    let entry_count = cpus as u16 + 2 + (IRQ_MAX as u16 + 1) + 2;

    let mut header = Vec::with_capacity(44);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"HULL    ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    header.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&APIC_ADDR.to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes()); // extended table length + checksum + reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_addr.to_le_bytes());
    floating.extend_from_slice(&[1, 4, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// Write the MP table into the EBDA.
pub fn setup(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    let table = build(cpus, EBDA_START)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_counts_are_right() {
        let t = build(3, EBDA_START).unwrap();
        assert_eq!(&t[0..4], b"_MP_");
        assert_eq!(t[0..16].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let table = &t[16..];
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(table.iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 3 + 2 + 24 + 2);
        assert!(build(0, EBDA_START).is_err());
        assert!(build(crate::config::MAX_VCPUS + 1, EBDA_START).is_err());
        // The largest table must fit below the end of base memory.
        let big = build(crate::config::MAX_VCPUS, EBDA_START).unwrap();
        assert!(EBDA_START + big.len() as u64 <= 0xa0000);
    }
}
