#!/bin/sh
# Sum cargo test's "test result:" lines of LOG into one line, naming any failed test:
#   suite: NAME: P passed, F failed (failed: a b ...)
#
#   tests/nested/tally.sh NAME LOG
name=$1 log=$2
if [ ! -f "$log" ]; then echo "suite: $name: NO TESTS RAN (no $log)"; exit 0; fi
passed=$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\1/p' "$log" | awk '{s+=$1} END {print s+0}')
failed=$(sed -n 's/^test result: .* \([0-9]*\) passed; \([0-9]*\) failed.*/\2/p' "$log" | awk '{s+=$1} END {print s+0}')
names=$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$log" | tr '\n' ' ')
if [ -z "$(sed -n '/^test result: /p' "$log")" ]; then
  echo "suite: $name: NO TESTS RAN (see $log)"
  tail -n 20 "$log"
elif [ "$failed" -gt 0 ]; then
  echo "suite: $name: $passed passed, $failed failed (failed: $names)"
else
  echo "suite: $name: $passed passed, 0 failed"
fi
