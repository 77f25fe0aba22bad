#!/usr/bin/env bash
# Freeze what the nested rig's L1 runs: copies of the release binaries, of the test
# executables (one per tests/tests/*.rs) and of the guest assets, under DIR. L1 sees the
# host's files live, so without this a rebuild on the host while L1 runs would swap binaries
# under a running suite (or make cargo in L1 rebuild, under TCG). suite-in-l1.sh mounts
# DIR/release over target/release and DIR/assets over build/assets, and runs DIR/tests.list.
#
#   tests/nested/freeze.sh DIR
set -euo pipefail
dir=${1:?usage: freeze.sh DIR}
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
rm -rf "$dir"
mkdir -p "$dir/release/deps"
cargo test --release --locked -p hull-tests --tests --no-run --message-format=json 2> "$dir/build.log" \
  | python3 -c '
import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    t = m.get("target", {})
    # Test executables of tests/tests/*.rs (the benches there are tests too, elsewhere).
    if m.get("executable") and t.get("kind") == ["test"] and os.path.dirname(t["src_path"]).endswith("tests/tests"):
        print(t["name"], m["executable"])
' | sort > "$dir/tests.host"
[ -s "$dir/tests.host" ] || { echo "freeze: no test executables (see $dir/build.log)" >&2; exit 1; }
while read -r name exe; do
  cp --reflink=auto "$exe" "$dir/release/deps/"
  echo "$name $(basename "$exe")"
done < "$dir/tests.host" > "$dir/tests.list"
for bin in hull hull-vmm containerd-shim-hull-v2; do
  [ -x "target/release/$bin" ] || { echo "freeze: target/release/$bin missing (make binaries)" >&2; exit 1; }
  cp --reflink=auto "target/release/$bin" "$dir/release/"
done
cp -a --reflink=auto build/assets "$dir/assets"
echo "freeze: $(wc -l < "$dir/tests.list") test executables, $(du -sh "$dir" | cut -f1) in $dir"
