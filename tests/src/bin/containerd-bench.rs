//! containerd benchmarks for hull's shim next to runc's, measured in the same run on a
//! private containerd: cold `ctr run` of `true`, CRI RunPodSandbox serial and 10 in parallel,
//! and the host memory (PSS) of one idle pod. Prints Markdown table rows; `bench/run.sh`
//! runs it. Not a test: nothing here passes or fails on a number.

use std::fs;
use std::time::{Duration, Instant};

use hull_tests::containerd::{Containerd, RUNTIME};
use hull_tests::cri::Cri;

const IMAGE: &str = "docker.io/hull/busybox:bench";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Cold `ctr run --rm` of `true` with `runtime`; median ms.
fn ctr_run(c: &Containerd, runtime: &str, runs: usize) -> f64 {
    median(
        (0..runs)
            .map(|i| {
                let id = format!("bench-{}-{i}", runtime.rsplit('.').nth(1).unwrap_or("x"));
                let t = Instant::now();
                c.ctr_ok(&["run", "--rm", "--runtime", runtime, IMAGE, &id, "true"]);
                ms(t.elapsed())
            })
            .collect(),
    )
}

/// RunPodSandbox with `handler`: `(median serial ms, wall ms for 10 at once)`.
fn run_pods(c: &Containerd, handler: &str, runs: usize) -> (f64, f64) {
    let logs = c.env.dir.join("pod-logs");
    let mut cri = Cri::connect(&c.socket, &logs);
    let serial = median(
        (0..runs)
            .map(|i| {
                let t = Instant::now();
                let pod = cri.run_pod_with(&format!("{handler}-s{i}"), handler, true).expect("RunPodSandbox");
                let elapsed = ms(t.elapsed());
                cri.remove_pod(&pod);
                elapsed
            })
            .collect(),
    );
    let t = Instant::now();
    let threads: Vec<_> = (0..10)
        .map(|i| {
            let (socket, logs, handler) = (c.socket.clone(), logs.clone(), handler.to_string());
            std::thread::spawn(move || {
                let mut cri = Cri::connect(&socket, &logs);
                let pod = cri.run_pod_with(&format!("{handler}-p{i}"), &handler, true).expect("RunPodSandbox");
                (cri, pod)
            })
        })
        .collect();
    let pods: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let parallel = ms(t.elapsed());
    for (mut cri, pod) in pods {
        cri.remove_pod(&pod);
    }
    (serial, parallel)
}

/// PSS (KiB) of `root` and every descendant.
fn tree_pss(root: u32) -> (u64, usize) {
    let mut pids = vec![root];
    let mut i = 0;
    while i < pids.len() {
        let parent = pids[i];
        for entry in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
            let stat = fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            let ppid =
                stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
            if ppid == Some(parent) && !pids.contains(&pid) {
                pids.push(pid);
            }
        }
        i += 1;
    }
    let pss = pids
        .iter()
        .map(|p| {
            let rollup = fs::read_to_string(format!("/proc/{p}/smaps_rollup")).unwrap_or_default();
            rollup
                .lines()
                .find_map(|l| l.strip_prefix("Pss:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        })
        .sum();
    (pss, pids.len())
}

/// Host memory of one idle pod with `handler`: its shim and everything under it.
fn idle_pod_pss(c: &Containerd, handler: &str, shim: &str) -> (u64, usize) {
    let mut cri = Cri::connect(&c.socket, &c.env.dir.join("pod-logs"));
    let pod = cri.run_pod_with(&format!("{handler}-idle"), handler, true).expect("RunPodSandbox");
    std::thread::sleep(Duration::from_secs(3));
    let shim_pid = fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .find(|pid| {
            let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            cmdline.contains(shim) && cmdline.contains(&pod.id)
        })
        .expect("the pod's shim");
    let measured = tree_pss(shim_pid);
    cri.remove_pod(&pod);
    measured
}

fn main() {
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(7);
    let c = Containerd::start("bench");
    c.import_pause();
    c.import_busybox("default", IMAGE, &["/bin/sh"]);
    eprintln!("bench: ctr run of true, hull and runc ({runs} runs)");
    let hull_run = ctr_run(&c, RUNTIME, runs);
    let runc_run = ctr_run(&c, "io.containerd.runc.v2", runs);
    eprintln!("bench: RunPodSandbox serial ({runs}) and 10 in parallel, hull and runc");
    let (hull_serial, hull_parallel) = run_pods(&c, "hull", runs);
    let (runc_serial, runc_parallel) = run_pods(&c, "runc", runs);
    eprintln!("bench: host memory of an idle pod");
    let (hull_pss, hull_procs) = idle_pod_pss(&c, "hull", "containerd-shim-hull-v2");
    let (runc_pss, runc_procs) = idle_pod_pss(&c, "runc", "containerd-shim-runc-v2");
    println!("| cold `ctr run --rm` of `true` (hull / runc) | {hull_run:.0} / {runc_run:.0} ms |");
    println!("| CRI RunPodSandbox, one at a time, median (hull / runc) | {hull_serial:.0} / {runc_serial:.0} ms |");
    println!("| CRI RunPodSandbox, 10 at once, until all returned (hull / runc) | {hull_parallel:.0} / {runc_parallel:.0} ms |");
    println!(
        "| host memory (PSS) of one idle pod: shim and all under it (hull {hull_procs} processes / runc {runc_procs}) | {} / {} MiB |",
        hull_pss / 1024,
        runc_pss / 1024
    );
}
