#!/usr/bin/env bash
# Every test: sets up if needed, then runs the unit and integration tests
# (the integration tests run the real binary). It also makes the pinned
# TensorBoard venv (scripts/tensorboard/setup.sh) so that TensorBoard's own
# code opens a sweep's event files. As root, it also installs and starts a
# one-node Slurm cluster (scripts/slurm/test-cluster.sh) so that the Slurm
# backend's tests run against a real Slurm, and stops it afterwards;
# otherwise those tests say on stderr that they did not run. As root it
# also installs headless Chromium (scripts/browser/install.sh) and then
# requires the report's page tests to run.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/setup.sh --no-build
scripts/tensorboard/setup.sh >/dev/null
export PALISWEEP_REQUIRE_TENSORBOARD=1
if [ "$(id -u)" -eq 0 ] && [ -z "${PALISWEEP_NO_SLURM:-}" ]; then
  scripts/slurm/test-cluster.sh install
  eval "$(scripts/slurm/test-cluster.sh start)"
  trap 'scripts/slurm/test-cluster.sh stop' EXIT
  export PALISWEEP_REQUIRE_SLURM=1
  echo "test: Slurm test cluster up (SLURM_CONF=$SLURM_CONF)"
fi
if [ "$(id -u)" -eq 0 ]; then
  scripts/browser/install.sh
  export PALISWEEP_REQUIRE_CHROMIUM=1
fi
cargo test --locked --all-targets "$@"
