//! A stream of guest vsock packets (headers and payloads as the guest chooses them) against the
//! muxer, with one host connection open, interleaved with the device pulling packets for the
//! guest. Nothing may panic and every bound must hold.
#![no_main]

use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::OnceLock;

use hull_vmm::virtio::vsock::muxer::{Muxer, MAX_CONNECTIONS, MAX_RX_BACKLOG};
use hull_vmm::virtio::vsock::packet::{Header, HEADER_SIZE, MAX_PAYLOAD};
use libfuzzer_sys::fuzz_target;

const GUEST_CID: u64 = 3;

/// One socket directory inside the fuzz crate's own target dir, reused by every run (a run
/// ends by exit, so nothing would remove a per-run one).
fn socket_dir() -> &'static std::path::Path {
    static DIR: OnceLock<std::path::PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/vsock-sockets");
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let uds = socket_dir().join("v.sock");
    let _ = std::fs::remove_file(&uds);
    let listener = UnixListener::bind(&uds).unwrap();
    let mut mux = Muxer::new(GUEST_CID, uds.clone(), listener).unwrap();
    // One host connection asking for guest port 5, so established-connection paths are reachable.
    let mut host = UnixStream::connect(&uds).unwrap();
    host.write_all(b"CONNECT 5\n").unwrap();
    mux.on_host_event(mux.listener_fd(), vmm_sys_util_events());
    for op in mux.take_fd_ops() {
        if let hull_vmm::virtio::vsock::muxer::FdOp::Add(fd, _) = op {
            mux.on_host_event(fd, vmm_sys_util_events());
        }
    }
    mux.release_closed();

    let mut rest = data;
    while rest.len() >= HEADER_SIZE {
        let mut raw = [0u8; HEADER_SIZE];
        raw.copy_from_slice(&rest[..HEADER_SIZE]);
        rest = &rest[HEADER_SIZE..];
        let mut hdr = Header::decode(&raw);
        // Keep most packets addressed correctly, so they get past the first checks.
        if raw[0] & 1 == 0 {
            hdr.src_cid = GUEST_CID;
            hdr.dst_cid = 2;
        }
        let len = (hdr.len as usize).min(rest.len()).min(MAX_PAYLOAD);
        hdr.len = len as u32;
        let payload = &rest[..len];
        rest = &rest[len..];
        mux.on_guest_packet(&hdr, payload);
        let room = usize::from(raw[1]) * 64;
        for _ in 0..(raw[2] % 4) {
            if let Some((h, p)) = mux.next_rx(room) {
                assert!(p.len() <= room.max(0) || p.is_empty());
                assert_eq!(h.len as usize, p.len());
                assert_eq!(h.dst_cid, GUEST_CID);
            }
        }
        let _ = mux.take_fd_ops();
        mux.release_closed();
        assert!(mux.connection_count() <= MAX_CONNECTIONS);
        assert!(mux.rx_backlog() <= MAX_RX_BACKLOG);
    }
});

fn vmm_sys_util_events() -> hull_vmm::virtio::vsock::muxer::EventSet {
    hull_vmm::virtio::vsock::muxer::EventSet::IN
}
