//! x86-64 specifics: where things live in guest memory, how a Linux kernel (or any 64-bit ELF) is
//! loaded and entered, and what each vCPU is told about itself.

pub mod boot;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
