#!/usr/bin/env bash
# Every test: sets up if needed, then runs the unit and integration tests
# (the integration tests run the real binary).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh --no-build
cargo test --locked --all-targets "$@"
