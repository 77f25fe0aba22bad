//! hull: a runc-compatible OCI runtime that runs every container inside its own microVM.
//!
//! The layers, top down:
//! - [`cli`]: the runc-style command line (thin; parses and dispatches).
//! - [`supervisor`]: one long-lived process per sandbox that owns the VM, relays stdio, serves
//!   the CLI's later verbs over a control socket and exits with the container's status.
//! - [`sandbox`]: boots a VM through a [`hypervisor`] backend with its helper daemons
//!   (virtiofsd, the vsock backend) and tears all of it down.
//! - [`agent_client`]: the framed protocol to `hull-agent` inside the guest.
//! - [`bundle`], [`state`], [`assets`]: OCI bundles, the state dir, installed files.

pub mod agent_client;
pub mod assets;
pub mod bundle;
pub mod cli;
pub mod hooks;
pub mod hypervisor;
pub mod network;
pub mod process;
pub mod sandbox;
pub mod shim;
pub mod spec;
pub mod state;
pub mod stdio;
pub mod terminal;
pub mod supervisor;
pub mod vsock;
