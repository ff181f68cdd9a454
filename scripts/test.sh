#!/usr/bin/env bash
# The whole test suite: installs what the tests need (incl. the Python reference venv for the
# differential metric tests) and runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --python
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
export P2M_PYTHON="$PWD/.venv/bin/python"
cargo test --release --all-targets "$@"
