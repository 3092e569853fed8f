#!/usr/bin/env bash
# Prints the QEMU tests' times that `make test` recorded (tests/src/lock.rs writes one
# line per VM: test name, seconds), longest first, then the sum: CI time is a budget, and
# this is where a growing suite shows it.
set -euo pipefail
file=${1:?usage: test-times.sh FILE}
[ -s "$file" ] || { echo "QEMU test times: none recorded in $file"; exit 0; }
echo "QEMU test times (VM time per test, longest first):"
awk -F'\t' '{ t[$1] += $2; n[$1]++; all += $2 }
  END {
    for (k in t) printf "%8.1f s  %2d VM%s  %s\n", t[k], n[k], (n[k] == 1 ? " " : "s"), k | "sort -rn"
    close("sort -rn")
    printf "%8.1f s  all %d QEMU tests\n", all, length(t)
  }' "$file"
