#!/bin/sh
# What make test runs inside the nested rig's L1 (through run-l1.sh), where /dev/kvm is real
# KVM: every end-to-end test file on hull-vmm (the backend `auto` picks there), then the
# foundation suite on QEMU with -accel kvm. Each file's cargo output goes to
# LOG_DIR/<backend>-<file>.log; a file that runs past its deadline is killed, with the
# process tree saved beside its log. The "suite:" lines are what make test prints in its table.
# What runs is FROZEN, the copy freeze.sh made of the host's build: it is mounted over
# target/release and build/assets here, and the test executables run without cargo.
#
#   tests/nested/suite-in-l1.sh LOG_DIR FROZEN
set -u
logs=${1:?usage: suite-in-l1.sh LOG_DIR FROZEN}
frozen=${2:?usage: suite-in-l1.sh LOG_DIR FROZEN}
mkdir -p "$logs"
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
mount --bind "$frozen/release" target/release && mount --bind "$frozen/assets" build/assets \
  || { echo "suite: L1 FAILED: could not mount the frozen build $frozen"; exit 125; }
status=0
# A failed test's guest console and VMM log land here (tests/src/lib.rs, Env::keep_logs).
export HULL_TEST_ARTIFACTS="$logs/artifacts"
deadline=${HULL_L1_FILE_DEADLINE:-900}
# KVM here runs under TCG: 20 guests booting at once (cli's parallel test) took past the
# runtime's 90 s to an answering agent in 2 of 2 runs, with empty consoles (slow, not stuck).
export HULL_BOOT_TIMEOUT=${HULL_BOOT_TIMEOUT:-300}
# The same test's creates, answered by those guests, took past the agent call timeout (60 s)
# with the host suite running beside L1 (make test).
export HULL_CALL_TIMEOUT=${HULL_CALL_TIMEOUT:-300}

backend=$(target/release/hull features | sed -n 's/.*"io.github.hull.hypervisor": "\(.*\)".*/\1/p')
if [ "$backend" != "hull-vmm (kvm)" ]; then
  echo "suite: L1 FAILED: the backend auto picks in L1 is '$backend', not hull-vmm (kvm)"
  exit 125
fi

run_file() {  # label, test file
  log="$logs/$1-$2.log"
  exe=$(awk -v n="$2" '$1 == n {print $2}' "$frozen/tests.list")
  [ -n "$exe" ] || { echo "suite: $1 $2: no frozen test executable"; status=1; return; }
  start=$(date +%s)
  # As cargo test runs it: from the package's directory.
  (cd tests && exec timeout --signal=KILL "$deadline" "$repo/target/release/deps/$exe" --test-threads=1) > "$log" 2>&1 &
  pid=$!
  while kill -0 $pid 2>/dev/null; do
    if [ $(( $(date +%s) - start )) -ge $(( deadline - 5 )) ]; then
      ps -eo pid,ppid,etimes,stat,args --forest > "$log.ps" 2>&1
      echo "suite: $1 $2: past its ${deadline}s deadline; processes in $log.ps"
      break
    fi
    sleep 2
  done
  wait $pid
  rc=$?
  echo "suite: $1 $2: exit $rc after $(( $(date +%s) - start ))s"
  [ $rc -eq 0 ] || status=1
}

# Every file of tests/tests has its executable in the list (freeze.sh). HULL_L1_FILES (names
# of tests/tests files) runs only those, for work on the rig; the suite line then says so.
files=${HULL_L1_FILES:-$(ls tests/tests/*.rs | xargs -n1 basename | sed 's/\.rs$//')}
[ -z "${HULL_L1_FILES:-}" ] || echo "suite: L1: only the files in HULL_L1_FILES: $HULL_L1_FILES (NOT the whole suite)"
for f in $files; do run_file hull-vmm "$f"; done
HULL_BACKEND=qemu run_file qemu-kvm foundation
cat "$logs"/hull-vmm-*.log > "$logs/L1 hull-vmm e2e.all"
tests/nested/tally.sh "L1 hull-vmm e2e" "$logs/L1 hull-vmm e2e.all"
tests/nested/tally.sh "L1 qemu-kvm foundation" "$logs/qemu-kvm-foundation.log"
exit $status
