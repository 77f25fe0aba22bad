#!/usr/bin/env bash
# Install the helper daemons hull runs beside each VM, from crates.io, into a cache outside
# the repo keyed by name and version, then copy them into the asset prefix's bin/.
#
#   scripts/install-tools.sh DEST_BIN_DIR
set -euo pipefail
dest=${1:?usage: install-tools.sh DEST_BIN_DIR}
cache_root=${HULL_CACHE:-$HOME/.cache/hull}
mkdir -p "$dest"

install_tool() {  # crate version binary
  local crate=$1 version=$2 bin=$3
  local root="$cache_root/tools/$crate-$version"
  if [ ! -x "$root/bin/$bin" ]; then
    echo "tools: cargo install $crate $version (a few minutes on 2 cores)"
    cargo install --quiet --locked --root "$root.tmp" --version "$version" "$crate"
    rm -rf "$root"; mv "$root.tmp" "$root"
  else
    echo "tools: $crate $version cached"
  fi
  install -m 0755 "$root/bin/$bin" "$dest/$bin"
}

install_tool virtiofsd 1.14.0 virtiofsd
install_tool vhost-device-vsock 0.3.0 vhost-device-vsock
