#!/usr/bin/env bash
# The seed demo, with a VM inside, on the articles' whole path: an OCI image layout of an
# HTTP server answering GET /hello with "hello world" (two layers and a config with
# Entrypoint, Env and ExposedPorts), unpacked into a bundle by `hull unpack`, run by hull in
# a microVM attached to a network namespace wired like runc's classic demo (bridge
# 10.200.0.1/24, veth pair, the container's eth0 at 10.200.0.2), then curl'd from the host. Everything it creates is removed on exit. Run as root.
set -euo pipefail

HULL=${HULL:-hull}
ID=hull-demo
NS=hull-demo
BRIDGE=hull0
work=$(mktemp -d /tmp/hull-demo.XXXXXX)

cleanup() {
  [ -n "${DEMO_KEEP:-}" ] && return 0
  "$HULL" delete --force "$ID" >/dev/null 2>&1 || true
  ip netns del "$NS" 2>/dev/null || true
  ip link del veth-host 2>/dev/null || true
  ip link del "$BRIDGE" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
cleanup  # a previous run interrupted hard may have left these

step() { echo "demo: $*"; }

step "building an OCI image layout of a tiny HTTP server (busybox httpd): a base layer, then the page"
layers=$work/layers
mkdir -p "$layers"/base/{bin,proc,sys,dev,tmp,etc} "$layers/app/www"
cp /bin/busybox "$layers/base/bin/busybox"
for applet in sh httpd; do ln -s busybox "$layers/base/bin/$applet"; done
echo "hello world" > "$layers/app/www/hello"
python3 "$(dirname "$0")/oci-image.py" --out "$work/image" --ref v0 --layer "$layers/base" --layer "$layers/app" \
  --config '{"Entrypoint": ["httpd", "-f"], "Cmd": ["-p", "8000", "-h", "/www"], "Env": ["PATH=/bin"],
             "WorkingDir": "/www", "ExposedPorts": {"8000/tcp": {}}}'
python3 -m json.tool "$work/image/index.json" | grep -E '"(digest|org.opencontainers.image.ref.name)"'

step "hull unpack --image $work/image:v0 (the articles' oci-image-tool unpack, and config.json from the image config)"
"$HULL" unpack --image "$work/image:v0" "$work/bundle"
python3 - "$work/bundle/config.json" "$NS" <<'PY'
import json, sys
path, ns = sys.argv[1], sys.argv[2]
c = json.load(open(path))
print("demo: process.args from the image:", " ".join(c["process"]["args"]))
c["hostname"] = "hull-demo"
for n in c["linux"]["namespaces"]:
    if n["type"] == "network":
        n["path"] = f"/var/run/netns/{ns}"
json.dump(c, open(path, "w"), indent=2)
PY

step "wiring bridge $BRIDGE (10.200.0.1/24), veth pair and netns $NS (eth0 10.200.0.2/24), as in runc's demo"
ip link add name "$BRIDGE" type bridge
ip link set "$BRIDGE" up
ip addr add 10.200.0.1/24 dev "$BRIDGE"
ip -6 addr add fd00:200::1/64 dev "$BRIDGE" nodad
ip link add name veth-host type veth peer name veth-guest
ip link set veth-host up
ip link set veth-host master "$BRIDGE"
ip netns add "$NS"
ip link set veth-guest netns "$NS"
ip netns exec "$NS" ip link set veth-guest name eth0
ip netns exec "$NS" ip addr add 10.200.0.2/24 dev eth0
ip netns exec "$NS" ip -6 addr add fd00:200::2/64 dev eth0 nodad
ip netns exec "$NS" ip link set eth0 up
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip route add default via 10.200.0.1

step "hull run -d: booting a microVM for the container"
"$HULL" run -d --bundle "$work/bundle" "$ID" </dev/null >/dev/null 2>"$work/run.err" || { cat "$work/run.err" >&2; exit 1; }
"$HULL" state "$ID" | grep -E '"(status|pid)"'

step "curl 10.200.0.2:8000/hello"
for _ in $(seq 1 100); do
  if out=$(curl -s --max-time 2 http://10.200.0.2:8000/hello); then break; fi
  sleep 0.2
done
echo "$out"
[ "$out" = "hello world" ] || { echo "demo: unexpected answer: $out" >&2; exit 1; }
if [ "${DEMO_IPV6:-1}" = 1 ]; then
  step "curl [fd00:200::2]:8000/hello (IPv6)"
  curl -s --max-time 5 "http://[fd00:200::2]:8000/hello"
fi
step "done; cleaning up"
