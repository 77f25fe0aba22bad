#!/usr/bin/env bash
# The seed demo, with a VM inside: an HTTP server answering GET /hello with "hello world",
# run by hull in a microVM attached to a network namespace wired like runc's classic demo
# (bridge 10.200.0.1/24, veth pair, the container's eth0 at 10.200.0.2), then curl'd from
# the host. Everything it creates is removed on exit. Run as root.
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

step "building an OCI bundle of a tiny HTTP server (busybox httpd)"
rootfs=$work/bundle/rootfs
mkdir -p "$rootfs"/{bin,proc,sys,dev,tmp,etc,www}
cp /bin/busybox "$rootfs/bin/busybox"
for applet in sh httpd; do ln -s busybox "$rootfs/bin/$applet"; done
echo "hello world" > "$rootfs/www/hello"
(cd "$work/bundle" && "$HULL" spec)
python3 - "$work/bundle/config.json" "$NS" <<'PY'
import json, sys
path, ns = sys.argv[1], sys.argv[2]
c = json.load(open(path))
c["process"]["args"] = ["httpd", "-f", "-p", "8000", "-h", "/www"]
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
