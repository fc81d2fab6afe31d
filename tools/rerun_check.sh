#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
#
# The behaviour-unchanged check for refactors: plan the same scenarios again and compare every
# summary.json and result.json byte for byte with a recorded baseline, after removing what must
# differ between runs (run ids, and the absolute folder the results were written to).
#
#   tools/rerun_check.sh record BASELINE_DIR   plan and store the normalised files in BASELINE_DIR
#   tools/rerun_check.sh compare BASELINE_DIR  plan again and diff against BASELINE_DIR (exit 1 on
#                                              any difference, listing it)
#
# Scenarios: scenarios/tace_demo (4 patients) with each search of MEWM_RERUN_SEARCHES (default
# "beam reference"; "exhaustive" adds about 4 minutes), and with MEWM_RERUN_EVAL_SHARD=1 shard 0/10 of
# scenarios/tace_cohort_eval (10 patients; its 100-patient cohort is generated once, about 15
# minutes on 2 cores, into results/tace_cohort_eval/cohort). MEWM picks the binary (default
# build/tools/mewm/mewm): record with the old build, rebuild, compare with the new one.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MEWM="${MEWM:-$ROOT/build/tools/mewm/mewm}"
mode="${1:-}" baseline="${2:-}"
if [ "$mode" != record ] && [ "$mode" != compare ] || [ -z "$baseline" ]; then
  sed -n '5,17p' "$0"
  exit 2
fi
[ -x "$MEWM" ] || { echo "rerun_check: no mewm binary at $MEWM (build first)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "rerun_check: needs python3" >&2; exit 1; }
# Record replaces only a baseline this script recorded: never a folder of someone else's files.
if [ "$mode" = record ] && [ -e "$baseline" ] && [ -n "$(ls -A "$baseline" 2>/dev/null)" ] &&
  [ ! -f "$baseline/.mewm-rerun-baseline" ]; then
  echo "rerun_check: $baseline exists and is not a recorded baseline; choose another folder" >&2
  exit 1
fi
[ "$mode" = compare ] && [ ! -f "$baseline/.mewm-rerun-baseline" ] &&
  { echo "rerun_check: $baseline is not a recorded baseline" >&2; exit 1; }

work="$(mktemp -d "${TMPDIR:-/tmp}/mewm-rerun.XXXXXX")"
trap 'rm -rf "$work"' EXIT

plan() {  # plan NAME SCENARIO [ARGS...]: results in $work/runs/NAME
  local name="$1" scenario="$2"
  shift 2
  echo "rerun_check: planning $name"
  (cd "$ROOT" && "$MEWM" run "$scenario" --out "$work/runs/$name" --quiet "$@" >/dev/null)
}

for search in ${MEWM_RERUN_SEARCHES:-beam reference}; do
  plan "demo_$search" scenarios/tace_demo/scenario.toml --search "$search"
done
if [ "${MEWM_RERUN_EVAL_SHARD:-0}" = 1 ]; then
  plan eval_shard0 scenarios/tace_cohort_eval/scenario.toml --shard 0/10
fi

# Normalise: drop run ids, replace the results folder by RESULTS, write sorted, indented JSON.
python3 - "$work/runs" "$work/normalised" "$ROOT" <<'PY'
import json, os, sys
runs, out, root = sys.argv[1:4]
def strip(value):
    if isinstance(value, dict):
        return {k: strip(v) for k, v in value.items() if k != "run_id"}
    if isinstance(value, list):
        return [strip(v) for v in value]
    if isinstance(value, str):
        return value.replace(runs, "RESULTS").replace(root, "ROOT")
    return value
for dirpath, _, files in os.walk(runs):
    for name in files:
        if name not in ("summary.json", "result.json"):
            continue
        src = os.path.join(dirpath, name)
        rel = os.path.relpath(src, runs)
        if "/cohort/" in "/" + rel:
            continue
        dst = os.path.join(out, rel)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        with open(src) as f:
            data = strip(json.load(f))
        with open(dst, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
            f.write("\n")
PY

count=$(find "$work/normalised" -type f | wc -l)
if [ "$mode" = record ]; then
  rm -rf "$baseline"
  mkdir -p "$(dirname "$baseline")"
  cp -r "$work/normalised" "$baseline"
  touch "$baseline/.mewm-rerun-baseline"
  echo "rerun_check: recorded $count files in $baseline"
else
  touch "$work/normalised/.mewm-rerun-baseline"
  if diff -r "$baseline" "$work/normalised"; then
    echo "rerun_check: $count files identical to $baseline"
  else
    echo "rerun_check: results differ from $baseline (above)" >&2
    exit 1
  fi
fi
