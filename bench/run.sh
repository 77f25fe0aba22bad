#!/usr/bin/env bash
# hull benchmarks: prints a Markdown table. Not a test: nothing here passes or fails on a
# number. Everything compared is measured in this same run on this machine.
#
#   make bench            (or: HULL_ASSET_DIR=... bench/run.sh)
#   RUNS=9 bench/run.sh   (median of RUNS, default 7)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
HULL=${HULL:-$here/target/release/hull}
RUNS=${RUNS:-7}
assets=${HULL_ASSET_DIR:-/usr/local/share/hull}
work=$(mktemp -d /tmp/hull-bench.XXXXXX)
root=$work/state
cleanup() {
  "$HULL" --root "$root" delete --force idle >/dev/null 2>&1 || true
  runc --root "$work/runc" delete -f bench >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

# A busybox bundle running `true`.
bundle=$work/bundle
mkdir -p "$bundle/rootfs"/{bin,proc,sys,dev,tmp,etc}
cp /bin/busybox "$bundle/rootfs/bin/"
for a in sh true sleep poweroff; do ln -s busybox "$bundle/rootfs/bin/$a"; done
(cd "$bundle" && "$HULL" spec)
python3 - "$bundle/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["process"]["args"] = ["true"]
json.dump(c, open(sys.argv[1], "w"))
PY

now_ms() { date +%s%N | cut -c1-13; }
median() { python3 -c 'import sys,statistics; v=[float(x) for x in sys.argv[1:]]; print(f"{statistics.median(v):.0f}")' "$@"; }
time_runs() {  # command... → median ms over RUNS
  local samples=()
  for _ in $(seq "$RUNS"); do
    local t0; t0=$(now_ms)
    "$@" >/dev/null 2>&1 || { echo "bench: failed: $*" >&2; exit 1; }
    samples+=($(( $(now_ms) - t0 )))
  done
  median "${samples[@]}"
}

echo "bench: hull run true ($RUNS runs)" >&2
hull_ms=$(time_runs "$HULL" --root "$root" run --bundle "$bundle" bench)

echo "bench: bare QEMU/TCG boot to /init and power-off ($RUNS runs)" >&2
floor=$work/floor
mkdir -p "$floor/bin" "$floor/dev"
cp /bin/busybox "$floor/bin/"
printf '#!/bin/busybox sh\n/bin/busybox poweroff -f\n' > "$floor/init"; chmod +x "$floor/init"
mknod -m 600 "$floor/dev/console" c 5 1
(cd "$floor" && find . | cpio -o -H newc --quiet) > "$work/floor.cpio"
qemu_ms=$(time_runs qemu-system-x86_64 -M microvm,acpi=off,x-option-roms=off -accel tcg -cpu max -m 512M \
  -nodefaults -no-user-config -nographic -no-reboot -display none \
  -kernel "$assets/vmlinuz" -initrd "$work/floor.cpio" -append "console=ttyS0 quiet panic=-1 reboot=t")

echo "bench: runc run true ($RUNS runs)" >&2
runc_ms=$(cd "$bundle" && time_runs runc --root "$work/runc" run bench)

echo "bench: memory of one idle sandbox" >&2
python3 - "$bundle/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["process"]["args"] = ["sleep", "600"]
json.dump(c, open(sys.argv[1], "w"))
PY
"$HULL" --root "$root" run -d --bundle "$bundle" idle </dev/null >/dev/null 2>&1
sleep 3
sup=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["pid"])' "$root/idle/state.json")
pss_kib=0
procs=""
for pid in $sup $(pgrep -f -- "$root/idle"); do
  [ -r "/proc/$pid/smaps_rollup" ] || continue
  case " $procs " in *" $pid "*) continue ;; esac
  procs="$procs $pid"
  kib=$(awk '/^Pss:/ {print $2}' "/proc/$pid/smaps_rollup")
  pss_kib=$((pss_kib + kib))
done
nprocs=$(echo $procs | wc -w)

cat <<TABLE
| measurement (median of $RUNS, $(nproc) cores, $(date -u +%Y-%m-%d)) | value |
|---|---|
| \`hull run\` of \`true\` (QEMU/TCG backend), wall | ${hull_ms} ms |
| bare QEMU/TCG boot of the same kernel to \`/init\` + power-off (floor) | ${qemu_ms} ms |
| \`runc run\` of the same bundle | ${runc_ms} ms |
| host memory (PSS) of one idle sandbox: supervisor, QEMU, virtiofsd, vsock backend ($nprocs processes) | $((pss_kib / 1024)) MiB |
TABLE
