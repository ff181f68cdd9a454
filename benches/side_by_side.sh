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
#
# The predict section (ids predict.<temporal|squad>.<column>; `--only predict` runs it alone,
# `--quick` cuts it to 40 examples per task) times `p2m predict` on the laptop Table 1 students
# three ways (plain, prefix cache, llama.cpp engine) against transformers `generate` and
# llama-cpp-python's server on the same prompts. Existing tools instead of the venv and the
# release build: BENCH_PYTHON (an interpreter with torch and transformers; no venv is installed),
# BENCH_LLAMA_PYTHON (one with llama_cpp.server; default the venv's, else
# `scripts/llama-server.sh python`), P2M_BIN (a built p2m, p2m-score beside it; with it and
# `--only predict` nothing is built). P2M_PREDICT_TEMPORAL_MODEL / P2M_PREDICT_SQUAD_MODEL
# name other students; PREDICT_N sets the examples per task (default 860 / 1,000, --quick 40).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
cache=${P2M_CACHE:-$root/.cache}
venv=$cache/bench-venv
out=$root/target/side_by_side
work=$out/inputs
say() { echo "side_by_side: $*" >&2; }

# `--only` parts that all start with `predict` select the predict section alone.
only=""
quick=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --quick) quick=--quick ;;
    --only) only=${args[i + 1]:-} ;;
    --only=*) only=${args[i]#--only=} ;;
  esac
done
predict_only=""
if [ -n "$only" ]; then
  predict_only=1
  IFS=, read -ra parts <<<"$only"
  for part in "${parts[@]}"; do [[ $part == predict* ]] || predict_only=""; done
fi

# The stamp hashes the requirements themselves (comments may change without a reinstall).
stamp=$venv/.installed-$(grep -v '^#' benches/requirements.txt | sha256sum | cut -c1-16)
if [ -n "${BENCH_PYTHON:-}" ]; then
  py=$BENCH_PYTHON
  say "reference side: $py (BENCH_PYTHON; no venv installed)"
elif [ ! -f "$stamp" ]; then
  say "installing the reference side into $venv (once)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r benches/requirements.txt
  touch "$stamp"
fi
py=${py:-$venv/bin/python}
if [ -n "${BENCH_LLAMA_PYTHON:-}" ]; then
  llama_py=$BENCH_LLAMA_PYTHON
elif "$py" -c "import llama_cpp.server" 2>/dev/null; then
  llama_py=$py
elif [ -z "${BENCH_PYTHON:-}" ]; then
  bash scripts/llama-server.sh install   # builds the wheel once, keeps it in <cache>/wheels/llama-cpp
  "$venv/bin/pip" install -q --disable-pip-version-check --no-index --find-links "$cache/wheels/llama-cpp" "llama-cpp-python[server]"
  llama_py=$py
else
  llama_py=$(bash scripts/llama-server.sh python)
fi

export OMP_NUM_THREADS=${THREADS:-1}
mkdir -p "$out"
"$py" benches/side_by_side.py predict --check --work "$work" --out "$out/predict.json" ${only:+--only "$only"}
rm -f "$out/predict.json"
if [ -n "${P2M_BIN:-}" ]; then
  p2m=$P2M_BIN
  [ -x "$p2m" ] || { say "P2M_BIN=$p2m is not an executable"; exit 1; }
else
  p2m=${CARGO_TARGET_DIR:-$root/target}/release/p2m
  say "building p2m (release)"
  cargo build -q --release --bin p2m --bin p2m-score
fi
if [ -z "$predict_only" ]; then
  rm -f "$out/rust.json" "$out/python.json"
  say "building the Rust side (release)"
  cargo bench -q --bench side_by_side --no-run
  "$py" benches/side_by_side.py prepare --work "$work"
  say "prompt2model-rs side"
  cargo bench -q --bench side_by_side -- --work "$work" --out "$out/rust.json" "$@"
  say "reference side"
  "$py" benches/side_by_side.py measure --work "$work" --out "$out/python.json" --rust "$out/rust.json" --p2m "$p2m" "$@"
fi
say "predict section"
"$py" benches/side_by_side.py predict --work "$work" --out "$out/predict.json" --p2m "$p2m" --llama-python "$llama_py" \
  $quick ${only:+--only "$only"} ${PREDICT_N:+--n "$PREDICT_N"}
if [ -n "$predict_only" ]; then
  "$py" benches/side_by_side.py table --predict "$out/predict.json" --markdown "$out/table.md"
else
  "$py" benches/side_by_side.py table "$out/rust.json" "$out/python.json" --predict "$out/predict.json" --markdown "$out/table.md"
fi
