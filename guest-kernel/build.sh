#!/usr/bin/env bash
# Build the hull guest kernel from Debian's linux-source-6.12 and our config fragment.
#
#   guest-kernel/build.sh OUT_DIR
#
# OUT_DIR receives bzImage (QEMU), vmlinux (hull-vmm) and config. The result is cached under
# ${HULL_CACHE:-~/.cache/hull}/kernel-<hash>, where the hash covers the fragment, this script and
# the installed source package, so a second run returns at once.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:?usage: build.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)  # the build cd's elsewhere
src_tar=/usr/src/linux-source-6.12.tar.xz
[ -f "$src_tar" ] || { echo "guest-kernel: $src_tar missing (apt-get install linux-source-6.12)" >&2; exit 1; }

cache_root=${HULL_CACHE:-$HOME/.cache/hull}
pkg_version=$(dpkg-query -W -f='${Version}' linux-source-6.12)
key=$( (cat "$here/hull.config" "$here/build.sh"; echo "$pkg_version") | sha256sum | cut -c1-16)
cache="$cache_root/kernel-$key"

if [ ! -f "$cache/bzImage" ]; then
  echo "guest-kernel: building Linux $pkg_version (cache key $key; ~6 min on 2 cores)"
  work=$(mktemp -d "$cache_root/kernel-build.XXXXXX" 2>/dev/null || { mkdir -p "$cache_root"; mktemp -d "$cache_root/kernel-build.XXXXXX"; })
  trap 'rm -rf "$work"' EXIT
  echo "guest-kernel: unpacking source"
  tar -C "$work" -xf "$src_tar"
  cd "$work"/linux-source-6.12
  make -s allnoconfig
  ./scripts/kconfig/merge_config.sh -n -m .config "$here/hull.config" >/dev/null
  make -s olddefconfig
  # Kconfig silently drops options whose dependencies are missing; refuse such a kernel.
  missing=0
  while IFS= read -r line; do
    case "$line" in CONFIG_*=* | "# CONFIG_"*" is not set") ;; *) continue ;; esac
    if ! grep -qx "$line" .config; then
      echo "guest-kernel: requested $line did not survive olddefconfig" >&2
      missing=1
    fi
  done < "$here/hull.config"
  [ "$missing" = 0 ] || exit 1
  echo "guest-kernel: compiling (progress every 30 s)"
  ( while sleep 30; do echo "guest-kernel: still compiling ($(find . -name '*.o' | wc -l) objects)"; done ) &
  ticker=$!
  make -s -j"$(nproc)" bzImage vmlinux >build.log 2>&1 || { kill $ticker; tail -40 build.log >&2; exit 1; }
  kill $ticker 2>/dev/null || true
  mkdir -p "$cache.tmp"
  cp arch/x86/boot/bzImage vmlinux .config "$cache.tmp/"
  mv "$cache.tmp/.config" "$cache.tmp/config"
  rm -rf "$cache"; mv "$cache.tmp" "$cache"
  echo "guest-kernel: built $(du -h "$cache/bzImage" | cut -f1) bzImage"
else
  echo "guest-kernel: cached ($cache)"
fi

mkdir -p "$out"
cp "$cache/bzImage" "$cache/vmlinux" "$cache/config" "$out/"
