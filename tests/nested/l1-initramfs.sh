#!/usr/bin/env bash
# Pack the nested rig's L1 initramfs: static busybox, the modules that reach the root share
# (virtio-mmio, virtio-fs, overlay) and tests/nested/l1-init. Cached beside the L1 kernel,
# keyed by the init script, this script and busybox's version. Prints the cpio's path.
#
#   tests/nested/l1-initramfs.sh L1_KERNEL_DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
kdir=${1:?usage: l1-initramfs.sh L1_KERNEL_DIR}
abi=$(cat "$kdir/abi")
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "l1-initramfs: $busybox missing (apt-get install busybox-static)" >&2; exit 1; }
key=$( (cat "$here/l1-init" "$here/l1-initramfs.sh"; dpkg-query -W -f='${Version}' busybox-static) | sha256sum | cut -c1-16)
out="$kdir/initramfs-$key.cpio"
if [ -f "$out" ]; then echo "$out"; exit 0; fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{bin,proc,sys,dev,modules}
cp "$busybox" "$work/bin/busybox"
cp "$here/l1-init" "$work/init"
chmod 0755 "$work/init"
: > "$work/modules/order"
for m in virtio_mmio virtiofs overlay; do
  modprobe -d "$kdir" -S "$abi" --show-depends "$m" | while read -r verb path _; do
    [ "$verb" = insmod ] || continue
    name=$(basename "$path")
    grep -qx "$name" "$work/modules/order" && continue
    cp "$path" "$work/modules/$name"
    echo "$name" >> "$work/modules/order"
  done
done
(cd "$work" && find . | cpio -o -H newc --quiet) > "$out.tmp"
mv "$out.tmp" "$out"
echo "$out"
