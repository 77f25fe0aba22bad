//! hull-vmm: a KVM microVM monitor built from the rust-vmm crates. One process runs one VM:
//! [`builder`] assembles it from a [`config::VmmConfig`], [`jail`] confines the process, and
//! [`Vmm::run`](builder::Vmm::run) serves it until the guest resets or a signal ends it.

pub mod arch;
pub mod builder;
pub mod bus;
pub mod config;
pub mod devices;
pub mod jail;
pub mod memory;
pub mod run;
pub mod seccomp;
pub mod snapshot;
pub mod vcpu;
pub mod virtio;
