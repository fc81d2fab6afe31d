#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
#
# tools/analysis/rerank_candidates.py on a real 3-patient run: its "lowest mean risk" rule is the
# planner's choice, so its regret and F1 must equal `mewm eval plans`' pipeline row, and its
# "first plan" the guideline's first choice; it reads the run and writes nothing into it; a folder
# that is no run is a clear error. Exit 77 (skipped) when python3 is missing.
#   tests/tools/rerank_test.sh MEWM SOURCE_DIR
set -euo pipefail
MEWM="$1"
SRC="$2"
SCRIPT="$SRC/tools/analysis/rerank_candidates.py"
# shellcheck source=../../tools/lib/serve_fixture.sh
source "$SRC/tools/lib/serve_fixture.sh"
command -v python3 >/dev/null || { echo "skipped: python3 is not installed"; exit 77; }
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
fail() { echo "FAIL: $*"; exit 1; }

write_small_scenario "$SRC" "$TMP" s.toml rerank
"$MEWM" run "$TMP/s.toml" --quiet --out "$TMP/run" > "$TMP/run.log" 2>&1 || { cat "$TMP/run.log"; fail "mewm run"; }
before="$(cd "$TMP/run" && find . -type f -printf '%p %s %T@\n' | sort)"
python3 "$SCRIPT" "$TMP/run" --json > "$TMP/rerank.json" || fail "the script failed on a real run"
python3 "$SCRIPT" "$TMP/run" > "$TMP/rerank.txt" || fail "the script's table failed"
grep -q "lowest mean risk" "$TMP/rerank.txt" || fail "no table: $(cat "$TMP/rerank.txt")"
after="$(cd "$TMP/run" && find . -type f -printf '%p %s %T@\n' | sort)"
[ "$before" = "$after" ] || fail "the script changed the run folder"
"$MEWM" eval plans "$TMP/run" --json > "$TMP/eval.json" || fail "mewm eval plans"
python3 - "$TMP/rerank.json" "$TMP/eval.json" <<'PY' || fail "the script disagrees with mewm eval plans"
import json, sys
rerank = json.load(open(sys.argv[1]))
evaluation = json.load(open(sys.argv[2]))
methods = {m["method"]: m for m in evaluation["methods"]}
assert rerank["patients"] == 3, rerank["patients"]
pairs = [("lowest mean risk", "pipeline"), ("first plan", "guideline first choice")]
for mine, theirs in pairs:
    a, b = rerank["rules"][mine], methods[theirs]
    assert abs(a["regret_mean"] - b["regret_mean"]) < 1e-9, (mine, a, b)
    assert abs(a["f1"] - b["f1"]) < 1e-9, (mine, a, b)
assert 0 <= rerank["truth_better"] + rerank["truth_worse"] <= rerank["left_first_plan"] <= 3
PY
# A folder that is no run: a clear error on stderr, exit status 1.
mkdir "$TMP/empty"
if python3 "$SCRIPT" "$TMP/empty" > "$TMP/err.txt" 2>&1; then fail "an empty folder was accepted"; fi
grep -q "cannot read the runs" "$TMP/err.txt" || fail "unclear error: $(cat "$TMP/err.txt")"
echo "rerank_candidates.py agrees with mewm eval plans on a 3-patient run"
