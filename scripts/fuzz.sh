#!/usr/bin/env bash
# Short fuzzing runs of what reads hostile input on the host: hull-vmm's guest-facing parsers
# (descriptor chains, vsock packets), the agent protocol as the host reads it (control frames,
# stream headers, port-forward replies) and hull unpack's layer applier.
# cargo-fuzz is installed into the tool cache outside the repo, like the other helpers. The
# machine has a stable toolchain only; RUSTC_BOOTSTRAP lets it take the sanitizer flags.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]   (default 30)
set -euo pipefail
seconds=${1:-30}
cache_root=${HULL_CACHE:-$HOME/.cache/hull}
version=0.13.2
root="$cache_root/tools/cargo-fuzz-$version"
if [ ! -x "$root/bin/cargo-fuzz" ]; then
  echo "fuzz: cargo install cargo-fuzz $version (a few minutes on 2 cores)"
  cargo install --quiet --locked --root "$root.tmp" --version "$version" cargo-fuzz
  rm -rf "$root"; mv "$root.tmp" "$root"
fi
repo=$(cd "$(dirname "$0")/.." && pwd)
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for spec in vmm:virtqueue_chain vmm:vsock_packets agent/protocol:guest_messages image:layer_apply; do
  crate=${spec%%:*} target=${spec#*:}
  echo "fuzz: $target ($crate/fuzz) for ${seconds}s"
  if ! (cd "$repo/$crate" && RUSTC_BOOTSTRAP=1 "$root/bin/cargo-fuzz" run "$target" -- -max_total_time="$seconds" -print_final_stats=1) >"$log" 2>&1; then
    tail -40 "$log"
    echo "fuzz: $target FAILED (crash inputs, if any, are in $crate/fuzz/artifacts/$target/)"
    exit 1
  fi
  runs=$(grep -oE "^stat::number_of_executed_units: *[0-9]+" "$log" | grep -oE "[0-9]+$")
  echo "fuzz: $target: ${runs:-?} inputs, no crash"
done
