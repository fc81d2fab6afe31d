#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
#
# The screenshot of docs/ECOSYSTEM.md "A running server, from tools without Cap'n Proto": a real
# `mewm serve` with its HTTP port, a 3-patient synthetic run submitted to it, and the standard-
# library follower (tools/examples/follow_run.py) following it over SSE from its first event.
# Every line of the picture is what these commands printed (the transcript is kept beside the PNG
# as .txt; `mewm` there is the binary given as the first argument); headless Chromium renders it
# from an HTML <pre>.
#   tools/sse_screenshot.sh build/tools/mewm/mewm docs/images/sse_python_follow.png
set -euo pipefail
MEWM="$(realpath "$1")"
OUT="$(realpath -m "$2")"
SRC="$(cd "$(dirname "$0")/.." && pwd)"
# shellcheck source=lib/serve_fixture.sh
source "$SRC/tools/lib/serve_fixture.sh"
TMP="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  rm -rf "$TMP"
}
trap cleanup EXIT

cd "$TMP"
write_small_scenario "$SRC" . demo.toml sse_demo
read -r CONTROL EVENTS HTTP < <(free_ports 3)
URL="http://127.0.0.1:$HTTP"
ENDPOINTS=(--control "tcp://127.0.0.1:$CONTROL" --events "tcp://127.0.0.1:$EVENTS")
"$MEWM" serve "${ENDPOINTS[@]}" --http-port "$HTTP" --results-root results --scenario-base . \
  > serve.log 2>&1 &
SERVER_PID=$!
for i in $(seq 1 100); do
  python3 -c "import urllib.request,sys; urllib.request.urlopen(sys.argv[1], timeout=1)" \
    "$URL/v2/health/ready" 2>/dev/null && break
  [ "$i" = 100 ] && { echo "the server did not become ready"; cat serve.log; exit 1; }
  sleep 0.1
done
RUN="$("$MEWM" submit demo.toml "${ENDPOINTS[@]}" | head -n 1)"
FOLLOW="python3 tools/examples/follow_run.py --url $URL --run $RUN"
{
  echo "\$ mewm serve --control tcp://127.0.0.1:$CONTROL --events tcp://127.0.0.1:$EVENTS --http-port $HTTP --results-root results --scenario-base . &"
  head -n 1 serve.log
  echo "\$ mewm submit demo.toml --control tcp://127.0.0.1:$CONTROL --events tcp://127.0.0.1:$EVENTS"
  echo "$RUN"
  echo "\$ $FOLLOW"
  (cd "$SRC" && python3 tools/examples/follow_run.py --url "$URL" --run "$RUN" 2>&1)
  echo "\$ curl -s $URL/v1/runs/$RUN | python3 -m json.tool | grep -E 'state|patients_done|last_seq'"
  curl -s "$URL/v1/runs/$RUN" | python3 -m json.tool | grep -E 'state|patients_done|last_seq'
} > transcript.txt
python3 - transcript.txt page.html <<'PY'
import html, sys
text = open(sys.argv[1]).read().rstrip("\n")
lines = []
for line in text.split("\n"):
    escaped = html.escape(line)
    lines.append('<span class="cmd">%s</span>' % escaped if line.startswith("$ ") else escaped)
open(sys.argv[2], "w").write("""<!doctype html><meta charset="utf-8"><style>
body { margin: 0; background: #1e1e1e; }
pre { margin: 0; padding: 14px 16px; color: #d4d4d4; font: 13px/1.35 "DejaVu Sans Mono", monospace;
      white-space: pre-wrap; word-break: break-all; }
.cmd { color: #8fd18f; }
</style><pre>%s</pre>""" % "\n".join(lines))
PY
LINES="$(wc -l < transcript.txt)"
# Wrapped lines take more rows: give the page room, then crop the empty bottom.
HEIGHT=$(( (LINES + 8) * 18 + 28 ))
chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --force-device-scale-factor=1 \
  --window-size=1100,"$HEIGHT" --screenshot="$TMP/shot.png" "file://$TMP/page.html" \
  > chromium.log 2>&1 || { cat chromium.log; exit 1; }
python3 - "$TMP/shot.png" "$OUT" <<'PY'
import sys, zlib, struct
# Crop the uniform background rows at the bottom (a small PNG reader/writer for 8-bit RGB/RGBA).
data = open(sys.argv[1], "rb").read()
pos, chunks = 8, []
while pos < len(data):
    n, = struct.unpack(">I", data[pos:pos + 4]); kind = data[pos + 4:pos + 8]
    chunks.append((kind, data[pos + 8:pos + 8 + n])); pos += 12 + n
ihdr = chunks[0][1]
w, h, depth, color = struct.unpack(">IIBB", ihdr[:10])
channels = {2: 3, 6: 4}[color]
raw = zlib.decompress(b"".join(c for k, c in chunks if k == b"IDAT"))
stride = w * channels
rows, prev = [], bytearray(stride)
for y in range(h):
    f = raw[y * (stride + 1)]; line = bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
    for x in range(stride):
        a = line[x - channels] if x >= channels else 0; b = prev[x]
        c = prev[x - channels] if x >= channels else 0
        if f == 1: line[x] = (line[x] + a) & 255
        elif f == 2: line[x] = (line[x] + b) & 255
        elif f == 3: line[x] = (line[x] + (a + b) // 2) & 255
        elif f == 4:
            p = a + b - c; pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
    rows.append(bytes(line)); prev = line
background = rows[-1]
last = h
while last > 1 and rows[last - 1] == background:
    last -= 1
last = min(h, last + 14)
out = b"".join(b"\0" + r for r in rows[:last])
def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, last, 8, color, 0, 0, 0)) \
    + chunk(b"IDAT", zlib.compress(out, 9)) + chunk(b"IEND", b"")
open(sys.argv[2], "wb").write(png)
PY
cp transcript.txt "${OUT%.png}.txt"
kill -TERM "$SERVER_PID"
wait "$SERVER_PID" || true
SERVER_PID=""
echo "wrote $OUT ($(stat -c %s "$OUT") bytes) and ${OUT%.png}.txt ($LINES lines)"
