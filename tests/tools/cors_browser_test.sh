#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
#
# CORS as a real browser applies it: a page served from an allowed origin (mewm serve
# --http-cors-origin) reads /v1/runs and /v2/health/live across origins in headless Debian
# chromium; the same page from another origin is blocked by the browser. Exit 77 (skipped) when
# chromium or python3 is missing.
#   tests/tools/cors_browser_test.sh MEWM
set -euo pipefail
MEWM="$1"
# shellcheck source=../../tools/lib/serve_fixture.sh
source "$(cd "$(dirname "$0")/../.." && pwd)/tools/lib/serve_fixture.sh"
CHROMIUM="$(command -v chromium || command -v chromium-browser || true)"
[ -n "$CHROMIUM" ] || { echo "skipped: chromium is not installed"; exit 77; }
command -v python3 >/dev/null || { echo "skipped: python3 is not installed"; exit 77; }

TMP="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; done
  rm -rf "$TMP"
}
trap cleanup EXIT
fail() { echo "FAIL: $*"; echo "--- serve.log"; cat "$TMP/serve.log" || true; exit 1; }

# Five ports the kernel hands out as free: control, events, the API, two page origins.
read -r CONTROL EVENTS API ALLOWED OTHER < <(free_ports 5)
mkdir -p "$TMP/www"
cat > "$TMP/www/page.html" <<'HTML'
<!doctype html><html><body><pre id="out">pending</pre><script>
const api = new URLSearchParams(location.search).get('api');
Promise.all([fetch(api + '/v2/health/live'), fetch(api + '/v1/runs')])
  .then(([live, runs]) => runs.json().then(j => 'read ' + live.status + ' ' + runs.status + ' ' +
                                               JSON.stringify(j).length))
  .then(t => { document.getElementById('out').textContent = t; },
        e => { document.getElementById('out').textContent = 'blocked ' + e; });
</script></body></html>
HTML

"$MEWM" serve --control "tcp://127.0.0.1:$CONTROL" --events "tcp://127.0.0.1:$EVENTS" \
  --http-port "$API" --http-cors-origin "http://127.0.0.1:$ALLOWED" \
  --results-root "$TMP/results" --scenario-base "$TMP" > "$TMP/serve.log" 2>&1 &
PIDS+=($!)
for port in "$ALLOWED" "$OTHER"; do
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$TMP/www" > "$TMP/web$port.log" 2>&1 &
  PIDS+=($!)
done
# Ready, bounded: the API and both page servers answer.
for i in $(seq 1 100); do
  if python3 - "$API" "$ALLOWED" "$OTHER" <<'PY' 2>/dev/null; then break; fi
import sys, urllib.request
urllib.request.urlopen("http://127.0.0.1:%s/v2/health/live" % sys.argv[1], timeout=1)
for port in sys.argv[2:]:
    urllib.request.urlopen("http://127.0.0.1:%s/page.html" % port, timeout=1)
PY
  [ "$i" = 100 ] && fail "the servers did not come up"
  sleep 0.1
done

page() {  # page PORT: what the page wrote once its requests settled
  timeout 90 "$CHROMIUM" --headless --no-sandbox --disable-gpu --user-data-dir="$TMP/profile$1" \
    --virtual-time-budget=10000 --dump-dom \
    "http://127.0.0.1:$1/page.html?api=http://127.0.0.1:$API" 2>/dev/null |
    sed -n 's/.*<pre id="out">\([^<]*\)<.*/\1/p'
}
allowed="$(page "$ALLOWED")"
other="$(page "$OTHER")"
echo "allowed origin: $allowed"
echo "other origin:   $other"
[[ "$allowed" == "read 200 200 "* ]] || fail "the allowed origin could not read the API: '$allowed'"
[[ "$other" == "blocked "* ]] || fail "the browser let another origin read the API: '$other'"
echo "PASS"
