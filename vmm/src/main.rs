//! `hull-vmm`: hull's own KVM microVM monitor. Not yet implemented; the runtime's `auto` backend
//! uses QEMU until it is.

fn main() {
    eprintln!("hull-vmm: not implemented yet; use the qemu backend");
    std::process::exit(1);
}
