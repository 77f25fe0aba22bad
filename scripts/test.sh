#!/usr/bin/env bash
# The body of `make test` (and of `make test-nested`) after make check and the assets: the
# end-to-end suites, wherever each can run, then a table of what ran where and how many
# passed, then short fuzzing.
#
# - Hardware KVM (vmx/svm): the whole suite on hull-vmm on /dev/kvm, then the foundation
#   suite on QEMU/KVM.
# - No hardware KVM (these CI machines: PVM): the whole suite on the host with QEMU/TCG
#   (hull-vmm only through its synthetic guest there). `scripts/test.sh nested` (make
#   test-nested) runs, instead, the nested rig's part: in an L1 VM with real KVM inside
#   QEMU/TCG (tests/nested/), the whole end-to-end suite on hull-vmm and the foundation suite
#   on QEMU/KVM. It is not part of make test yet: L1 itself still hangs now and then (README,
#   "The nested-KVM rig"), and make test prints that it did not run.
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

part=${1:-host}
if grep -qwE 'vmx|svm' /proc/cpuinfo && [ -e /dev/kvm ]; then
  echo "test: hardware KVM present: the suite runs on hull-vmm here, then the foundation suite on QEMU/KVM"
  run_host "host hull-vmm all" --workspace
  HULL_BACKEND=qemu run_host "host qemu-kvm foundation" -p hull-tests --test foundation
else
  if [ "$part" = host ]; then
    echo "test: no hardware KVM here (vmx/svm): the suite runs on QEMU/TCG"
    run_host "host qemu-tcg all" --workspace
    summary+=("suite: L1 hull-vmm e2e: NOT RUN by make test (make test-nested runs it; README: The nested-KVM rig)")
  else
    # L1 runs a frozen copy of what is built here, so the host may rebuild meanwhile.
    if tests/nested/freeze.sh "$logs/l1-frozen"; then
      echo "test: L1: booting the nested-KVM rig (tests/nested/run-l1.sh)"
      tests/nested/run-l1.sh --scratch "$logs/l1" -- tests/nested/suite-in-l1.sh "$logs/l1/logs" "$logs/l1-frozen"
      rc=$?
    else
      rc=125
    fi
    if [ $rc -eq 125 ]; then
      summary+=("suite: L1 (nested KVM): L1 FAILED (see above): it did not start, hung or panicked")
    fi
    [ $rc -eq 0 ] || status=1
    summary+=("$(tests/nested/tally.sh "L1 hull-vmm e2e" "$logs/l1/logs/L1 hull-vmm e2e.all")")
    summary+=("$(tests/nested/tally.sh "L1 qemu-kvm foundation" "$logs/l1/logs/qemu-kvm-foundation.log")")
  fi
fi

echo
echo "test: what ran where"
for line in "${summary[@]}"; do echo "  $line"; done
[ $status -eq 0 ] || { echo "test: FAILED"; exit 1; }
[ "$part" = host ] && scripts/fuzz.sh "${FUZZ_SECONDS:-30}"
exit 0
