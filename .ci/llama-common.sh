# Sourced (not run) by .ci/install-llama.sh and .ci/install-llama-cpp-python.sh: what both
# installers do alike. The cache and its lock, logging, the cache key of a -march=native build,
# the C++ toolchain, a failed build's log, and the env file the tests read.
# The sourcing script sets LOG_NAME first and runs under `set -euo pipefail`.

CACHE="${LLAMA_CACHE:-$HOME/.cache/gateway-llama}"
JOBS="${LLAMA_BUILD_JOBS:-2}"   # the machines have 2 cores; an uncapped build spawns ~90 jobs
PYTHON="${PYTHON:-python3}"

log() { printf '[%s] %s\n' "$LOG_NAME" "$*" >&2; }
now() { date +%s; }

# One install at a time per cache (two CI runs, or a developer and CI on one machine): one build
# at a time on 2 cores, and one writer of `env`. T0 is when this install began.
llama_begin() {
  mkdir -p "$CACHE"
  exec 9>"$CACHE/.lock"
  if command -v flock >/dev/null 2>&1; then flock 9; fi
  T0=$(now)
}

# build_key LINE...: the cache key of a -march=native build, whose output runs only on the CPU
# it was built for: a hash of the CPU flags, the machine and the given lines (build options).
build_key() {
  local what
  what="$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m); uname -m; printf '%s\n' "$@" )"
  printf '%s' "$what" | sha256sum | cut -c1-12
}

# need_tools "TOOL..." "PACKAGE...": when a tool is missing, installs the packages with apt-get
# (as root, where there is apt-get); a tool still missing ends the install.
need_tools() {
  local tools="$1" pkgs="$2" tool missing=""
  for tool in $tools; do command -v "$tool" >/dev/null 2>&1 || missing=1; done
  [ -n "$missing" ] || return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing the toolchain ($pkgs) with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    # shellcheck disable=SC2086  # the package list is words
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
  fi
  for tool in $tools; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing $tool (apt-get install $pkgs)"; exit 1; }
  done
}

# build_failed LOG: the end of a failed build's log, and the install ends.
build_failed() {
  tail -n 40 "$1" >&2
  log "build failed (full log: $1)"
  exit 1
}

# llama_done KEY=VALUE...: rewrites those keys of the env file (every other key stays: the
# other installer's), then prints the file, which can be sourced.
llama_done() {
  local pair drop=()
  for pair in "$@"; do drop+=(-e "^${pair%%=*}="); done
  {
    if [ -f "$CACHE/env" ]; then grep -v "${drop[@]}" "$CACHE/env" || true; fi
    printf '%s\n' "$@"
  } >"$CACHE/env.tmp"
  mv "$CACHE/env.tmp" "$CACHE/env"
  log "done in $(( $(now) - T0 ))s; env file: $CACHE/env"
  cat "$CACHE/env"
}
