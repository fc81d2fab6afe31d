# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
#
# Sourced (not run) by the scripts that start a real `mewm serve` on loopback
# (tests/tools/sse_python_test.sh, tests/tools/cors_browser_test.sh, tools/sse_screenshot.sh) and by
# tests/tools/rerank_test.sh, which plans write_small_scenario's scenario.

# free_ports N: prints N TCP ports on 127.0.0.1 that the kernel hands out as free.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
}

# write_small_scenario SRC DIR FILE NAME: DIR/FILE, a 3-patient synthetic scenario named NAME with
# the shipped mechanistic calibration and Cox model (copied into DIR), fast enough for a test.
write_small_scenario() {
  local src="$1" dir="$2" file="$3" name="$4"
  cp "$src/models/mechanistic_calibration.json" "$dir/mech.json"
  cp "$src/models/cox_survival.json" "$dir/cox.json"
  cat > "$dir/$file" <<TOML
[run]
name = "$name"
seed = 1
output = "runs"
[cohort]
source = "synthetic"
n = 3
seed = 77
spacing_mm = 3.0
[dynamics]
backend = "mechanistic"
calibration = "mech.json"
[survival]
backend = "cox"
model = "cox.json"
[planner]
beams = 2
samples = 2
TOML
}
