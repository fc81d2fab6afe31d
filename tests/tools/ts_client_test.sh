#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
#
# The TypeScript client (clients/typescript) against a real `mewm serve` on loopback: builds the
# package (TypeScript generated from streaming/schema/mewm.capnp, then tsc), runs its unit tests
# of the late-join seq rules, then test/e2e.ts: a live subscription and a late join that must
# both equal the run's events.jsonl, submit, status, cancel and error replies. Exits 77 (ctest:
# skipped) with a message where node, the capnp compiler or the npm packages of
# `tools/dev.sh ts-client` are missing. Usage: ts_client_test.sh MEWM SOURCE_DIR
set -euo pipefail
MEWM="$1"
SRC="$2"
PKG="$SRC/clients/typescript"

skip() { echo "SKIP: $*"; exit 77; }
command -v node >/dev/null || skip "node is not installed (tools/dev.sh ts-client)"
command -v capnp >/dev/null || skip "the capnp compiler is not installed (Debian capnproto)"
for m in capnp-es zeromq typescript; do
  [ -d "$PKG/node_modules/$m" ] || skip "$m is not installed in clients/typescript (tools/dev.sh ts-client)"
done
cd "$PKG"
node -e 'require("zeromq")' 2>/dev/null ||
  skip "the zeromq npm package has no working binary for this platform (npm ci in clients/typescript)"

npm run --silent build
node --test dist/test/*.test.js
timeout 90 node dist/test/e2e.js "$MEWM" "$SRC"
