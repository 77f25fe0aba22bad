//! hull: a runc-compatible OCI runtime that runs every container inside its own microVM.
//!
//! This library is the runtime's core; the binaries are thin front ends over it:
//! `hull` (the runc-style CLI and its per-container supervisor) and `containerd-shim-hull-v2`
//! (containerd's shim v2). The layers, top down:
//! - [`pod`]: one sandbox VM and its containers — the single lifecycle core both front ends
//!   drive: state machine, events, exits, tear-down.
//! - [`agent`]: the typed client of `hull-agent` inside the guest.
//! - [`sandbox`]: boots a VM through a [`hypervisor`] backend with its helper daemons
//!   (virtiofsd, the vsock backend) and stops all of it.
//! - [`share`] (through [`beneath`]), [`network`], [`stdio`], [`terminal`]: what a pod attaches
//!   to the VM — files over virtio-fs, the container's network namespace, process streams, host terminals.
//! - [`bundle`], [`spec`], [`state`], [`hooks`], [`assets`], [`process`], [`vsock`]: OCI bundles
//!   and their rewrite for the guest, the CLI's state dir, host hooks, installed files, child
//!   processes, hybrid vsock.

pub mod agent;
pub mod assets;
pub mod beneath;
pub mod bundle;
pub mod cgroup;
pub mod hooks;
pub mod hypervisor;
pub mod jail;
pub mod log_sink;
pub mod network;
pub mod pod;
pub mod port_forward;
pub mod process;
pub mod sandbox;
pub mod share;
pub mod spec;
pub mod state;
pub mod stdio;
pub mod terminal;
pub mod vsock;
