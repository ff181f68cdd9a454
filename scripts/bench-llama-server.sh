#!/usr/bin/env bash
# The teacher benchmark against a real server: llama.cpp's OpenAI-compatible server
# (llama-cpp-python, scripts/llama-server.sh) serving the project's SmolLM2 GGUF on a free
# loopback port; `cargo bench --bench teacher -- --real-server …` measures achieved requests per
# minute vs the limit, completion tokens per second and slot utilisation (benches/README.md).
#
#   bash scripts/bench-llama-server.sh [--real-rpm 30] [--real-requests 40]
#
# The server is stopped when the benchmark ends. LLAMA_THREADS (default 1) is passed through.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/llama-server.sh install
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
log=${TMPDIR:-/tmp}/p2m-llama-server-$port.log
bash scripts/llama-server.sh serve "$port" >"$log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do
  curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { echo "the server exited:"; tail -20 "$log"; exit 1; }
  sleep 1
done
curl -sf "http://127.0.0.1:$port/v1/models" >/dev/null || { echo "the server did not come up"; tail -20 "$log"; exit 1; }
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} cargo bench --bench teacher -- --only-real \
  --real-server "http://127.0.0.1:$port/v1" "$@"
