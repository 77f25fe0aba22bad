//! CPUID for each vCPU: what KVM supports (`KVM_GET_SUPPORTED_CPUID`), normalised the way
//! Firecracker does it: a per-vCPU APIC id and a plain topology (one thread per core, all cores
//! in one package), the hypervisor bit set, and no performance-monitoring leaf (no PMU is
//! virtualised, so a guest must not think one exists).

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_POWER_MGMT: u32 = 0x6;
const LEAF_PMU: u32 = 0xa;
const LEAF_EXT_TOPOLOGY: u32 = 0xb;
const LEAF_V2_EXT_TOPOLOGY: u32 = 0x1f;
/// AMD: address sizes and core count (ECX), and extended APIC id / core id.
const LEAF_AMD_SIZES: u32 = 0x8000_0008;
const LEAF_AMD_EXT_APIC: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Perfmon and debug capability MSR: meaningless without a virtual PMU.
const ECX_PDCM: u32 = 1 << 15;
const EDX_HTT: u32 = 1 << 28;
/// Leaf 6 EAX: turbo boost (bit 1) and the hardware-P-state bits (7..=11) are host things.
const POWER_MGMT_EAX_HIDE: u32 = (1 << 1) | (0x1f << 7);
/// Leaf 6 ECX bit 3: energy/performance bias MSR, not emulated.
const POWER_MGMT_ECX_EPB: u32 = 1 << 3;

const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;

/// Bits needed to number `n` things (ceil(log2 n)).
fn bits_for(n: u32) -> u32 {
    if n <= 1 {
        0
    } else {
        32 - (n - 1).leading_zeros()
    }
}

/// Normalise `entries` for vCPU `cpu_index` of `cpu_count`.
pub fn filter(entries: &mut [kvm_cpuid_entry2], cpu_index: u8, cpu_count: u8, tsc_deadline: bool) {
    let count = u32::from(cpu_count);
    let apic_id = u32::from(cpu_index);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                // EBX: APIC id [31:24], logical processors per package [23:16], CLFLUSH 8x8 bytes.
                e.ebx = (apic_id << 24) | (count << 16) | (8 << 8) | (e.ebx & 0xff);
                e.ecx |= ECX_HYPERVISOR;
                e.ecx &= !ECX_PDCM;
                if tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX [31:26]: cores per package - 1. [25:14]: threads sharing this cache - 1:
                // one thread for L1/L2, the whole package for L3.
                let level = (e.eax >> 5) & 0x7;
                let sharing = if level >= 3 { count - 1 } else { 0 };
                e.eax = (e.eax & 0x3fff) | (sharing << 14) | ((count - 1) << 26);
            }
            LEAF_POWER_MGMT => {
                e.eax &= !POWER_MGMT_EAX_HIDE;
                e.ecx &= !POWER_MGMT_ECX_EPB;
            }
            LEAF_PMU => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_EXT_TOPOLOGY | LEAF_V2_EXT_TOPOLOGY => {
                e.edx = apic_id;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = (LEVEL_TYPE_SMT << 8) | e.index;
                    }
                    1 => {
                        e.eax = bits_for(count);
                        e.ebx = count;
                        e.ecx = (LEVEL_TYPE_CORE << 8) | e.index;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_AMD_SIZES => {
                // ECX [15:12]: APIC id bits for cores; [7:0]: cores per package - 1.
                e.ecx = (e.ecx & !0xf0ff) | (bits_for(count) << 12) | (count - 1);
            }
            LEAF_AMD_EXT_APIC => {
                // EAX: extended APIC id; EBX [7:0]: core id, [15:8]: threads per core - 1;
                // ECX: node 0, one node per package.
                e.eax = apic_id;
                e.ebx = apic_id & 0xff;
                e.ecx = 0;
            }
            _ => {}
        }
    }
}

/// A filtered copy of `supported` for one vCPU.
pub fn for_vcpu(supported: &CpuId, cpu_index: u8, cpu_count: u8, tsc_deadline: bool) -> CpuId {
    let mut cpuid = supported.clone();
    filter(cpuid.as_mut_slice(), cpu_index, cpu_count, tsc_deadline);
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 { function, index, eax: 0xffff_ffff, ebx: 0xffff_ffff, ..Default::default() }
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_topology() {
        let mut e = vec![entry(1, 0), entry(0xa, 0), entry(0xb, 0), entry(0xb, 1), entry(0xb, 2)];
        filter(&mut e, 2, 3, true);
        assert_eq!(e[0].ebx >> 24, 2);
        assert_eq!((e[0].ebx >> 16) & 0xff, 3);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[1].eax, e[1].ebx), (0, 0));
        assert_eq!((e[3].eax, e[3].ebx, e[3].edx), (2, 3, 2));
        assert_eq!(e[4].ebx, 0);
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!([bits_for(1), bits_for(2), bits_for(3), bits_for(4), bits_for(5)], [0, 1, 2, 2, 3]);
    }
}
