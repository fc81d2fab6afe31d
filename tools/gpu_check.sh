#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
#
# The CUDA check: builds the model libraries (MEWM_MODELS_ONLY) against a CUDA libtorch and runs
# their torch tests on the GPU, with the cases that run only there: DiffusionTest.OnCuda*
# (training and sampling on CUDA against the CPU, a CUDA-trained checkpoint on both devices, a
# CUDA training state resumed on the CPU; MeWM's 96^3 config trained and sampled on CUDA). For a GPU machine that has PyTorch (CUDA) and a
# compiler but none of Debian's libraries, and no network.
#
#   tools/gpu_check.sh prepare          on a Debian 12 machine with apt: downloads the Debian
#                                       packages the build needs into .gpu-deps/ (git-ignored,
#                                       about 25 MiB), to carry to the GPU machine
#   tools/gpu_check.sh run OUT          on the GPU machine, in the repository root: unpacks them
#                                       into build-gpu-check/deps, configures and builds
#                                       build-gpu-check/, runs the tests; the log and the test reports
#                                       go to OUT. Exit 0 when every test passed and the CUDA
#                                       cases ran (not skipped)
#   tools/gpu_check.sh run OUT --cpu    the same flow without a GPU, against the system's
#                                       libtorch (the CUDA cases skip): a rehearsal of the script
#
# The Torch CMake package is python3's (torch.utils.cmake_prefix_path) unless MEWM_TORCH_DIR
# names one; MEWM_CXX_STANDARD overrides the C++ standard chosen from its version. docs/BUILDING.md ("CUDA") says how to run it through the device tool.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEPS="$ROOT/.gpu-deps"
MARK=".mewm-gpu-deps"
BUILD_MARK=".mewm-gpu-check"  # in the build folder it made
# The build's Debian packages (headers, CMake files) and the shared libraries they link; what
# every glibc system with a compiler has (libc, libstdc++, zlib, bzip2, lzma, zstd, lz4) is left
# out.
PACKAGES=(
  libboost1.74-dev libboost-iostreams1.74-dev libboost-iostreams1.74.0
  libopenvdb-dev libopenvdb10.0 liblog4cplus-2.0.5 libimath-dev libimath-3-1-29
  libblosc-dev libblosc1 libsnappy1v5 libtbb-dev libtbb12 libtbbmalloc2
  libspdlog-dev libspdlog1.10 libfmt-dev libfmt9 libtomlplusplus-dev libtomlplusplus3
  nlohmann-json3-dev libeigen3-dev libpng-dev libpng16-16 zlib1g-dev libssl-dev libssl3
  libniftiio-dev libniftiio2 libnifti2-dev libnifti2-2 libnifticdf-dev libnifticdf2
  libznz-dev libznz3 libgtest-dev libgmock-dev pkgconf pkgconf-bin libpkgconf3
)

usage() {
  sed -n '4,22p' "$0"
  exit 2
}

prepare() {
  command -v apt-get >/dev/null || { echo "gpu_check: prepare needs apt-get (Debian 12)" >&2; exit 1; }
  # Replaces only a folder this script filled.
  if [ -e "$DEPS" ] && [ ! -f "$DEPS/$MARK" ]; then
    echo "gpu_check: $DEPS exists and was not made by this script; move it away" >&2
    exit 1
  fi
  local work
  work="$(mktemp -d "${TMPDIR:-/tmp}/mewm-gpu-deps.XXXXXX")"
  # Expanded now: the local is gone when the trap runs.
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" RETURN
  (cd "$work" && apt-get download "${PACKAGES[@]}")
  rm -rf "$DEPS"
  mkdir -p "$DEPS"
  mv "$work"/*.deb "$DEPS"/
  touch "$DEPS/$MARK"
  local debs=("$DEPS"/*.deb)
  echo "gpu_check: ${#debs[@]} packages, $(du -sh "$DEPS" | cut -f1) in $DEPS"
}

run() {
  local out="$1" cpu="${2:-}"
  [ -n "$out" ] || usage
  [ -z "$cpu" ] || [ "$cpu" = --cpu ] || usage
  [ -f "$DEPS/$MARK" ] || { echo "gpu_check: no $DEPS (run 'tools/gpu_check.sh prepare' first)" >&2; exit 1; }
  # A folder of its own: docs/BUILDING.md's manual CUDA build is build-cuda/, which configuring
  # with MEWM_MODELS_ONLY would turn into this one.
  local build="$ROOT/build-gpu-check"
  [ -z "$cpu" ] || build="$ROOT/build-gpu-check-rehearsal"
  if [ -e "$build" ] && [ ! -f "$build/$BUILD_MARK" ]; then
    echo "gpu_check: $build exists and was not made by this script; move it away" >&2
    exit 1
  fi
  mkdir -p "$out"
  out="$(cd "$out" && pwd)"
  exec > >(tee "$out/gpu_check.log") 2>&1
  echo "== mewm $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '(not a git checkout)')"
  echo "== machine"
  uname -srm
  echo "cores: $(nproc)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  c++ --version | head -1
  cmake --version | head -1

  local torch_dir="${MEWM_TORCH_DIR:-}" std=17 cuda_args=()
  if [ -z "$cpu" ]; then
    echo "== torch"
    local facts
    facts="$(python3 -c 'import torch
print(torch.__version__.split("+")[0], torch.version.cuda, torch.cuda.is_available(),
      torch._C._GLIBCXX_USE_CXX11_ABI, torch.utils.cmake_prefix_path)')"
    echo "version, CUDA, GPU seen, cxx11 ABI, CMake prefix: $facts"
    read -r version cuda seen abi prefix <<<"$facts"
    [ "$seen" = True ] || { echo "gpu_check: python3's torch sees no GPU" >&2; exit 1; }
    # Debian's libraries use the cxx11 ABI: a libtorch without it cannot link with them.
    [ "$abi" = True ] || { echo "gpu_check: this libtorch is not a cxx11-ABI build" >&2; exit 1; }
    [ -n "$torch_dir" ] || torch_dir="$prefix/Torch"
    # ATen asks for C++20 from 2.12 on.
    if [ "$(printf '%s\n' "$version" 2.12 | sort -V | head -1)" = 2.12 ]; then std=20; fi
    local nvcc
    nvcc="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
    [ -x "$nvcc" ] || { echo "gpu_check: no nvcc" >&2; exit 1; }
    # The toolkit is the one of this nvcc, wherever the image keeps it (Torch's CMake package
    # looks for it too).
    local toolkit
    toolkit="$(cd "$(dirname "$(readlink -f "$nvcc")")/.." && pwd)"
    cuda_args=(-DMEWM_WITH_CUDA=ON "-DTorch_DIR=$torch_dir" "-DCMAKE_CUDA_COMPILER=$nvcc"
      "-DCUDAToolkit_ROOT=$toolkit" "-DCUDA_TOOLKIT_ROOT_DIR=$toolkit")
    echo "cuda: $cuda; nvcc: $nvcc (toolkit $toolkit); C++$std"
  elif [ -n "$torch_dir" ]; then
    cuda_args=("-DTorch_DIR=$torch_dir")
  fi

  std="${MEWM_CXX_STANDARD:-$std}"

  echo "== the carried packages"
  mkdir -p "$build"
  touch "$build/$BUILD_MARK"
  # Inside the build folder, at the same path every run: CMake's cache keeps the paths it found
  # there, so a rerun reconfigures against the same place (a fresh temporary folder each run
  # left the cache pointing at a deleted one).
  local sysroot="$build/deps"
  rm -rf "$sysroot"
  mkdir -p "$sysroot"
  local debs=("$DEPS"/*.deb)
  for deb in "${debs[@]}"; do dpkg-deb -x "$deb" "$sysroot"; done
  local lib="$sysroot/usr/lib/x86_64-linux-gnu"
  export PATH="$sysroot/usr/bin:$PATH"
  export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # Their .pc files name /usr: pkgconf prefixes the unpacked folder.
  export PKG_CONFIG_LIBDIR="$lib/pkgconfig:$sysroot/usr/share/pkgconfig"
  export PKG_CONFIG_SYSROOT_DIR="$sysroot"
  echo "${#debs[@]} packages unpacked in $sysroot"

  echo "== configure and build"
  cmake -S "$ROOT" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMEWM_MODELS_ONLY=ON \
    -DMEWM_WERROR=OFF "-DCMAKE_CXX_STANDARD=$std" "-DCMAKE_PREFIX_PATH=$sysroot/usr" \
    "-DPKG_CONFIG_EXECUTABLE=$sysroot/usr/bin/pkgconf" "${cuda_args[@]}"
  local t0=$SECONDS
  cmake --build "$build" -j"$(nproc)" --target core_torch_test diffusion_test
  echo "built in $((SECONDS - t0)) s"

  echo "== tests"
  local failed=0
  "$build/tests/core_torch_test" --gtest_output="xml:$out/core_torch_test.xml" || failed=1
  "$build/tests/diffusion_test" --gtest_output="xml:$out/diffusion_test.xml" || failed=1
  if [ -z "$cpu" ] && grep -q '<testcase name="OnCuda[^"]*"[^>]*result="skipped"' \
    "$out/diffusion_test.xml"; then
    echo "gpu_check: a CUDA case skipped itself: CUDA was not usable from this build" >&2
    failed=1
  fi
  [ "$failed" = 0 ] && echo "gpu_check: passed" || echo "gpu_check: FAILED"
  return "$failed"
}

case "${1:-}" in
  prepare) prepare ;;
  run) run "${2:-}" "${3:-}" ;;
  *) usage ;;
esac
