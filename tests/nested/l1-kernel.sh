#!/usr/bin/env bash
# Fetch the L1 kernel of the nested-KVM rig: Debian's cloud kernel, which carries kvm.ko and
# kvm-amd.ko as modules. The package is downloaded and unpacked (never installed: the host's
# /boot and /lib/modules are not touched) into ${HULL_CACHE:-~/.cache/hull}/l1-kernel-<version>,
# with modules.dep generated there. Prints that directory.
#
#   tests/nested/l1-kernel.sh
set -euo pipefail
cache_root=${HULL_CACHE:-$HOME/.cache/hull}
meta=linux-image-cloud-amd64

# The metapackage names the current ABI's package; its version keys the cache.
pkg=$(apt-cache depends "$meta" 2>/dev/null | awk '/Depends: linux-image-/ {print $2; exit}')
if [ -z "$pkg" ]; then
  echo "l1-kernel: apt knows no $meta (is Debian's main archive in the sources?)" >&2
  exit 1
fi
version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
abi=${pkg#linux-image-}
dir="$cache_root/l1-kernel-$abi-$version"
if [ -f "$dir/vmlinuz" ] && [ -f "$dir/lib/modules/$abi/modules.dep" ]; then
  echo "$dir"
  exit 0
fi

echo "l1-kernel: downloading $pkg $version" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# apt warns that it downloads unsandboxed as root into a root-only dir: expected, not shown.
if ! (cd "$work" && apt-get download -q "$pkg=$version" >"$work/apt.log" 2>&1); then
  cat "$work/apt.log" >&2
  echo "l1-kernel: apt-get download $pkg=$version failed" >&2
  exit 1
fi
deb=$(ls "$work"/*.deb)
dpkg-deb -x "$deb" "$work/root"
[ -f "$work/root/boot/vmlinuz-$abi" ] || { echo "l1-kernel: $deb has no boot/vmlinuz-$abi" >&2; exit 1; }
for m in kvm kvm-amd irqbypass; do
  find "$work/root/lib/modules/$abi" -name "$m.ko*" | grep -q . \
    || { echo "l1-kernel: $deb carries no $m module" >&2; exit 1; }
done
depmod -b "$work/root" "$abi"
mkdir -p "$work/out"
mv "$work/root/boot/vmlinuz-$abi" "$work/out/vmlinuz"
mv "$work/root/boot/config-$abi" "$work/out/config"
mkdir -p "$work/out/lib/modules"
mv "$work/root/lib/modules/$abi" "$work/out/lib/modules/"
echo "$abi" > "$work/out/abi"
rm -rf "$dir"
mkdir -p "$cache_root"
mv "$work/out" "$dir"
echo "$dir"
