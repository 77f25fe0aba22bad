//! hull-vmm benchmark: process start → first KVM_RUN (wall and CPU) and the VMM's own memory
//! beyond guest RAM, for 1 vCPU / 128 MiB, next to QEMU's microvm machine measured in the same
//! run. Prints Markdown table rows; bench/run.sh puts them in its table.
//!
//! QEMU has no KVM here (this host's KVM is PVM), so its comparable moment is "device model
//! built, ready to run" (`-S`, QMP answers `prelaunch`), measured the same way from spawn.
//! Memory is RssAnon + RssFile: guest RAM is a shared memfd for both, counted as RssShmem.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hull_tests::vmm::{synthetic_guest, vmm_bin};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn epoch_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_micros() as u64
}

/// RssAnon + RssFile of `pid`, in KiB.
fn private_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    ["RssAnon:", "RssFile:"]
        .iter()
        .map(|f| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(f))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum()
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One hull-vmm run: (start → first KVM_RUN ms, CPU ms by then, private RSS KiB when idle).
fn hull_vmm_once(dir: &Path) -> (f64, f64, u64) {
    let console = dir.join("console.log");
    let log = dir.join("vmm.log");
    let _ = std::fs::remove_file(&console);
    let t0 = epoch_us();
    let mut child = Command::new(vmm_bin())
        .args([
            "--kernel",
            synthetic_guest().to_str().unwrap(),
            "--cmdline",
            "hull.idle=1",
            "--vcpus",
            "1",
            "--memory-mib",
            "128",
        ])
        .arg("--console-log")
        .arg(&console)
        .env("HULL_VMM_LOG", "hull_vmm::timing=info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    wait_for(|| std::fs::read_to_string(&console).unwrap_or_default().contains("idling"), "the guest to idle");
    std::thread::sleep(Duration::from_millis(100));
    let rss = private_rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let field = |name: &str| -> u64 {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in the timing line: {text}"))
    };
    ((field("epoch_us") - t0) as f64 / 1000.0, field("cpu_us") as f64 / 1000.0, rss)
}

/// One QEMU microvm run: (start → ready to run ms, private RSS KiB when ready).
fn qemu_once(dir: &Path) -> (f64, u64) {
    let qmp = dir.join("qmp.sock");
    let _ = std::fs::remove_file(&qmp);
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(["-M", "microvm,acpi=off,x-option-roms=off,memory-backend=mem", "-accel", "tcg", "-cpu", "max"])
        .args(["-smp", "1", "-m", "128M", "-object", "memory-backend-memfd,id=mem,size=128M,share=on"])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-display", "none", "-S"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stream = None;
    wait_for(
        || {
            stream = UnixStream::connect(&qmp).ok();
            stream.is_some()
        },
        "QEMU's QMP socket",
    );
    let stream = stream.unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut line = String::new();
    reader.read_line(&mut line).unwrap(); // greeting
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-status\"}\n").unwrap();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.contains("prelaunch") {
            break;
        }
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let rss = private_rss_kib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    (ms, rss)
}

fn main() {
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(7);
    let dir = std::env::temp_dir().join(format!("hull-vmm-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (mut h_ms, mut h_cpu, mut h_rss, mut q_ms, mut q_rss) = (vec![], vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (ms, cpu, rss) = hull_vmm_once(&dir);
        h_ms.push(ms);
        h_cpu.push(cpu);
        h_rss.push(rss as f64);
        let (ms, rss) = qemu_once(&dir);
        q_ms.push(ms);
        q_rss.push(rss as f64);
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "| hull-vmm: process start → first KVM_RUN, 1 vCPU / 128 MiB (wall; CPU by then) | {:.1} ms; {:.1} ms CPU |",
        median(h_ms),
        median(h_cpu)
    );
    println!("| QEMU microvm (TCG): process start → ready to run (`-S`, QMP `prelaunch`) | {:.1} ms |", median(q_ms));
    println!("| Firecracker, published (its SPECIFICATION.md, on i3.metal): process start → API socket ≤ 8 CPU ms (wall typically ~12 ms) | — |");
    println!(
        "| VMM memory beyond guest RAM (RssAnon + RssFile), idle: hull-vmm / QEMU microvm | {:.1} / {:.1} MiB |",
        median(h_rss) / 1024.0,
        median(q_rss) / 1024.0
    );
    println!("| Firecracker, published: VMM threads' memory overhead (2 vCPU / 256 MiB) | ≤ 5 MiB |");
}
