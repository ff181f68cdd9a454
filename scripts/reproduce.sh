#!/usr/bin/env bash
# The main job: set up what is missing, build, reproduce the paper's Tables 1 and 3 from the
# authors' recorded runs, and re-run Table 2 live at the `laptop` scale (about 20 minutes on 2 CPU
# cores; finished arms are kept in .cache/runs/table2/, so a rerun or a resumed run is quick).
# Reports land in reports/table1/, reports/table3/ and reports/table2/.
#
#   bash scripts/reproduce.sh                 the above
#   bash scripts/reproduce.sh --no-table2     without the training
#   bash scripts/reproduce.sh --live-tables   also Tables 1 and 3 re-run live on the pipeline at the
#                                             laptop scale (every row and student a cell, kept in
#                                             .cache/runs/table{1,3}/; reports/table{1,3}-live-laptop/)
#   bash scripts/reproduce.sh --claims        also the paper's claims re-tested at the laptop scale, each
#                                             with a verdict (the cells of Tables 1-3 and the diversity
#                                             ablation that are missing, kept in .cache/runs/;
#                                             reports/claims-laptop/)
set -euo pipefail
cd "$(dirname "$0")/.."
table2=1
live=0
claims=0
for arg in "$@"; do
  case "$arg" in
    --no-table2) table2=0 ;;
    --live-tables) live=1 ;;
    --claims) claims=1 ;;
    *) echo "reproduce.sh: unknown option $arg (--no-table2, --live-tables, --claims)" >&2; exit 2 ;;
  esac
done
bash scripts/setup.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins
cargo run --release --quiet --bin table1 -- --source recorded
cargo run --release --quiet --bin table3 -- --source recorded
# Two cores: libtorch's threads should not outnumber them.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
if [ "$table2" = 1 ]; then
  cargo run --release --quiet --bin table2 -- --scale laptop
fi
if [ "$live" = 1 ]; then
  cargo run --release --quiet --bin table1 -- --source live --scale laptop
  cargo run --release --quiet --bin table3 -- --source live --scale laptop
fi
if [ "$claims" = 1 ]; then
  cargo run --release --quiet --bin claims -- --scale laptop
fi
