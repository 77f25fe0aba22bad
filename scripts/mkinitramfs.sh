#!/usr/bin/env bash
# Pack the guest initramfs: the static hull-agent as /init and a console node, nothing else.
#   scripts/mkinitramfs.sh AGENT_BINARY OUT_CPIO
set -euo pipefail
agent=${1:?usage: mkinitramfs.sh AGENT OUT}
out=${2:?usage: mkinitramfs.sh AGENT OUT}
if readelf -d "$agent" | grep -q NEEDED; then
  echo "mkinitramfs: $agent is dynamically linked; the guest has no libc" >&2
  exit 1
fi
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/dev"
strip -o "$stage/init" "$agent"
# The kernel opens /dev/console for init before anything is mounted.
mknod -m 600 "$stage/dev/console" c 5 1
(cd "$stage" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) > "$out.tmp"
mv "$out.tmp" "$out"
echo "mkinitramfs: $(du -h "$out" | cut -f1) $out"
