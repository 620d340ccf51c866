#!/usr/bin/env bash
# Re-run chapters of the smoke profile from scratch in a second runs folder and require byte-identical
# metrics.csv files: the same seed on CPU must give the same numbers.
# Usage: bash scripts/check_determinism.sh [NOTEBOOK ...]   (default: 01_data_preparation 03_cbmat_training)
set -euo pipefail
cd "$(dirname "$0")/.."
chapters=("$@")
[ ${#chapters[@]} -gt 0 ] || chapters=(01_data_preparation 03_cbmat_training)
second=$(mktemp -d)
trap 'rm -rf "$second"' EXIT
only=()
for c in "${chapters[@]}"; do only+=(--only "$c"); done
.venv/bin/python -m difflung run --profile smoke --runs-dir "$second" --notebooks-out "$second/executed" "${only[@]}"
status=0
for c in "${chapters[@]}"; do
  if cmp -s "runs/smoke/$c/metrics.csv" "$second/smoke/$c/metrics.csv"; then
    echo "determinism: $c/metrics.csv byte-identical ($(wc -l < "runs/smoke/$c/metrics.csv") lines)"
  else
    echo "determinism: $c/metrics.csv DIFFERS between two runs with the same seed" >&2
    diff "runs/smoke/$c/metrics.csv" "$second/smoke/$c/metrics.csv" | head -20 >&2 || true
    status=1
  fi
done
exit $status
