#!/usr/bin/env bash
# Installs llama-cpp-python's OpenAI-compatible server for the `llamacpp` test tier
# (tests/test_real_mixed.py), from PyPI only: `llama-cpp-python[server]`, pinned, built from
# its sdist (CPU only, -march=native, 2 build jobs: about 8 minutes on 2 cores) into a venv of
# its own, so nothing is added to the project's environment.
#
# It runs on the GGUF model that .ci/install-llama.sh assembles (LLAMA_MODEL in the env file):
# run that script first.
#
# Idempotent. Everything lands in the same cache as install-llama.sh, so a second run takes
# seconds:
#   ${LLAMA_CACHE:-$HOME/.cache/gateway-llama}/
#     llama-cpp-python-<version>-<key>/    the venv; key = hash of CPU flags + CMake options + Python
#     env                                  gains LLAMA_CPP_PYTHON=<the venv's python> (other keys kept)
# On success the env file is printed (and it can be sourced).
set -euo pipefail

LOG_NAME=install-llama-cpp-python
. "$(dirname "${BASH_SOURCE[0]}")/llama-common.sh"

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"

# CPU only; the multimodal (mtmd) library is not needed to serve a text model, so it is not built.
CMAKE_OPTS=(
  -DCMAKE_BUILD_TYPE=Release
  -DGGML_NATIVE=ON
  -DGGML_CCACHE=OFF
  -DGGML_BLAS=OFF
  -DLLAVA_BUILD=OFF
  -DLLAMA_BUILD_TESTS=OFF
  -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_TOOLS=OFF
  -DLLAMA_BUILD_SERVER=OFF
  -DLLAMA_OPENSSL=OFF
)

llama_begin

# The key also names the Python the venv is made from.
key="$(build_key "${CMAKE_OPTS[*]}" "$("$PYTHON" -c 'import sys; print(sys.version)')")"
VENV="$CACHE/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION-$key"
VPY="$VENV/bin/python"
STAMP="$VENV/.complete"   # written last: a venv without it is a broken or interrupted install

# Importing llama_cpp loads the compiled library, so this also proves it runs on this CPU.
venv_works() {
  [ -f "$STAMP" ] && [ -x "$VPY" ] && "$VPY" - "$LLAMA_CPP_PYTHON_VERSION" <<'PY' >/dev/null 2>&1
import sys
import llama_cpp
import llama_cpp.server.app  # the [server] extra: fastapi, uvicorn, sse-starlette, starlette-context
sys.exit(llama_cpp.__version__ != sys.argv[1])
PY
}

if venv_works; then
  log "llama-cpp-python cached: $VENV"
else
  need_tools "c++" "g++"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  build_log="$VENV/build.log"
  "$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip >"$build_log" 2>&1 \
    || { tail -n 20 "$build_log" >&2; log "could not upgrade pip in $VENV"; exit 1; }
  log "building llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION with $JOBS jobs (5-10 minutes on 2 cores; log: $build_log)"
  tb=$(now)
  # --no-cache-dir: pip's wheel cache does not know CMAKE_ARGS and could hand back a wheel built
  # with other options (or for another CPU).
  if ! CMAKE_ARGS="${CMAKE_OPTS[*]}" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
       "$VPY" -m pip install --verbose --no-cache-dir --disable-pip-version-check \
         --no-binary llama-cpp-python "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" \
         >>"$build_log" 2>&1; then
    build_failed "$build_log"
  fi
  touch "$STAMP"
  venv_works || { log "the installed llama-cpp-python does not import"; rm -f "$STAMP"; exit 1; }
  gzip -f "$build_log"
  log "built llama-cpp-python in $(( $(now) - tb ))s: $VENV"
fi

# ---------------------------------------------------------------- env file
# install-llama.sh writes LLAMA_SERVER_BIN and LLAMA_MODEL there; keep every other key.
grep -qs '^LLAMA_MODEL=' "$CACHE/env" || log "no LLAMA_MODEL in $CACHE/env yet: run .ci/install-llama.sh too"
llama_done "LLAMA_CPP_PYTHON=$VPY"
