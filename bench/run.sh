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
  "$HULL" --root "$root" delete --force web >/dev/null 2>&1 || true
  runc --root "$work/runc" delete -f bench >/dev/null 2>&1 || true
  runc --root "$work/runc" delete -f web >/dev/null 2>&1 || true
  ip netns del hull-bench 2>/dev/null || true
  ip link del hbv-host 2>/dev/null || true
  ip link del hbr0 2>/dev/null || true
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

# The jail's cost, in the same run: start → agent ready (the supervisor's own measure) and
# `hull run true`, jailed (the default) and with HULL_JAIL=off, interleaved so load drifts hit
# both alike.
# TCG boots jitter by several percent from run to run: twice the runs here.
JAIL_RUNS=$((RUNS * 2))
echo "bench: the jail on vs off: agent ready and hull run true ($JAIL_RUNS runs each, interleaved)" >&2
ready_ms() {  # env... → ms from VM start to agent ready, from the log
  env "$@" HULL_LOG=info "$HULL" --root "$root" run --bundle "$bundle" bench 2>&1 >/dev/null \
    | sed -n 's/.*agent ready elapsed_ms=\([0-9]*\).*/\1/p' | head -1
}
on_ready=(); off_ready=(); on_run=(); off_run=()
for _ in $(seq "$JAIL_RUNS"); do
  on_ready+=($(ready_ms HULL_JAIL=on)); off_ready+=($(ready_ms HULL_JAIL=off))
  t0=$(now_ms); "$HULL" --root "$root" run --bundle "$bundle" bench >/dev/null 2>&1; on_run+=($(( $(now_ms) - t0 )))
  t0=$(now_ms); HULL_JAIL=off "$HULL" --root "$root" run --bundle "$bundle" bench >/dev/null 2>&1; off_run+=($(( $(now_ms) - t0 )))
done
jail_ready_on=$(median "${on_ready[@]}"); jail_ready_off=$(median "${off_ready[@]}")
jail_run_on=$(median "${on_run[@]}"); jail_run_off=$(median "${off_run[@]}")
pct() { python3 -c 'import sys; a,b=map(float,sys.argv[1:]); print(f"{(a-b)/b*100:+.1f}%")' "$1" "$2"; }

echo "bench: bare QEMU/TCG boot to /init and reboot (QEMU exits) ($RUNS runs)" >&2
floor=$work/floor
mkdir -p "$floor/bin" "$floor/dev"
cp /bin/busybox "$floor/bin/"
printf '#!/bin/busybox sh\n/bin/busybox reboot -f\n' > "$floor/init"; chmod +x "$floor/init"
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
# Idle: the guest's free page reports (every 2 s, a batch at a time) have settled by then.
sleep 20
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

"$HULL" --root "$root" delete --force idle >/dev/null 2>&1

echo "bench: network, host <-> container in a netns (bridge + veth, as the demo)" >&2
ip link add name hbr0 type bridge && ip link set hbr0 up && ip addr add 10.202.0.1/24 dev hbr0
ip link add name hbv-host type veth peer name hbv-guest
ip link set hbv-host up && ip link set hbv-host master hbr0
ip netns add hull-bench && ip link set hbv-guest netns hull-bench
ip netns exec hull-bench ip link set hbv-guest name eth0
ip netns exec hull-bench ip addr add 10.202.0.2/24 dev eth0
ip netns exec hull-bench ip link set eth0 up && ip netns exec hull-bench ip link set lo up
web=$work/web
mkdir -p "$web/rootfs"/{bin,proc,sys,dev,tmp,etc,www}
cp /bin/busybox "$web/rootfs/bin/" && ln -s busybox "$web/rootfs/bin/httpd"
echo "hello world" > "$web/rootfs/www/hello"
head -c $((32 << 20)) /dev/urandom > "$web/rootfs/www/big"
(cd "$web" && "$HULL" spec)
python3 - "$web/config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["process"]["args"] = ["httpd", "-f", "-p", "8000", "-h", "/www"]
for n in c["linux"]["namespaces"]:
    if n["type"] == "network":
        n["path"] = "/var/run/netns/hull-bench"
json.dump(c, open(sys.argv[1], "w"))
PY
wait_http() { for _ in $(seq 1 150); do curl -s --max-time 2 -o /dev/null http://10.202.0.2:8000/hello && return 0; sleep 0.2; done; return 1; }
net_measure() {  # → "MB/s latency_ms"
  local speeds=() lat=()
  for _ in $(seq 3); do
    speeds+=($(curl -s -o /dev/null -w '%{speed_download}' http://10.202.0.2:8000/big))
  done
  for _ in $(seq 20); do
    lat+=($(curl -s -o /dev/null -w '%{time_total}' http://10.202.0.2:8000/hello))
  done
  python3 -c 'import sys,statistics
a=sys.argv[1:4]; b=sys.argv[4:]
print(f"{statistics.median(map(float,a))/1e6:.1f} {statistics.median(map(float,b))*1000:.2f}")' "${speeds[@]}" "${lat[@]}"
}
"$HULL" --root "$root" run -d --bundle "$web" web </dev/null >/dev/null 2>&1
wait_http || { echo "bench: hull web container did not answer" >&2; exit 1; }
read -r hull_mbs hull_lat <<<"$(net_measure)"
"$HULL" --root "$root" delete --force web >/dev/null 2>&1
(cd "$web" && runc --root "$work/runc" run -d web </dev/null >/dev/null 2>&1)
wait_http || { echo "bench: runc web container did not answer" >&2; exit 1; }
read -r runc_mbs runc_lat <<<"$(net_measure)"
runc --root "$work/runc" delete -f web >/dev/null 2>&1

echo "bench: hull-vmm: start → first KVM_RUN and memory, next to QEMU microvm ($RUNS runs)" >&2
vmm_rows=$(RUNS=$RUNS "$here/target/release/vmm-bench")
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -e /dev/kvm ]; then
  echo "bench: hull run true on the hull-vmm backend (hardware KVM) ($RUNS runs)" >&2
  vmm_run_ms=$(HULL_BACKEND=hull-vmm time_runs "$HULL" --root "$root" run --bundle "$bundle" bench)
  vmm_rows="$vmm_rows
| \`hull run\` of \`true\` on hull-vmm (hardware KVM): start → agent ready → exit, wall | ${vmm_run_ms} ms |"
else
  vmm_rows="$vmm_rows
| \`hull run\` on hull-vmm, start → agent ready | not measured: no hardware KVM here (PVM cannot boot Linux) |"
fi

# Image unpack: a 100 MiB (uncompressed) three-layer gzip image, the third layer deleting
# files of the first (whiteouts) and replacing a directory (opaque), by hull and by umoci, each
# into a fresh bundle, interleaved.
echo "bench: image unpack, hull vs umoci ($RUNS runs each, interleaved)" >&2
img=$work/unpack-image
python3 - "$work/unpack-layers" <<'PY'
import os, random, sys
top = sys.argv[1]
rnd = random.Random(7)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(3, 9))) for _ in range(500)]
def text(n):
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(words) + b" "
    return bytes(out[:n])
def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(data)
for i in range(1500):  # layer 1: 1500 files of 32 KiB, half random, half text: 48 MiB
    write(f"{top}/1/usr/share/d{i % 50}/f{i}", rnd.randbytes(32768) if i % 2 else text(32768))
for i in range(20):    # layer 2: 20 files of 1.5 MiB: 30 MiB
    write(f"{top}/2/opt/big/b{i}", rnd.randbytes(1536 * 1024) if i % 2 else text(1536 * 1024))
for i in range(580):   # layer 3: 580 text files of 38 KiB (22 MiB), whiteouts, an opaque dir
    write(f"{top}/3/srv/s{i % 20}/t{i}", text(38912))
for i in range(0, 100, 2):
    write(f"{top}/3/usr/share/d{i % 50}/.wh.f{i}", b"")
write(f"{top}/3/usr/share/d7/.wh..wh..opq", b"")
write(f"{top}/3/usr/share/d7/new", b"new")
PY
python3 "$here/scripts/oci-image.py" --out "$img" --ref bench --config '{"Cmd": ["/bin/sh"]}' \
  --layer "$work/unpack-layers/1" --layer "$work/unpack-layers/2" --layer "$work/unpack-layers/3"
rm -rf "$work/unpack-layers"
image_mib=$(du -sm "$img/blobs" | cut -f1)
hull_unpack=() umoci_unpack=()
for _ in $(seq "$RUNS"); do
  rm -rf "$work/u-hull" "$work/u-umoci"; sync
  t0=$(now_ms); "$HULL" unpack --image "$img:bench" "$work/u-hull" 2>/dev/null; hull_unpack+=($(( $(now_ms) - t0 )))
  t0=$(now_ms); umoci unpack --image "$img:bench" "$work/u-umoci" >/dev/null 2>&1; umoci_unpack+=($(( $(now_ms) - t0 )))
done
# The same tree from both (umoci keeps its own metadata files next to rootfs).
if ! diff -r --no-dereference "$work/u-hull/rootfs" "$work/u-umoci/rootfs" >/dev/null; then
  echo "bench: hull and umoci unpacked different trees" >&2; exit 1
fi
rm -rf "$work/u-hull" "$work/u-umoci"
unpack_row="| unpack of a 100 MiB three-layer gzip image (${image_mib} MiB of blobs), hull / \`umoci unpack\` $(umoci --version | awk '{print $3}') | $(median "${hull_unpack[@]}") / $(median "${umoci_unpack[@]}") ms |"

echo "bench: containerd (private instance): ctr run, CRI pods, pod memory" >&2
containerd_rows=$(RUNS=$RUNS "$here/target/release/containerd-bench")

cat <<TABLE
| measurement (median of $RUNS, $(nproc) cores, $(date -u +%Y-%m-%d)) | value |
|---|---|
| \`hull run\` of \`true\` (QEMU/TCG backend), wall | ${hull_ms} ms |
| VM start → agent ready, jail on / off (QEMU and vsock backend jailed, or \`HULL_JAIL=off\`; median of $JAIL_RUNS) | ${jail_ready_on} / ${jail_ready_off} ms ($(pct "$jail_ready_on" "$jail_ready_off")) |
| \`hull run\` of \`true\`, jail on / off (median of $JAIL_RUNS) | ${jail_run_on} / ${jail_run_off} ms ($(pct "$jail_run_on" "$jail_run_off")) |
| bare QEMU/TCG boot of the same kernel to \`/init\` + reboot (floor) | ${qemu_ms} ms |
| \`runc run\` of the same bundle | ${runc_ms} ms |
| host memory (PSS) of one idle sandbox, 20 s after start: supervisor, QEMU, virtiofsd, vsock backend ($nprocs processes) | $((pss_kib / 1024)) MiB |
| HTTP GET of a 32 MiB file, host → container (hull / runc, same netns setup) | ${hull_mbs} / ${runc_mbs} MB/s |
| HTTP GET /hello latency, host → container (hull / runc, median of 20) | ${hull_lat} / ${runc_lat} ms |
$unpack_row
$vmm_rows
$containerd_rows
TABLE
