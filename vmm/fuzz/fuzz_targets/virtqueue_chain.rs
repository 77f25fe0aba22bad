//! Guest-written virtqueue state (descriptor table, avail ring, queue size) -> descriptor chains
//! parsed and copied the way the devices do. Nothing may panic, and every chain accepted must
//! lie inside guest memory; read as a balloon's free page report, it may only name whole pages
//! inside guest memory.
#![no_main]

use hull_vmm::virtio::chain::Chain;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x3000;
const USED: u64 = 0x4000;
const MEM: usize = 0x10000;

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let size = 1u16 << (data[0] % 9); // 1..=256
    let max_bytes = u64::from(u16::from_le_bytes([data[1], data[2]])) * 16;
    // Two regions with a hole between them, as the MMIO gap makes in real guests.
    let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM), (GuestAddress(0x2_0000), MEM)]).unwrap();
    let body = &data[3..];
    let table_len = (16 * size as usize).min(body.len());
    mem.write_slice(&body[..table_len], GuestAddress(DESC)).unwrap();
    let rest = &body[table_len..];
    let ring_len = (4 + 2 * size as usize).min(rest.len());
    mem.write_slice(&rest[..ring_len], GuestAddress(AVAIL)).unwrap();
    let payload = &rest[ring_len..];
    mem.write_slice(&payload[..payload.len().min(0x8000)], GuestAddress(0x8000)).unwrap();

    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    for _ in 0..4 {
        let Some(chain) = q.pop_descriptor_chain(&mem) else { break };
        let head = chain.head_index();
        if let Ok(c) = Chain::parse(&mem, chain.clone(), max_bytes) {
            for seg in c.readable.iter().chain(&c.writable) {
                assert!(seg.len == 0 || mem.check_range(seg.addr, seg.len as usize));
            }
            assert!(c.readable_len <= max_bytes && c.writable_len <= max_bytes);
            let mut buf = vec![0u8; (c.readable_len as usize).min(4096)];
            let n = c.read_at(&mem, 1, &mut buf);
            assert!(n <= buf.len());
            let w = c.write_at(&mem, 3, &buf);
            assert!(w as u64 <= c.writable_len);
            // The same chain as a free page report: only whole pages inside guest memory.
            for (addr, len) in hull_vmm::virtio::balloon::free_pages(&c.writable) {
                assert!(addr.0 % 4096 == 0 && len % 4096 == 0 && len > 0);
                assert!(mem.check_range(addr, len as usize));
                // This memory is private and anonymous, which MADV_REMOVE refuses: the call
                // still walks the checks a real report takes.
                let _ = hull_vmm::virtio::balloon::discard(&mem, addr, len);
            }
        }
        // The vsock packet decoder on the same chain.
        let _ = hull_vmm::virtio::vsock::read_tx_packet(&mem, chain);
        let _ = q.add_used(&mem, head, 0);
    }
});
