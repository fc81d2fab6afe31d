#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
#
# tools/examples/follow_run.py (Python standard library only) against a real `mewm serve` on
# loopback with a bearer token: a follower that joins while the run plans, one that joins after it
# ended, and one that resumes after seq 5 each end with exactly the run's events.jsonl lines (the
# resumed one with its lines after 5). Without the token the follower gets 401. Exit 77 (skipped)
# when python3 is missing.
#   tests/tools/sse_python_test.sh MEWM SOURCE_DIR
set -euo pipefail
MEWM="$1"
SRC="$2"
FOLLOW="$SRC/tools/examples/follow_run.py"
# shellcheck source=../../tools/lib/serve_fixture.sh
source "$SRC/tools/lib/serve_fixture.sh"
command -v python3 >/dev/null || { echo "skipped: python3 is not installed"; exit 77; }

TMP="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- serve.log"; cat "$TMP/serve.log" || true; exit 1; }

write_small_scenario "$SRC" "$TMP" s.toml sse
python3 -c 'import secrets; print(secrets.token_hex(32))' > "$TMP/token"
chmod 600 "$TMP/token"
# Three ports the kernel hands out as free.
read -r CONTROL EVENTS HTTP < <(free_ports 3)
ENDPOINTS=(--control "tcp://127.0.0.1:$CONTROL" --events "tcp://127.0.0.1:$EVENTS")
URL="http://127.0.0.1:$HTTP"
"$MEWM" serve "${ENDPOINTS[@]}" --http-port "$HTTP" --http-token-file "$TMP/token" \
  --results-root "$TMP/results" --scenario-base "$TMP" > "$TMP/serve.log" 2>&1 &
SERVER_PID=$!

# Ready (the token is needed for the health endpoints too), bounded.
TOKEN="$(cat "$TMP/token")"
for i in $(seq 1 100); do
  if python3 - "$URL" "$TOKEN" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
req = urllib.request.Request(sys.argv[1] + "/v2/health/ready",
                             headers={"Authorization": "Bearer " + sys.argv[2]})
urllib.request.urlopen(req, timeout=1)
PY
  [ "$i" = 100 ] && fail "the server did not become ready"
  sleep 0.1
done

RUN="$("$MEWM" submit "$TMP/s.toml" "${ENDPOINTS[@]}" | head -n 1)"
[ -n "$RUN" ] || fail "submit printed no run id"
# Joins while the run plans (its history first, then live).
python3 "$FOLLOW" --url "$URL" --token-file "$TMP/token" --run "$RUN" --jsonl "$TMP/live.jsonl" \
  > "$TMP/live.out" || fail "the live follower exited $?"
LOG="$TMP/results/runs/$RUN/events.jsonl"
[ -s "$LOG" ] || fail "no $LOG"
cmp "$TMP/live.jsonl" "$LOG" || fail "the live follower's events differ from events.jsonl"
# Joins after the run ended (the newest run: --run omitted).
python3 "$FOLLOW" --url "$URL" --token-file "$TMP/token" --jsonl "$TMP/late.jsonl" \
  > "$TMP/late.out" || fail "the late follower exited $?"
cmp "$TMP/late.jsonl" "$LOG" || fail "the late follower's events differ from events.jsonl"
# Resumes after seq 5.
python3 "$FOLLOW" --url "$URL" --token-file "$TMP/token" --run "$RUN" --last-event-id 5 \
  --jsonl "$TMP/tail.jsonl" > /dev/null || fail "the resumed follower exited $?"
tail -n +6 "$LOG" | cmp - "$TMP/tail.jsonl" || fail "the resumed follower's events differ"
# The decided plans, one line per patient.
[ "$(grep -c '^P[0-9]*: ' "$TMP/late.out")" = 3 ] || fail "expected 3 plans: $(cat "$TMP/late.out")"
cmp "$TMP/live.out" "$TMP/late.out" || fail "the followers printed different plans"
# No token, a wrong token: 401, exit 2.
set +e
python3 "$FOLLOW" --url "$URL" --run "$RUN" > /dev/null 2> "$TMP/noauth.err"
code=$?
set -e
[ "$code" = 2 ] && grep -q "HTTP 401" "$TMP/noauth.err" || fail "no token: exit $code, $(cat "$TMP/noauth.err")"

echo "events: $(wc -l < "$LOG"); plans:"
cat "$TMP/late.out"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || fail "mewm serve exited $?"
SERVER_PID=""
echo "PASS"
