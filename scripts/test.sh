#!/usr/bin/env bash
# The whole test suite: installs what the tests need (incl. the Python reference venv for the
# differential metric tests) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --python
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export P2M_PYTHON="$PWD/.venv/bin/python"
# Tests run in parallel threads; one libtorch thread each keeps 2 cores from thrashing.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
cargo test --all-targets "$@"
