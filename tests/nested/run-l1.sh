#!/usr/bin/env bash
# Run a command inside an L1 VM that offers real KVM: QEMU/TCG with `-cpu max` emulates AMD
# SVM with nested paging, and Debian's cloud kernel (l1-kernel.sh) loads kvm-amd on it. L1
# sees the host's whole userspace read-only over virtio-fs (with a tmpfs overlay on top, so
# the same binaries, daemons and packages run unchanged) and can write only SCRATCH. The
# command runs as root in the current directory; its output is streamed here and its exit
# status is this script's. An L1 that cannot start, or cannot offer /dev/kvm, exits 125 with
# the reason: it never passes by running nothing.
#
#   tests/nested/run-l1.sh [--cpus N] [--mem MIB] [--timeout SECS] [--scratch DIR] -- COMMAND...
#
# Environment passed into L1: HULL_*, RUST_*, CARGO_*, and L1_SCRATCH (the scratch dir, at
# the same path as on the host). SCRATCH is --scratch DIR (must be empty or absent; kept) or
# <repo>/target/l1/<pid> (removed after a run that exits 0). It holds L1's console.log.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
# One vCPU by default: on two, TCG stopped delivering interrupts to L1 in 3 of 6 runs
# (2026-12-03/04; README, "The nested-KVM rig"); on one, 0 of 3 stopped, and the suite ran
# faster, the host's other core serving QEMU's I/O thread and L1's root virtiofsd.
cpus=${HULL_L1_CPUS:-1} mem=8192 timeout=3000 scratch=
while [ $# -gt 0 ]; do
  case $1 in
    --cpus) cpus=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --scratch) scratch=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "run-l1: unknown option $1" >&2; exit 2 ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: run-l1.sh [--cpus N] [--mem MIB] [--timeout SECS] [--scratch DIR] -- COMMAND..." >&2; exit 2; }

rig_fail() { echo "run-l1: L1 FAILED: $*" >&2; exit 125; }
# The host's QEMU (bookworm's 7.2). HULL_L1_QEMU=backports runs QEMU 10 from
# bookworm-backports instead (l1-qemu.sh), HULL_L1_QEMU=DIR another build (DIR/bin, DIR/share).
case ${HULL_L1_QEMU:-} in
  "") qemu=$(command -v qemu-system-x86_64) || rig_fail "qemu-system-x86_64 missing (apt-get install qemu-system-x86)"
      qdata=() ;;
  backports) qdir=$("$here/l1-qemu.sh") || rig_fail "no QEMU for L1 (l1-qemu.sh above says why)"
      qemu=$qdir/bin/qemu-system-x86_64 qdata=(-L "$qdir/share/qemu") ;;
  *) qemu=$HULL_L1_QEMU/bin/qemu-system-x86_64 qdata=(-L "$HULL_L1_QEMU/share/qemu") ;;
esac
[ -x "$qemu" ] || rig_fail "$qemu missing"
# TCG's threads: one per vCPU (MTTCG). HULL_L1_TCG_THREAD=single runs both vCPUs on one host
# thread; tried 2026-12-03 under 7.2 with shadow paging, no hull-vmm guest booted (no byte on
# its console in 100 s).
tcg_thread=${HULL_L1_TCG_THREAD:-multi}
virtiofsd=${HULL_L1_VIRTIOFSD:-$repo/build/assets/bin/virtiofsd}
[ -x "$virtiofsd" ] || rig_fail "$virtiofsd missing (make tools)"
kdir=$("$here/l1-kernel.sh") || rig_fail "no L1 kernel (l1-kernel.sh above says why)"
initrd=$("$here/l1-initramfs.sh" "$kdir") || rig_fail "no L1 initramfs"

keep=1
if [ -z "$scratch" ]; then
  scratch="$repo/target/l1/$$" keep=0
  rm -rf "$scratch"
elif [ -n "$(ls -A "$scratch" 2>/dev/null)" ]; then
  echo "run-l1: --scratch $scratch is not empty" >&2; exit 2
fi
mkdir -p "$scratch"
scratch=$(cd "$scratch" && pwd)
echo "$kdir" > "$scratch/kernel-dir"
pwd > "$scratch/cwd"
{
  echo "export PATH='$PATH' HOME=/root TMPDIR=/var/tmp L1_SCRATCH='$scratch'"
  env | grep -E '^(HULL_|RUST_|CARGO_|FUZZ_SECONDS=)' | while IFS= read -r kv; do
    printf 'export %s=%q\n' "${kv%%=*}" "${kv#*=}"
  done
  printf '%q ' "$@"
  echo
} > "$scratch/cmd"

pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
# The host's root, read-only; cache=always because nothing on it changes during a run; its
# submounts (/proc, /sys, ...) not announced, because overlayfs refuses automount points below
# its lower layer, and L1 mounts its own there anyway.
"$virtiofsd" --socket-path="$scratch/root.sock" --shared-dir=/ --readonly --cache=always --no-announce-submounts \
  --sandbox=namespace --seccomp=kill --log-level=error 2> "$scratch/virtiofsd-root.log" &
vfs_root=$!
pids+=($vfs_root)
"$virtiofsd" --socket-path="$scratch/scratch.sock" --shared-dir="$scratch" --cache=never \
  --sandbox=namespace --seccomp=kill --log-level=error 2> "$scratch/virtiofsd-scratch.log" &
vfs_scratch=$!
pids+=($vfs_scratch)
for s in root scratch; do
  for _ in $(seq 100); do [ -S "$scratch/$s.sock" ] && break; sleep 0.05; done
  [ -S "$scratch/$s.sock" ] || rig_fail "virtiofsd for $s did not start: $(cat "$scratch/virtiofsd-$s.log")"
done

touch "$scratch/out.log"
tail -n +1 -F "$scratch/out.log" 2>/dev/null &
tail_pid=$!
pids+=($tail_pid)
# Under TCG's jitter the L1 kernel's early TSC calibration against the PIT sometimes fails
# ("tsc: Unable to calibrate against PIT"), and then it hangs before init (seen in 1 of 6
# boots); TCG's TSC runs at the host's rate, so L1 is told it.
tsc_khz=$(awk -F': ' '/^cpu MHz/ {printf "%d", $2 * 1000; exit}' /proc/cpuinfo)
started=$(date +%s)
# microvm with ACPI: the cloud kernel finds virtio-mmio devices only through ACPI, and needs
# the PIT to calibrate its clock under TCG.
# kvm_amd.npt=0: L1's KVM runs its guests on shadow page tables, not on TCG's emulation of
# nested paging. With nested paging, L1's kernel crashed in 2 of 2 runs of the 20-parallel-
# creates test under QEMU 7.2 (a recursive page fault in a hull-vmm vCPU thread: "TASK stack
# guard page was hit", in exc_page_fault, a per-CPU read through a bad GS base), and 300 s
# into a suite run under QEMU 10 in the same way; with shadow paging, 3 of 3 passed under 7.2.
# (Under QEMU 10 shadow paging is worse: no hull-vmm guest printed a byte in 40 s.)
# HULL_L1_APPEND adds to L1's command line (kvm_amd.npt=1 brings nested paging back).
"$qemu" "${qdata[@]}" \
  -M microvm,acpi=on,pit=on,pic=on,rtc=on,x-option-roms=off,memory-backend=mem -accel "tcg,thread=$tcg_thread" -cpu max \
  -smp "$cpus" -m "${mem}M" -object "memory-backend-memfd,id=mem,size=${mem}M,share=on" \
  -nodefaults -no-user-config -nographic -display none -no-reboot \
  -serial "file:$scratch/console.log" -monitor "unix:$scratch/hmp.sock,server=on,wait=off" \
  -kernel "$kdir/vmlinuz" -initrd "$initrd" \
  -append "console=ttyS0 panic=-1 reboot=t hull.stage2=$here/l1-stage2.sh hull.scratch=$scratch tsc_early_khz=$tsc_khz kvm_amd.npt=0 unknown_nmi_panic ${HULL_L1_APPEND:-}" \
  -chardev "socket,id=root,path=$scratch/root.sock" -device vhost-user-fs-device,chardev=root,tag=root \
  -chardev "socket,id=scratch,path=$scratch/scratch.sock" -device vhost-user-fs-device,chardev=scratch,tag=scratch \
  > "$scratch/qemu.log" 2>&1 &
qemu_pid=$!
pids=("$qemu_pid" "${pids[@]}")
qemu_rc=
# L1 boots in seconds; one that has not reached stage 2 (KVM loaded) by then is stuck.
boot_deadline=${HULL_L1_BOOT_DEADLINE:-180}
# Stage 2 beats on L1's console every 20 s (l1-stage2.sh); no beat for this long means L1's
# kernel stopped running: its state goes to SCRATCH/stall.txt, and the run fails.
beat_deadline=${HULL_L1_BEAT_DEADLINE:-150}
beats=0 last_beat= last_check=0
stall_report() {  # what happened
  {
    echo "$1 at $(date -u +%FT%TZ), $(( $(date +%s) - started ))s after L1's start"
    echo "QEMU: $(ps -o pid=,etimes=,time=,stat= -p "$qemu_pid" 2>&1); threads:"
    ps -L -o tid=,stat=,time=,wchan:32=,comm= -p "$qemu_pid" 2>&1
    for v in "root:$vfs_root" "scratch:$vfs_scratch"; do
      echo "virtiofsd ${v%%:*}: $(ps -o pid=,stat=,time=,wchan:32= -p "${v#*:}" 2>&1 || echo gone)"
    done
    "$here/hmp.py" "$scratch/hmp.sock" "info status" "info cpus" "info registers -a" \
      "cpu 0" "info lapic" "cpu 1" "info lapic" "info pic" "info irq" > "$scratch/hmp.txt" 2>&1
    cat "$scratch/hmp.txt"
    # Where each vCPU is, by L1's own symbols (an address outside them is an L2 guest's).
    echo "### vCPU instruction pointers in L1's symbols"
    python3 - "$scratch/hmp.txt" "$scratch/kallsyms" <<'PY' 2>&1
import bisect, re, sys
text = open(sys.argv[1]).read()
try:
    syms = sorted((int(a, 16), n) for a, _, n in (l.split()[:3] for l in open(sys.argv[2]) if len(l.split()) >= 3))
except OSError:
    syms = []
addrs = [a for a, _ in syms]
for cpu, rip in re.findall(r"CPU#(\d+)\nRAX=.*?RIP=([0-9a-f]+)", text, re.S):
    ip = int(rip, 16)
    i = bisect.bisect_right(addrs, ip) - 1
    if not syms:
        where = "no L1 symbols (SCRATCH/kallsyms missing)"
    elif i >= 0 and ip - syms[i][0] < 1 << 20:
        where = f"{syms[i][1]}+{ip - syms[i][0]:#x}"
    else:
        where = "not in L1's kernel (an L2 guest?)"
    print(f"CPU {cpu}: RIP {rip}: {where}")
PY
    # L1 runs with unknown_nmi_panic: an NMI makes a CPU that spins with interrupts off
    # panic, and the panic prints where it was (symbolized, which the registers are not).
    echo "### nmi; L1's console 15 s later"
    lines=$(wc -l < "$scratch/console.log")
    "$here/hmp.py" "$scratch/hmp.sock" nmi > /dev/null 2>&1
    sleep 15
    tail -n +"$((lines + 1))" "$scratch/console.log" | head -n 200
  } > "$scratch/stall.txt" 2>&1
}
while [ -z "$qemu_rc" ]; do
  now=$(date +%s)
  if [ $(( now - last_check )) -ge 10 ] && [ -f "$scratch/l1-up" ]; then
    last_check=$now last_beat=${last_beat:-$now}
    n=$(grep -c "^hull-l1: beat" "$scratch/console.log" 2>/dev/null || true)
    if [ "${n:-0}" -gt "$beats" ]; then beats=$n last_beat=$now; fi
  fi
  if ! kill -0 "$qemu_pid" 2>/dev/null; then
    wait "$qemu_pid" && qemu_rc=0 || qemu_rc=$?
  elif ! kill -0 "$vfs_root" 2>/dev/null || ! kill -0 "$vfs_scratch" 2>/dev/null; then
    # L1 would wait on the dead share for ever, without a word on its console.
    for v in "root:$vfs_root" "scratch:$vfs_scratch"; do
      kill -0 "${v#*:}" 2>/dev/null && continue
      wait "${v#*:}" && r=0 || r=$?
      qemu_rc="the virtiofsd of L1's ${v%%:*} share exited ($r$( [ "$r" -gt 128 ] && echo ": signal $((r - 128))"))"
    done
    stall_report "$qemu_rc"
    kill -KILL "$qemu_pid"
    wait "$qemu_pid" || true
  elif [ -n "$last_beat" ] && [ $(( now - last_beat )) -ge "$beat_deadline" ]; then
    stall_report "L1's console had its last heartbeat $(( now - last_beat ))s ago"
    kill -KILL "$qemu_pid"
    wait "$qemu_pid" || true
    qemu_rc="stuck: L1's console has had no heartbeat for ${beat_deadline}s (its state: $scratch/stall.txt)"
  elif [ $(( now - started )) -ge "$timeout" ]; then
    kill -KILL "$qemu_pid"
    wait "$qemu_pid" || true
    qemu_rc=timeout
  elif grep -q "Kernel panic" "$scratch/console.log" 2>/dev/null; then
    sleep 2
    kill -KILL "$qemu_pid"
    wait "$qemu_pid" || true
    qemu_rc="L1's kernel panicked"
  elif [ ! -f "$scratch/l1-up" ] && [ $(( now - started )) -ge "$boot_deadline" ]; then
    kill -KILL "$qemu_pid"
    wait "$qemu_pid" || true
    qemu_rc="stuck: L1 did not reach stage 2 within ${boot_deadline}s"
  else
    sleep 1
  fi
done
sleep 0.5
kill "$tail_pid" 2>/dev/null || true
elapsed=$(( $(date +%s) - started ))

if [ -f "$scratch/l1-failed" ]; then
  rig_fail "$(cat "$scratch/l1-failed") (console: $scratch/console.log)"
fi
if [ ! -f "$scratch/rc" ]; then
  case $qemu_rc in
    timeout) why="killed after ${timeout}s" ;;
    stuck* | *panicked | the\ virtiofsd*) why=$qemu_rc ;;
    *) why="QEMU exited $qemu_rc" ;;
  esac
  echo "run-l1: --- last lines of L1's console ---" >&2
  if grep -q "Kernel panic" "$scratch/console.log"; then
    grep -m1 -A12 -E "BUG:|Oops|general protection|Kernel panic" "$scratch/console.log" >&2
  else
    tail -n 30 "$scratch/console.log" >&2 || true
  fi
  tail -n 5 "$scratch/qemu.log" >&2 || true
  rig_fail "no result from L1 ($why after ${elapsed}s; $scratch)"
fi
rc=$(cat "$scratch/rc")
echo "run-l1: the command exited $rc in L1 (${elapsed}s including L1's boot)"
[ "$rc" = 0 ] && [ $keep = 0 ] && rm -rf "$scratch"
exit "$rc"
