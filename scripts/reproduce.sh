#!/usr/bin/env bash
# The main job: set up what is missing, build, reproduce the paper's Tables 1 and 3 from the
# authors' recorded runs, and re-run Table 2 live at the `laptop` scale (about 20 minutes on 2 CPU
# cores; finished arms are kept in .cache/runs/table2/, so a rerun or a resumed run is quick).
# Reports land in reports/table1/, reports/table3/ and reports/table2/.
# `bash scripts/reproduce.sh --no-table2` skips the training.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins
cargo run --release --quiet --bin table1 -- --source recorded
cargo run --release --quiet --bin table3 -- --source recorded
if [ "${1:-}" != "--no-table2" ]; then
  # Two cores: libtorch's threads should not outnumber them.
  OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} cargo run --release --quiet --bin table2 -- --scale laptop
fi
