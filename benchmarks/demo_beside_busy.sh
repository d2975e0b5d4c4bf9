#!/usr/bin/env bash
# `make demo` on fresh clones of this repository, beside a CPU-bound process and on the idle machine,
# at a commit before the thread fix (BEFORE, default 4f9a5f2) and at HEAD. Clones go next to this
# checkout, so that the Makefile finds ../shared/data as it does here.
#   bash benchmarks/demo_beside_busy.sh [BEFORE]
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
before=${1:-4f9a5f2}
for case in before-busy after-busy after-idle before-idle; do
  rev=$([[ $case == before* ]] && echo "$before" || echo HEAD)
  dir=$(dirname "$repo")/fresh-$case
  rm -rf "$dir" && git clone -q "$repo" "$dir" && git -C "$dir" checkout -q "$rev"
  spinner=""
  if [[ $case == *busy ]]; then python3 -c "while True: pass" & spinner=$!; fi
  start=$(date +%s.%N)
  (cd "$dir" && make demo > "$dir.log" 2>&1)
  status=$?
  end=$(date +%s.%N)
  [[ -n $spinner ]] && kill "$spinner"
  training=$(python3 -c "import json; print(round(json.load(open('$dir/outputs/demo/run/result.json'))['seconds'], 1))")
  echo "$case $(git -C "$dir" rev-parse --short HEAD) exit $status: make demo $(python3 -c "print(round($end - $start, 1))") s, training loop $training s"
done
