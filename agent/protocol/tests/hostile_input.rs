//! Whatever bytes arrive, the decoders return an error or a value: never a panic, never an
//! allocation beyond the frame cap. A deterministic mutation loop (no fuzzing toolchain
//! needed) over valid frames and random noise.

use hull_protocol::{
    encode, read_frame, AgentMessage, Event, Outcome, Reply, Request, RequestBody, Response, StreamHeader,
};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let spec = serde_json::json!({"ociVersion": "1.2.0", "root": {"path": "/run/hull/share/x"}});
    vec![
        encode(&Request { id: 1, body: RequestBody::Handshake { version: 1 } }).unwrap(),
        encode(&Request { id: 2, body: RequestBody::CreateContainer { container_id: "c".into(), spec } }).unwrap(),
        encode(&Request {
            id: 3,
            body: RequestBody::SignalProcess { container_id: "c".into(), exec_id: None, signal: 9, all: true },
        })
        .unwrap(),
        encode(&AgentMessage::Response(Response { id: 4, result: Outcome::Ok(Reply::Created { pid: 7 }) })).unwrap(),
        encode(&AgentMessage::Event(Event::ProcessExited { container_id: "c".into(), exec_id: None, status: 137 }))
            .unwrap(),
    ]
}

#[test]
fn mutated_frames_never_panic() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let seeds = seeds();
    for _ in 0..20_000 {
        let mut bytes = seeds[rng.below(seeds.len())].clone();
        for _ in 0..=rng.below(8) {
            let i = rng.below(bytes.len());
            match rng.below(3) {
                0 => bytes[i] = rng.next() as u8,
                1 => bytes.truncate(i.max(1)),
                _ => bytes.insert(i, rng.next() as u8),
            }
        }
        let _ = read_frame::<Request>(&mut &bytes[..]);
        let _ = read_frame::<AgentMessage>(&mut &bytes[..]);
    }
}

#[test]
fn random_stream_headers_never_panic_and_valid_ones_round_trip() {
    let mut rng = XorShift(42);
    for _ in 0..20_000 {
        let len = rng.below(64);
        const ALPHABET: &[u8] = b" abcstdinouterr-._/:\\\n\0\xff";
        let bytes: Vec<u8> = (0..len).map(|_| ALPHABET[rng.below(ALPHABET.len())]).collect();
        if let Ok(line) = std::str::from_utf8(&bytes) {
            if let Ok(h) = line.parse::<StreamHeader>() {
                assert_eq!(h.to_string().trim_end().parse::<StreamHeader>().unwrap(), h);
            }
        }
    }
}
