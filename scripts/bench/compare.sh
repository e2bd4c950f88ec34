#!/usr/bin/env bash
# palisweep vs transformers + PEFT on the same checkpoint, batch and threads:
#
#   scripts/bench/compare.sh --preset small --method lora --batch 4 --steps 10 --threads 2
#
# Needs the release binary (cargo build --release) and the pinned Python
# environment of scripts/bench/requirements.txt (default: .venv-golden, made
# by scripts/golden/make.sh; another one with --python). Options: see
# scripts/bench/compare.py --help.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
exec python3 "$ROOT/scripts/bench/compare.py" "$@"
