#!/usr/bin/env bash
# Fetch another QEMU for the nested rig's L1 (run-l1.sh with HULL_L1_QEMU=backports):
# Debian's bookworm-backports build (QEMU 10), downloaded and unpacked, never installed (the
# host's own QEMU, which the host suite uses, is untouched), into
# ${HULL_CACHE:-~/.cache/hull}/l1-qemu-<version>. Prints that directory; its
# bin/qemu-system-x86_64 runs with -L <dir>/share/qemu.
#
# Tried because under bookworm's QEMU 7.2, L1 sometimes stops for good (both vCPUs halted with
# interrupts enabled and the timer's vector pending in the local APIC's IRR). Under QEMU 10
# (2026-12-03): with shadow paging (kvm_amd.npt=0) no hull-vmm guest printed a byte in 40 s;
# with nested paging, L1's kernel crashed 300 s into a suite run as 7.2's does with it.
#
# The archive is reached through apt with a private source list and state, so the packages
# are verified against Debian's keys as any apt download is.
#
#   tests/nested/l1-qemu.sh
set -euo pipefail
cache_root=${HULL_CACHE:-$HOME/.cache/hull}
suite=bookworm-backports
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/archives/partial"
echo "deb http://deb.debian.org/debian $suite main" > "$work/sources.list"
apt_opts=(-o "Dir::Etc::SourceList=$work/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$work/lists" -o "Dir::Cache::Archives=$work/archives"
  -o Dir::State::Status=/var/lib/dpkg/status -o APT::Get::List-Cleanup=0)
apt_log="$work/apt.log"
fail() { cat "$apt_log" >&2 2>/dev/null || true; echo "l1-qemu: $*" >&2; exit 1; }
apt-get -q "${apt_opts[@]}" update > "$apt_log" 2>&1 || fail "apt-get update of $suite failed"
version=$(apt-cache "${apt_opts[@]}" show "qemu-system-x86/$suite" 2>/dev/null | awk '/^Version:/ {print $2; exit}')
[ -n "$version" ] || fail "$suite has no qemu-system-x86"
dir="$cache_root/l1-qemu-${version//[:~+]/_}"
if [ -x "$dir/bin/qemu-system-x86_64" ] && [ -d "$dir/share/qemu" ]; then
  echo "$dir"
  exit 0
fi
echo "l1-qemu: downloading qemu-system-x86 $version ($suite)" >&2
(cd "$work" && apt-get download -q "${apt_opts[@]}" "qemu-system-x86=$version" "qemu-system-data=$version" \
  > "$apt_log" 2>&1) || fail "apt-get download failed"
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
bin="$work/root/usr/bin/qemu-system-x86_64"
[ -x "$bin" ] || fail "no qemu-system-x86_64 in the packages"
# Every library it needs must already be on the host (bookworm's QEMU needs the same ones).
missing=$(ldd "$bin" | awk '/not found/ {print $1}')
[ -z "$missing" ] || fail "libraries missing for QEMU $version: $missing"
mkdir -p "$work/out/bin" "$work/out/share"
mv "$bin" "$work/out/bin/"
mv "$work/root/usr/share/qemu" "$work/out/share/"
"$work/out/bin/qemu-system-x86_64" -L "$work/out/share/qemu" --version | head -1 > "$work/out/version"
rm -rf "$dir"
mkdir -p "$cache_root"
mv "$work/out" "$dir"
echo "$dir"
