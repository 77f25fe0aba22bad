#!/usr/bin/env bash
# hull-vmm on real KVM, measured here where the host has none: inside the nested rig's L1
# (tests/nested/run-l1.sh), hull-vmm against QEMU/KVM, next to QEMU/TCG on the host itself.
# Everything in L1 is emulated by TCG, so only ratios between rows measured in the same L1
# mean anything. Prints a Markdown table.
#
#   bench/nested.sh            (RUNS=N for the median of N, default 7)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
HULL=$here/target/release/hull
RUNS=${RUNS:-7}
export HULL_ASSET_DIR=${HULL_ASSET_DIR:-$here/build/assets}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/bundle/rootfs"/{bin,proc,sys,dev,tmp,etc}
cp /bin/busybox "$work/bundle/rootfs/bin/"
ln -s busybox "$work/bundle/rootfs/bin/true"
(cd "$work/bundle" && "$HULL" spec)
python3 - "$work/bundle/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1])); c["process"]["args"] = ["true"]
json.dump(c, open(sys.argv[1], "w"))
PY
echo "bench: host: hull run true on QEMU/TCG ($RUNS runs)" >&2
samples=()
for _ in $(seq "$RUNS"); do
  t0=$(date +%s%N | cut -c1-13)
  HULL_BACKEND=qemu "$HULL" --root "$work/state" run --bundle "$work/bundle" b >/dev/null 2>&1
  samples+=($(( $(date +%s%N | cut -c1-13) - t0 )))
done
host_run=$(python3 -c 'import sys,statistics; print(f"{statistics.median(map(float,sys.argv[1:])):.0f}")' "${samples[@]}")

echo "bench: L1: hull-vmm vs QEMU/KVM ($RUNS runs each, interleaved)" >&2
"$here/tests/nested/run-l1.sh" --scratch "$work/l1" -- bash -c "bench/nested-in-l1.sh $RUNS > \$L1_SCRATCH/result" >&2
# shellcheck disable=SC1091
. <(tr ' ' '\n' < "$work/l1/result" | grep -E '^[a-z_-]+=[0-9]+$' | tr '-' '_')
ratio() { python3 -c 'import sys; a,b=map(float,sys.argv[1:]); print(f"{a/b:.2f}")' "$1" "$2"; }
cat <<TABLE
| measurement (median of $RUNS; L1 = QEMU/TCG VM with nested KVM, ${HULL_L1_CPUS:-1} vCPU(s); $(date -u +%F)) | hull-vmm | QEMU/KVM | hull-vmm / QEMU |
|---|---|---|---|
| L1: VM process start → agent ready | $ready_hull_vmm ms | $ready_qemu ms | $(ratio "$ready_hull_vmm" "$ready_qemu") |
| L1: \`hull run\` of \`true\`, wall | $run_hull_vmm ms | $run_qemu ms | $(ratio "$run_hull_vmm" "$run_qemu") |
| L1: VMM memory beyond guest RAM (RssAnon + RssFile), idle | $vmm_hull_vmm MiB | $vmm_qemu MiB | $(ratio "$vmm_hull_vmm" "$vmm_qemu") |
| L1: PSS of one idle sandbox, 20 s after start (supervisor, VMM, daemons: $procs_hull_vmm / $procs_qemu processes) | $pss_hull_vmm MiB | $pss_qemu MiB | $(ratio "$pss_hull_vmm" "$pss_qemu") |
| host: \`hull run\` of \`true\` on QEMU/TCG (no KVM here), wall | — | $host_run ms (TCG) | — |
TABLE
