#!/usr/bin/env bash
# The whole test suite: installs what the tests need (incl. the Python reference venv for the
# differential metric tests), checks formatting and lints, and runs every test and doctest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --python
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
# rustfmt and clippy come with rustup's default profile; add them where a minimal profile left them out.
if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi
export P2M_PYTHON="$PWD/.venv/bin/python"
# Tests run in parallel threads; one libtorch thread each keeps 2 cores from thrashing.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
echo "== cargo fmt --all --check"
cargo fmt --all --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings
echo "== cargo test --all-targets"
cargo test --all-targets "$@"
echo "== cargo test --doc"
cargo test --doc "$@"
