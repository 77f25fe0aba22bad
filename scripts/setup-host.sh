#!/usr/bin/env bash
# Install the Debian packages hull needs to build and run (idempotent; quick when present).
set -euo pipefail
packages=(
  qemu-system-x86 linux-source-6.12 bc flex bison libelf-dev libssl-dev cpio   # guest kernel + VMM
  libseccomp-dev libcap-ng-dev                                                 # virtiofsd, static agent
  busybox-static iproute2 curl runc podman containerd containernetworking-plugins  # tests, demo, baselines
  protobuf-compiler                                                            # CRI test client (k8s-cri)
  nftables                                                                     # the shim's CRI port-forward
  umoci                                                                        # make bench: hull unpack's peer
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "setup: Debian packages present"
fi
