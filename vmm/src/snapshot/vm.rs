//! The VM-wide state KVM emulates itself: the two 8259 PICs and the IO-APIC, the PIT, and the
//! kvmclock base.

use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

use super::SnapshotError;

#[derive(Clone, Serialize, Deserialize)]
pub struct VmState {
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
    pub clock: kvm_clock_data,
}

fn chip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, SnapshotError> {
    let mut c = kvm_irqchip { chip_id, ..Default::default() };
    vm.get_irqchip(&mut c).map_err(|e| SnapshotError::Kvm("KVM_GET_IRQCHIP", e))?;
    Ok(c)
}

/// Save what KVM holds for the whole VM. Every vCPU must be out of KVM_RUN.
pub fn save(vm: &VmFd) -> Result<VmState, SnapshotError> {
    let clock = vm.get_clock().map_err(|e| SnapshotError::Kvm("KVM_GET_CLOCK", e))?;
    Ok(VmState {
        pic_master: chip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: chip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: chip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(|e| SnapshotError::Kvm("KVM_GET_PIT2", e))?,
        clock,
    })
}

/// Put `state` into `vm`, which has its irqchip and PIT created and no vCPU running yet.
pub fn restore(vm: &VmFd, state: &VmState) -> Result<(), SnapshotError> {
    for (id, c) in [
        (KVM_IRQCHIP_PIC_MASTER, &state.pic_master),
        (KVM_IRQCHIP_PIC_SLAVE, &state.pic_slave),
        (KVM_IRQCHIP_IOAPIC, &state.ioapic),
    ] {
        if c.chip_id != id {
            return Err(SnapshotError::Invalid(format!("irqchip {id}: the saved chip is chip {}", c.chip_id)));
        }
        vm.set_irqchip(c).map_err(|e| SnapshotError::Kvm("KVM_SET_IRQCHIP", e))?;
    }
    vm.set_pit2(&state.pit).map_err(|e| SnapshotError::Kvm("KVM_SET_PIT2", e))?;
    // The guest's clock goes on from where it stopped; the agent sets the wall clock after a
    // restore. No flags: the saved ones were KVM's report, not a request.
    let clock = kvm_clock_data { clock: state.clock.clock, ..Default::default() };
    vm.set_clock(&clock).map_err(|e| SnapshotError::Kvm("KVM_SET_CLOCK", e))?;
    Ok(())
}
