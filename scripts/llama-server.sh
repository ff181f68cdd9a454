#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server (llama-cpp-python[server], built from PyPI) serving the
# project's own SmolLM2-135M-Instruct GGUF — the real server the teacher tests and the teacher
# benchmark run against.
#
#   bash scripts/llama-server.sh install            # idempotent: venv <cache>/llama-cpp-venv
#   bash scripts/llama-server.sh gguf               # print the GGUF's path (fetched if missing)
#   bash scripts/llama-server.sh python             # install, then print the venv's python
#   bash scripts/llama-server.sh serve PORT [ARGS]  # serve it as model `smollm2` on 127.0.0.1:PORT
#
# The first install compiles llama.cpp (about 4 minutes on 2 cores, longer while other builds
# run) into a wheel kept in <cache>/wheels/llama-cpp/ (with its dependencies), so later installs —
# a fresh venv, another checkout sharing the cache — take seconds and need no network.
# <cache> is $P2M_CACHE or .cache. Environment: LLAMA_CPP_PYTHON_VERSION (default pinned below),
# LLAMA_THREADS (default 1), LLAMA_CTX (default 8192: the generator's prompts reach ~3,500
# tokens; llama-cpp-python's own default of 2,048 is too small).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache=${P2M_CACHE:-$root/.cache}
venv=$cache/llama-cpp-venv
wheels=$cache/wheels/llama-cpp
version=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
say() { echo "llama-server: $*" >&2; }

install() {
  if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import llama_cpp, llama_cpp.server, uvicorn, fastapi; assert llama_cpp.__version__ == '$version'" 2>/dev/null; then
    return 0
  fi
  mkdir -p "$wheels"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  if ! ls "$wheels"/llama_cpp_python-"$version"-*.whl >/dev/null 2>&1; then
    say "building llama-cpp-python $version (compiles llama.cpp: minutes; the wheel is kept in $wheels)"
    CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-2} nice -n 10 \
      "$venv/bin/pip" wheel -q --disable-pip-version-check --wheel-dir "$wheels" "llama-cpp-python[server]==$version"
  fi
  # From the kept wheels only when they are all there; else let pip fetch what is missing.
  "$venv/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$wheels" "llama-cpp-python[server]==$version" 2>/dev/null \
    || "$venv/bin/pip" install -q --disable-pip-version-check --find-links "$wheels" "llama-cpp-python[server]==$version"
  "$venv/bin/python" -c "import llama_cpp.server" || { say "install failed"; exit 1; }
  say "installed llama-cpp-python $version in $venv"
}

gguf() {
  local f
  f=$(find "$cache/models" -name 'SmolLM2-135M-Instruct*.gguf' 2>/dev/null | head -1)
  if [ -z "$f" ]; then
    say "the SmolLM2 GGUF is not in $cache/models; fetching it (p2m models fetch)"
    if [ -x "$root/target/debug/p2m" ]; then "$root/target/debug/p2m" models fetch >&2
    else cargo run -q --bin p2m -- models fetch >&2; fi
    f=$(find "$cache/models" -name 'SmolLM2-135M-Instruct*.gguf' | head -1)
  fi
  [ -n "$f" ] || { say "no SmolLM2 GGUF after fetching"; exit 1; }
  echo "$f"
}

case "${1:-}" in
  install) install ;;
  python) install; echo "$venv/bin/python" ;;
  gguf) gguf ;;
  serve)
    port=${2:?usage: llama-server.sh serve PORT [extra server args]}
    shift 2
    install
    model=$(gguf)
    exec "$venv/bin/python" -m llama_cpp.server --model "$model" --model_alias smollm2 \
      --n_threads "${LLAMA_THREADS:-1}" --n_ctx "${LLAMA_CTX:-8192}" \
      --host 127.0.0.1 --port "$port" "$@"
    ;;
  *) echo "usage: $0 install | python | gguf | serve PORT [extra server args]" >&2; exit 2 ;;
esac
