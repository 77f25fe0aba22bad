#!/usr/bin/env bash
# The nested-KVM benchmark's inside (run in L1 by bench/nested.sh): hull-vmm against QEMU/KVM
# on the same real (nested) KVM, interleaved run by run so drift hits both alike. Prints
# "name=value" lines for bench/nested.sh's table.
#
#   bench/nested-in-l1.sh RUNS
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
HULL=$here/target/release/hull
RUNS=${1:-7}
work=$(mktemp -d)
root=$work/state
trap '"$HULL" --root "$root" delete --force idle >/dev/null 2>&1 || true; rm -rf "$work"' EXIT

bundle=$work/bundle
mkdir -p "$bundle/rootfs"/{bin,proc,sys,dev,tmp,etc}
cp /bin/busybox "$bundle/rootfs/bin/"
for a in sh true sleep; do ln -s busybox "$bundle/rootfs/bin/$a"; done
(cd "$bundle" && "$HULL" spec)
args() {
  python3 - "$bundle/config.json" "$@" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["process"]["args"] = sys.argv[2:]
json.dump(c, open(sys.argv[1], "w"))
PY
}
args true
now_ms() { date +%s%N | cut -c1-13; }
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.0f}")' "$@"; }

declare -A ready run
for backend in hull-vmm qemu; do ready[$backend]=""; run[$backend]=""; done
for i in $(seq "$RUNS"); do
  for backend in hull-vmm qemu; do
    # The supervisor's own measure: VM process start → the agent's first answer.
    ms=$(HULL_BACKEND=$backend HULL_LOG=info "$HULL" --root "$root" run --bundle "$bundle" bench 2>&1 >/dev/null \
      | sed -n 's/.*agent ready elapsed_ms=\([0-9]*\).*/\1/p' | head -1)
    [ -n "$ms" ] || { echo "bench: $backend: no agent-ready line" >&2; exit 1; }
    ready[$backend]+=" $ms"
    t0=$(now_ms)
    HULL_BACKEND=$backend "$HULL" --root "$root" run --bundle "$bundle" bench >/dev/null 2>&1 \
      || { echo "bench: $backend: hull run true failed" >&2; exit 1; }
    run[$backend]+=" $(( $(now_ms) - t0 ))"
  done
  echo "bench: round $i of $RUNS done" >&2
done

args sleep 600
for backend in hull-vmm qemu; do
  # In run order, to show whether later sandboxes start slower than the first.
  echo "bench: $backend agent ready, ms in run order:${ready[$backend]}" >&2
  echo "ready_$backend=$(median ${ready[$backend]})"
  echo "run_$backend=$(median ${run[$backend]})"
  HULL_BACKEND=$backend "$HULL" --root "$root" run -d --bundle "$bundle" idle </dev/null >/dev/null 2>&1
  # Idle: the guest's free page reports (every 2 s, a batch at a time) have settled by then.
  sleep 20
  sup=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$root/idle/state.json")
  pss=0 vmm_extra=0 n=0
  for pid in $sup $(pgrep -f -- "$root/idle"); do
    [ -r "/proc/$pid/smaps_rollup" ] || continue
    pss=$((pss + $(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup")))
    n=$((n + 1))
    exe=$(tr '\0' ' ' < "/proc/$pid/cmdline" | cut -d' ' -f1)
    case $exe in
      *hull-vmm* | *qemu-system*)
        # Guest RAM is a shared memfd (RssShmem): what is left is the VMM's own.
        vmm_extra=$(awk '/^RssAnon:|^RssFile:/ {s += $2} END {print s}' "/proc/$pid/status") ;;
    esac
  done
  echo "pss_$backend=$((pss / 1024)) procs_$backend=$n vmm_$backend=$((vmm_extra / 1024))"
  "$HULL" --root "$root" delete --force idle >/dev/null 2>&1
done
