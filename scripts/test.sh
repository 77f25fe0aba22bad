#!/usr/bin/env bash
# The body of `make test` (and of `make test-nested`) after make check and the assets: the
# end-to-end suites, wherever each can run, then a table of what ran where and how many
# passed, then short fuzzing.
#
# - Hardware KVM (vmx/svm): the whole suite on hull-vmm on /dev/kvm, then the foundation
#   suite on QEMU/KVM.
# - No hardware KVM (these CI machines: PVM): two parts side by side, each on about one of
#   the two cores: the whole suite on the host with QEMU/TCG (hull-vmm only through its
#   synthetic guest there), and the nested rig (tests/nested/): in an L1 VM with real KVM
#   inside QEMU/TCG, the whole end-to-end suite on hull-vmm and the foundation suite on
#   QEMU/KVM. Either part alone: `scripts/test.sh host`, `scripts/test.sh nested`
#   (make test-nested); the table then says loudly what did not run.
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export HULL_ASSET_DIR=$repo/build/assets
logs=$repo/target/test-logs
rm -rf "$logs"
mkdir -p "$logs"
summary=()
status=0
# A failed test's guest console and VMM log land here (tests/src/lib.rs, Env::keep_logs).
export HULL_TEST_ARTIFACTS=$logs/artifacts

run_host() {  # name, then cargo test arguments
  local name=$1; shift
  echo "test: $name"
  cargo test --release --locked --no-fail-fast "$@" -- --test-threads=1 2>&1 | tee "$logs/$name.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  summary+=("$(tests/nested/tally.sh "$name" "$logs/$name.log")")
}

# The nested rig, in the background: L1 runs a frozen copy of what is built here (so the
# host may rebuild meanwhile), its output goes to a file, and l1_collect adds its lines to
# the table.
l1_pid= l1_started=
l1_start() {
  l1_started=$(date +%s)
  if ! tests/nested/freeze.sh "$logs/l1-frozen" > "$logs/l1.out" 2>&1; then
    echo 125 > "$logs/l1.rc"
    return
  fi
  echo "test: L1: booting the nested-KVM rig (tests/nested/run-l1.sh; its output: $logs/l1.out)"
  ( tests/nested/run-l1.sh --scratch "$logs/l1" -- tests/nested/suite-in-l1.sh "$logs/l1/logs" "$logs/l1-frozen" \
      >> "$logs/l1.out" 2>&1
    echo $? > "$logs/l1.rc" ) &
  l1_pid=$!
}
l1_collect() {
  [ -z "$l1_pid" ] || wait "$l1_pid"
  local rc
  rc=$(cat "$logs/l1.rc" 2>/dev/null || echo 125)
  echo
  echo "test: L1's output ($logs/l1.out):"
  sed 's/^/  L1| /' "$logs/l1.out"
  # A failed L1 test's own output, so that the run's log says why (bounded).
  for f in "$logs"/l1/logs/*.log; do
    [ -f "$f" ] && grep -q '^failures:$' "$f" || continue
    echo "test: L1: failures in $(basename "$f"):"
    sed -n '/^failures:$/,/^test result:/p' "$f" | head -c 20000 | sed 's/^/  L1| /'
  done
  if [ "$rc" -eq 125 ]; then
    summary+=("suite: L1 (nested KVM): L1 FAILED (see L1's output above): it did not start, hung or panicked")
  fi
  [ "$rc" -eq 0 ] || status=1
  summary+=("$(tests/nested/tally.sh "L1 hull-vmm e2e" "$logs/l1/logs/L1 hull-vmm e2e.all")")
  summary+=("$(tests/nested/tally.sh "L1 qemu-kvm foundation" "$logs/l1/logs/qemu-kvm-foundation.log")")
}

part=${1:-all}
case $part in
  all | host | nested) ;;
  *) echo "usage: scripts/test.sh [all|host|nested]" >&2; exit 2 ;;
esac
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -e /dev/kvm ]; then
  echo "test: hardware KVM present: the suite runs on hull-vmm here, then the foundation suite on QEMU/KVM"
  run_host "host hull-vmm all" --workspace
  HULL_BACKEND=qemu run_host "host qemu-kvm foundation" -p hull-tests --test foundation
else
  case $part in
    all) echo "test: no hardware KVM here (vmx/svm): the whole suite on QEMU/TCG here and, side by side, on hull-vmm in the nested rig's L1" ;;
    host) echo "test: no hardware KVM here (vmx/svm): the whole suite on QEMU/TCG here (only: the nested rig does NOT run)" ;;
    nested) echo "test: no hardware KVM here (vmx/svm): the whole suite on hull-vmm in the nested rig's L1 (only: the host suite does NOT run)" ;;
  esac
  [ "$part" = host ] || l1_start
  if [ "$part" != nested ]; then
    run_host "host qemu-tcg all" --workspace
  else
    summary+=("suite: host qemu-tcg all: NOT RUN (scripts/test.sh nested runs only L1)")
  fi
  if [ "$part" != host ]; then
    [ -z "$l1_pid" ] || echo "test: waiting for L1 (started $(( $(date +%s) - l1_started ))s ago)"
    l1_collect
  else
    summary+=("suite: L1 hull-vmm e2e: NOT RUN (scripts/test.sh host runs only the host part; make test runs both)")
  fi
fi

echo
echo "test: what ran where"
for line in "${summary[@]}"; do echo "  $line"; done
[ $status -eq 0 ] || { echo "test: FAILED"; exit 1; }
[ "$part" = nested ] || scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
exit 0
