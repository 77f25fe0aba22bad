//! The hull agent protocol.
//!
//! Control traffic is one vsock connection to [`CONTROL_PORT`] carrying frames: a `u32`
//! big-endian length followed by a JSON body of at most [`MAX_FRAME`] bytes. The host sends
//! [`Request`]s, the agent answers each with a [`Response`] echoing its id, and pushes
//! [`Event`]s at any time.
//!
//! Process stdio never travels in JSON: each stream is its own connection to [`STDIO_PORT`]
//! that starts with one [`StreamHeader`] line and then carries raw bytes. A forwarded TCP
//! connection (CRI port-forward) is likewise its own connection to [`FORWARD_PORT`]
//! ([`forward`]).
//!
//! Both sides treat what they read as hostile: frames are length-capped before allocation and
//! every field is validated by the receiver.

pub mod budget;
pub mod forward;
pub mod frame;
pub mod messages;
pub mod network;
pub mod resources;
pub mod stream;

pub use budget::LogBudget;
pub use frame::{decode_body, encode, read_frame, write_frame, FrameError, MAX_FRAME};
pub use messages::*;
pub use resources::{ContainerStats, ResourceUpdate};
pub use stream::{StreamHeader, StreamKind};

/// vsock port of the agent's control server.
pub const CONTROL_PORT: u32 = 1024;
/// vsock port on which the agent accepts stdio streams.
pub const STDIO_PORT: u32 = 1025;
/// vsock port on which the agent accepts forwarded TCP connections ([`forward`]).
pub const FORWARD_PORT: u32 = 1026;
/// Protocol version; the handshake fails when host and agent disagree.
pub const PROTOCOL_VERSION: u32 = 2;
