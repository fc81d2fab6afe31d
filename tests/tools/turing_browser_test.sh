#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
#
# Browser end-to-end test of `mewm turing serve`: a small export, the page driven in headless
# Debian chromium by tools/turing_web/e2e.mjs (puppeteer-core), three answers, a reload that
# resumes, the answers file on disk, the key refused. Exits 77 (ctest: skipped) with a message
# where chromium, node or the npm packages (tools/dev.sh turing-web) are missing or chromium
# cannot start. Usage: turing_browser_test.sh MEWM SOURCE_DIR [SCREENSHOT.png]
set -euo pipefail
MEWM="$1"
SRC="$2"
SHOT="${3:-}"
WEB="$SRC/tools/turing_web"
CHROMIUM="${MEWM_CHROMIUM:-/usr/bin/chromium}"

skip() { echo "SKIP: $*"; exit 77; }
command -v node >/dev/null || skip "node is not installed (tools/dev.sh turing-web)"
[ -d "$WEB/node_modules/puppeteer-core" ] || skip "puppeteer-core is not installed (tools/dev.sh turing-web)"
[ -x "$CHROMIUM" ] || skip "no chromium at $CHROMIUM (tools/dev.sh turing-web installs Debian's)"
timeout 60 "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --dump-dom about:blank \
  >/dev/null 2>&1 || skip "chromium cannot start here"

TMP="$(mktemp -d /tmp/mewm-turing-browser.XXXXXX)"
SERVER=""
cleanup() {
  if [ -n "$SERVER" ]; then
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true  # 143: it ended on our SIGTERM
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

"$MEWM" cohort generate --n 3 --seed 21 --spacing 3 --no-nifti --quiet --out "$TMP/cohort"
"$MEWM" turing export --cohort "$TMP/cohort" --dynamics-backend mechanistic \
  --calibration "$SRC/models/mechanistic_calibration.json" --n 6 --seed 3 --quiet \
  --out "$TMP/study" --key "$TMP/key.json"
cp "$TMP/key.json" "$TMP/study/key.json"  # a key left inside the folder must still be refused

"$MEWM" turing serve "$TMP/study" --port 0 --viewer "$WEB/node_modules/@niivue/niivue/dist" \
  >"$TMP/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 100); do
  grep -q "listening on" "$TMP/serve.log" && break
  kill -0 "$SERVER" 2>/dev/null || { cat "$TMP/serve.log"; exit 1; }
  sleep 0.1
done
URL="$(sed -n 's/.*listening on \(http:[^ ]*\).*/\1/p' "$TMP/serve.log")"
[ -n "$URL" ] || { echo "FAIL: the server did not start"; cat "$TMP/serve.log"; exit 1; }

(cd "$WEB" && node e2e.mjs "$URL" reader_e2e "$TMP/page.png")
[ -n "$SHOT" ] && cp "$TMP/page.png" "$SHOT"

LINES=$(grep -c '"case"' "$TMP/study/answers/reader_e2e.jsonl")
[ "$LINES" = 3 ] || { echo "FAIL: $LINES answers on disk, expected 3"; exit 1; }
for field in case answer confidence seconds time key_sha256; do
  [ "$(grep -c "\"$field\"" "$TMP/study/answers/reader_e2e.jsonl")" = 3 ] ||
    { echo "FAIL: answers lack \"$field\""; exit 1; }
done
rm "$TMP/study/key.json"
"$MEWM" turing score "$TMP/study" --key "$TMP/key.json" | grep -q reader_e2e
echo "PASS: 3 answers stored, page resumed, key refused"
