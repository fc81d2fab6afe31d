#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
#
# One entry point for a fresh Debian 12 machine (run as root, or with sudo available):
#   tools/dev.sh setup   install the Debian packages mewm needs (skips what is installed), then
#                        the reader-study page's npm packages (turing-web) and the TypeScript
#                        client's (ts-client)
#   tools/dev.sh turing-web  Debian chromium, node and npm, and tools/turing_web's pinned npm
#                        packages (NiiVue for `mewm turing serve`, puppeteer-core for its browser
#                        test) from package-lock.json; a failure only warns (the test then skips)
#   tools/dev.sh ts-client  node and npm, and clients/typescript's pinned npm packages (capnp-es,
#                        zeromq with its prebuilt binary, typescript) from package-lock.json; a
#                        failure only warns (ts_client_test then skips)
#   tools/dev.sh build   setup, then configure and build (Release, -j2) into build/
#   tools/dev.sh test    build, then run the test suite (ctest; MEWM_TEST_LABELS selects labels)
#   tools/dev.sh demo    build, then plan scenarios/tace_demo; results land in out/demo/
#   tools/dev.sh lint    clang-format check of every source, clang-tidy on recently changed ones
#   tools/dev.sh asan    build core with ASan+UBSan into build-asan/ and run the core tests
#   tools/dev.sh bench   build, then run the benchmarks of docs/BENCHMARKS.md
#   tools/dev.sh fuzz [S] [T] build a libFuzzer target (clang) into build-fuzz/ and fuzz it S seconds:
#                        T = control (the decoders, default) or dispatch (the server's requests)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="${MEWM_BUILD_DIR:-$ROOT/build}"
JOBS="${MEWM_JOBS:-2}"

PACKAGES=(
  build-essential cmake ninja-build pkg-config ccache
  libtorch-dev libopenblas0-pthread
  libopenvdb-dev libopenvdb-tools libboost-iostreams-dev libtbb-dev
  libzmq3-dev cppzmq-dev capnproto libcapnp-dev
  libeigen3-dev libnifti2-dev zlib1g-dev libpng-dev
  libdcmtk-dev  # mewm import dicom
  python3-pydicom python3-nibabel  # the DICOM import test: series by pydicom, checked by nibabel
  libssl-dev libcpp-httplib-dev
  libtomlplusplus-dev libcli11-dev nlohmann-json3-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  strace  # the leak test traces a planning run (CliTest.PlanningRunUnderStrace...)
)

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# install_packages PACKAGE...: installs those not installed yet.
install_packages() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi
}

# The reader-study page (docs/TURING.md): its viewer and its browser test. Nothing here downloads
# a browser: puppeteer-core drives Debian's chromium.
turing_web() {
  local web="$ROOT/tools/turing_web"
  # npm ships with some node builds (NodeSource's nodejs) and is a package of its own in Debian's.
  local wanted=(chromium nodejs)
  command -v npm >/dev/null || wanted+=(npm)
  if ! install_packages "${wanted[@]}"; then
    echo "setup: warning: chromium/node not installed; the browser test will skip" >&2
    return 0
  fi
  if [ ! -f "$web/node_modules/.package-lock.json" ] ||
      [ "$web/package-lock.json" -nt "$web/node_modules/.package-lock.json" ]; then
    echo "setup: installing tools/turing_web's npm packages (package-lock.json)"
    (cd "$web" && npm ci --no-audit --no-fund --loglevel=error) ||
      echo "setup: warning: npm ci failed in $web; the page works without its viewer and the" \
        "browser test skips" >&2
  fi
}

# The TypeScript client (clients/typescript/README.md) and its test against a real server. The
# zeromq package ships prebuilt binaries for linux x64/arm64 (glibc and musl): nothing is
# compiled and nothing is downloaded beyond the npm registry.
ts_client() {
  local pkg="$ROOT/clients/typescript"
  local wanted=(nodejs)
  command -v npm >/dev/null || wanted+=(npm)
  if ! install_packages "${wanted[@]}"; then
    echo "setup: warning: node/npm not installed; the TypeScript client test will skip" >&2
    return 0
  fi
  if [ ! -f "$pkg/node_modules/.package-lock.json" ] ||
      [ "$pkg/package-lock.json" -nt "$pkg/node_modules/.package-lock.json" ]; then
    echo "setup: installing clients/typescript's npm packages (package-lock.json)"
    (cd "$pkg" && npm ci --no-audit --no-fund --loglevel=error) ||
      echo "setup: warning: npm ci failed in $pkg; the TypeScript client test skips" >&2
  fi
}

setup() {
  install_packages "${PACKAGES[@]}"
  turing_web
  ts_client
}

# configure_and_build DIR [TARGET...] [-- CMAKE_ARGS...]
configure_and_build() {
  local dir="$1"; shift
  local targets=() launcher=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do targets+=(--target "$1"); shift; done
  [ "${1:-}" = "--" ] && shift
  command -v ccache >/dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
  cmake -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "${launcher[@]}" "$@" >/dev/null
  cmake --build "$dir" -j "$JOBS" "${targets[@]}"
}

build() { setup; configure_and_build "$BUILD"; }

run_tests() {
  build
  local args=(--test-dir "$BUILD" --output-on-failure -j "$JOBS" --timeout 600)
  [ -n "${MEWM_TEST_LABELS:-}" ] && args+=(-L "$MEWM_TEST_LABELS")
  [ -n "${MEWM_TEST_EXCLUDE:-}" ] && args+=(-LE "$MEWM_TEST_EXCLUDE")
  ctest "${args[@]}"
}

demo() {
  build
  local out="$ROOT/out/demo" mewm="$BUILD/tools/mewm/mewm"
  local events="${MEWM_DEMO_EVENTS:-tcp://127.0.0.1:5556}"
  local control="${MEWM_DEMO_CONTROL:-tcp://127.0.0.1:5555}"
  # The main job: plan the scenarios/tace_demo cohort (synthetic patients, guideline policy,
  # calibrated mechanistic dynamics, Cox survival, beam search), stream every event live over
  # ZeroMQ, and keep everything on disk. Follow it from another terminal with
  #   build/tools/mewm/mewm watch
  echo "demo: streaming on $events (control $control); watch with: $mewm watch"
  "$mewm" run "$ROOT/scenarios/tace_demo/scenario.toml" --out "$out" \
    --publish "$events" --control "$control"
  # The demo's folder is its own: a second demo replaces the first's report and pictures.
  "$mewm" eval plans "$out" --json-out "$out/eval_plans.json" --force
  local p="$out/patients/P0001"
  "$mewm" render "$out/cohort/patients/P0001/pre.vdb" --plane axial --at tumor --overlay tumor \
    --out "$out/P0001_pre_axial.png" --force
  "$mewm" render "$p/post_chosen.vdb" --plane axial --at pre_tumor --overlay viable \
    --out "$out/P0001_chosen_post_axial.png" --force
  echo "demo: results in $out (summary.json, summary.csv, events.jsonl, patients/*, *.png)"
}

# lint: every tracked C++ file must be clang-formatted; the library and tool sources changed since
# MEWM_LINT_BASE (a git revision, default HEAD~3; "all" for every source: about 8 minutes on 2
# cores) must pass the checks in .clang-tidy. Needs build/compile_commands.json (it builds first).
lint() {
  install_packages clang-format clang-tidy
  cd "$ROOT"
  echo "lint: clang-format"
  git ls-files '*.h' '*.cc' | xargs clang-format --dry-run -Werror
  [ -f "$BUILD/compile_commands.json" ] || build
  local base="${MEWM_LINT_BASE:-HEAD~3}" files
  if [ "$base" = all ] || ! git rev-parse -q --verify "$base^{commit}" >/dev/null; then
    files=$(git ls-files '*.cc')
  else
    files=$(git diff --name-only "$base" -- '*.cc')
  fi
  files=$(echo "$files" | grep -v -e '^tests/' -e '/fuzz/' | while read -r f; do [ -f "$f" ] && echo "$f"; done || true)
  if [ -z "$files" ]; then echo "lint: no changed sources for clang-tidy since $base"; return 0; fi
  echo "lint: clang-tidy on $(echo "$files" | wc -l) sources changed since $base"
  if ! echo "$files" | xargs -P "$JOBS" -n 4 clang-tidy -p "$BUILD" --quiet \
      --extra-arg=-Wno-unknown-warning-option 2>&1 |
      { grep -v -E '^[0-9]+ warnings? generated\.$' || true; }; then
    echo "lint: clang-tidy found problems (above)" >&2
    return 1
  fi
  echo "lint: clean"
}

asan() {
  setup
  # Only the torch-free core tests: libtorch itself is not built with the sanitizers.
  configure_and_build "$ROOT/build-asan" core_test models_test -- \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEWM_SANITIZE=ON
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$ROOT/build-asan/tests/core_test" --gtest_brief=1
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "$ROOT/build-asan/tests/models_test" --gtest_brief=1
}

bench() {
  build
  "$BUILD/tools/mewm/mewm" bench core --repeats 5
  "$BUILD/tools/mewm/mewm" bench stream
}

fuzz() {
  setup
  install_packages clang libclang-rt-14-dev  # clang's libFuzzer runtime
  local seconds="${1:-60}" target="${2:-control}"
  case "$target" in control|dispatch) ;; *) echo "fuzz: target is control or dispatch" >&2; exit 2 ;; esac
  local corpus="$ROOT/build-fuzz/corpus" targets=(mewm_control_fuzz mewm_fuzz_seeds)
  [ "$target" = dispatch ] && corpus="$ROOT/build-fuzz/corpus-dispatch" targets=(mewm_dispatch_fuzz mewm_fuzz_seeds)
  CC=clang CXX=clang++ configure_and_build "$ROOT/build-fuzz" "${targets[@]}" -- \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMEWM_FUZZ=ON -DMEWM_BUILD_TESTS=OFF -DMEWM_WERROR=OFF
  mkdir -p "$corpus"
  if [ "$target" = dispatch ]; then
    # Valid submits of the shipped scenarios (encoded and as raw TOML) and every request kind.
    (cd "$ROOT" && "$ROOT/build-fuzz/streaming/mewm_fuzz_seeds" "$corpus" scenarios/*/scenario.toml)
  else
    "$ROOT/build-fuzz/streaming/mewm_fuzz_seeds" "$corpus"
  fi
  "$ROOT/build-fuzz/streaming/mewm_${target}_fuzz" -max_total_time="$seconds" -max_len=65536 \
    -print_final_stats=1 "$corpus"
}

case "${1:-}" in
  setup) setup ;;
  turing-web) turing_web ;;
  ts-client) ts_client ;;
  build) build ;;
  test) run_tests ;;
  demo) demo ;;
  lint) lint ;;
  asan) asan ;;
  bench) bench ;;
  fuzz) fuzz "${2:-60}" "${3:-control}" ;;
  *) sed -n '5,22p' "$0"; exit 2 ;;
esac
