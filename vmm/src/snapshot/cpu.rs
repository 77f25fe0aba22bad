//! One vCPU's architectural state, as KVM holds it, saved from a vCPU that is out of KVM_RUN
//! and put back into a fresh one (after its CPUID is set, which decides what the rest means).

use kvm_bindings::{
    kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs,
    kvm_xsave, Msrs,
};
use kvm_ioctls::{Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::SnapshotError;

/// MSRs whose order matters on restore: KVM reads a TSC deadline relative to the guest's TSC,
/// so the deadline goes in after the TSC, or a restored timer fires at the wrong moment.
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_TSC_DEADLINE: u32 = 0x6e0;

#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
    /// The guest's TSC rate, when KVM tells it: a restore on a host with another rate sets it.
    pub tsc_khz: Option<u32>,
}

/// The MSRs to save: every one KVM lists as saveable, the TSC first and the TSC deadline last.
pub fn msr_list(kvm: &Kvm) -> Result<Vec<u32>, SnapshotError> {
    let list = kvm.get_msr_index_list().map_err(|e| SnapshotError::Kvm("KVM_GET_MSR_INDEX_LIST", e))?;
    Ok(in_restore_order(list.as_slice()))
}

/// `indices` sorted so that the TSC comes first and its deadline last (a stable sort: the
/// others keep KVM's order).
fn in_restore_order(indices: &[u32]) -> Vec<u32> {
    let mut v = indices.to_vec();
    v.sort_by_key(|m| match *m {
        MSR_IA32_TSC => 0,
        MSR_IA32_TSC_DEADLINE => 2,
        _ => 1,
    });
    v
}

/// The largest XSAVE area this KVM may hand out, in bytes (4096 without KVM_CAP_XSAVE2).
pub fn xsave_size(vm: &kvm_ioctls::VmFd) -> usize {
    // KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) answers with the size of the VM's XSAVE area.
    let size = vm.check_extension_int(kvm_ioctls::Cap::Xsave2);
    if size <= 0 {
        std::mem::size_of::<kvm_xsave>()
    } else {
        size as usize
    }
}

fn kvm<T>(what: &'static str, r: Result<T, kvm_ioctls::Error>) -> Result<T, SnapshotError> {
    r.map_err(|e| SnapshotError::Kvm(what, e))
}

/// Save the state of `vcpu`, which must be out of KVM_RUN (and every other vCPU of its VM too,
/// or an IPI could change its local APIC after it was read). `xsave_size` comes from
/// [`xsave_size`]: a guest whose XSAVE area does not fit the 4 KiB `kvm_xsave` (AMX) is
/// refused, since part of its state would be lost.
pub fn save(vcpu: &VcpuFd, msr_indices: &[u32], xsave_size: usize) -> Result<VcpuState, SnapshotError> {
    if xsave_size > std::mem::size_of::<kvm_xsave>() {
        return Err(SnapshotError::Unsupported(format!(
            "the guest's XSAVE area is {xsave_size} bytes, more than the 4096 a snapshot holds"
        )));
    }
    // First: KVM_GET_MP_STATE delivers the local APIC's pending INIT/SIPI, which changes the
    // registers and the APIC state read next.
    let mp_state = kvm("KVM_GET_MP_STATE", vcpu.get_mp_state())?;
    let regs = kvm("KVM_GET_REGS", vcpu.get_regs())?;
    let sregs = kvm("KVM_GET_SREGS", vcpu.get_sregs())?;
    let xsave = kvm("KVM_GET_XSAVE", vcpu.get_xsave())?;
    let xcrs = kvm("KVM_GET_XCRS", vcpu.get_xcrs())?;
    let debugregs = kvm("KVM_GET_DEBUGREGS", vcpu.get_debug_regs())?;
    let lapic = kvm("KVM_GET_LAPIC", vcpu.get_lapic())?;
    let msrs = save_msrs(vcpu, msr_indices)?;
    let events = kvm("KVM_GET_VCPU_EVENTS", vcpu.get_vcpu_events())?;
    let tsc_khz = vcpu.get_tsc_khz().ok();
    Ok(VcpuState { mp_state, regs, sregs, xsave, xcrs, debugregs, lapic, msrs, events, tsc_khz })
}

/// Read the listed MSRs. KVM stops at the first one it cannot read and says how many it read;
/// that one is dropped (KVM lists MSRs a given CPU model may not have) and the rest read again.
fn save_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>, SnapshotError> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest: &[u32] = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> =
            chunk.iter().map(|&index| kvm_msr_entry { index, ..Default::default() }).collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| SnapshotError::Unsupported(format!("{e:?}")))?;
        let read = kvm("KVM_GET_MSRS", vcpu.get_msrs(&mut msrs))?;
        saved.extend_from_slice(&msrs.as_slice()[..read]);
        // The MSR at `read` could not be read: skip it.
        rest = &rest[(read + usize::from(read < chunk.len())).min(rest.len())..];
    }
    Ok(saved)
}

/// Put `state` into `vcpu`, a vCPU that has never run and whose CPUID is already set.
pub fn restore(vcpu: &VcpuFd, state: &VcpuState, xsave_size: usize) -> Result<(), SnapshotError> {
    if xsave_size > std::mem::size_of::<kvm_xsave>() {
        return Err(SnapshotError::Unsupported(format!(
            "this host's XSAVE area is {xsave_size} bytes, more than the 4096 a snapshot holds"
        )));
    }
    if let Some(khz) = state.tsc_khz {
        if vcpu.get_tsc_khz().ok() != Some(khz) {
            kvm("KVM_SET_TSC_KHZ", vcpu.set_tsc_khz(khz))?;
        }
    }
    kvm("KVM_SET_MP_STATE", vcpu.set_mp_state(state.mp_state))?;
    kvm("KVM_SET_REGS", vcpu.set_regs(&state.regs))?;
    // Before the local APIC: sregs carry the APIC base, which decides where KVM_SET_LAPIC puts it.
    kvm("KVM_SET_SREGS", vcpu.set_sregs(&state.sregs))?;
    // SAFETY: KVM reads as much of the XSAVE area as this VM's features use, which is at most
    // `xsave_size` bytes, checked above to fit the 4096-byte `kvm_xsave` we pass.
    kvm("KVM_SET_XSAVE", unsafe { vcpu.set_xsave(&state.xsave) })?;
    kvm("KVM_SET_XCRS", vcpu.set_xcrs(&state.xcrs))?;
    kvm("KVM_SET_DEBUGREGS", vcpu.set_debug_regs(&state.debugregs))?;
    kvm("KVM_SET_LAPIC", vcpu.set_lapic(&state.lapic))?;
    for chunk in state.msrs.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(chunk).map_err(|e| SnapshotError::Unsupported(format!("{e:?}")))?;
        let set = kvm("KVM_SET_MSRS", vcpu.set_msrs(&msrs))?;
        if set != chunk.len() {
            return Err(SnapshotError::Invalid(format!(
                "KVM refused MSR {:#x} (set {set} of {})",
                chunk[set].index,
                chunk.len()
            )));
        }
    }
    // Last: pending exceptions and NMIs, which the steps above would otherwise clear.
    kvm("KVM_SET_VCPU_EVENTS", vcpu.set_vcpu_events(&state.events))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tsc_comes_first_and_its_deadline_last() {
        assert_eq!(in_restore_order(&[0x6e0, 0x174, 0x10, 0xc000_0080]), [0x10, 0x174, 0xc000_0080, 0x6e0]);
    }
}
