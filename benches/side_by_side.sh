#!/usr/bin/env bash
# Every speed comparison of the project in one go, on this machine: prompt2model-rs against the
# reference implementations (sacrebleu, SQuAD's normalisation, scipy, rank_bm25,
# sentence-transformers, bert_score, transformers + torch fp32 and bf16 autocast, llama.cpp, torch's
# matmul roofs), on the same inputs, then one table of ratios with the conditions.
#
#   bash benches/side_by_side.sh [--quick] [--only SUBSTRING]
#
# First use installs the Python side into <cache>/bench-venv (benches/requirements.txt: torch
# 2.11.0 as setup uses, ~5.4 GB with its CUDA libraries, a few minutes) and llama-cpp-python (the
# wheel scripts/llama-server.sh builds and keeps: ~4 minutes once). Environment: THREADS (intra-op
# threads on both sides, default 1: on a shared 2-core machine more threads wait on each other),
# P2M_CACHE (default .cache). Output: the table on stdout and in target/side_by_side/table.md,
# the raw measurements beside it. benches/README.md keeps the latest table.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache=${P2M_CACHE:-$root/.cache}
venv=$cache/bench-venv
out=$root/target/side_by_side
work=$out/inputs
say() { echo "side_by_side: $*" >&2; }

# The stamp hashes the requirements themselves (comments may change without a reinstall).
stamp=$venv/.installed-$(grep -v '^#' benches/requirements.txt | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ]; then
  say "installing the reference side into $venv (once)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r benches/requirements.txt
  touch "$stamp"
fi
if ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
  bash scripts/llama-server.sh install   # builds the wheel once, keeps it in <cache>/wheels/llama-cpp
  "$venv/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$cache/wheels/llama-cpp" llama-cpp-python
fi

export OMP_NUM_THREADS=${THREADS:-1}
mkdir -p "$out"
say "building (release)"
cargo build -q --release --bin p2m --bin p2m-score
cargo bench -q --bench side_by_side --no-run
"$venv/bin/python" benches/side_by_side.py prepare --work "$work"
say "prompt2model-rs side"
cargo bench -q --bench side_by_side -- --work "$work" --out "$out/rust.json" "$@"
say "reference side"
"$venv/bin/python" benches/side_by_side.py measure --work "$work" --out "$out/python.json" --rust "$out/rust.json" "$@"
"$venv/bin/python" benches/side_by_side.py table "$out/rust.json" "$out/python.json" --markdown "$out/table.md"
