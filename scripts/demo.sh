#!/usr/bin/env bash
# The main job on a fresh machine: set up, then plan the demo sweep (tiny
# checkpoints, generated data, CPU). Once the scheduler lands this runs it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh
target/release/palisweep plan experiments/demo.toml "$@"
