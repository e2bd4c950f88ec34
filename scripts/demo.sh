#!/usr/bin/env bash
# The main job on a fresh machine: set up, then run the demo sweep (tiny
# checkpoints, generated data, CPU; 16 trials). Running it again resumes
# (finished trials are skipped). Extra arguments go to `palisweep run`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
target/release/palisweep plan experiments/demo.toml
target/release/palisweep run experiments/demo.toml "$@"
target/release/palisweep status demo
echo "report:"
target/release/palisweep report demo
