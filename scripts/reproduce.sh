#!/usr/bin/env bash
# The main job: set up what is missing, build, and reproduce the paper's Tables 1 and 3 from the
# authors' recorded runs. Reports land in reports/table1/ and reports/table3/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins
cargo run --release --quiet --bin table1 -- --source recorded
cargo run --release --quiet --bin table3 -- --source recorded
