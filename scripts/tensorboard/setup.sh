#!/usr/bin/env bash
# A project-local venv (.venv-tb) with TensorBoard and every dependency
# pinned (scripts/tensorboard/requirements.txt), for the tests that open
# palisweep's event files with TensorBoard's own code
# (scripts/tensorboard/check.py). Idempotent: a second run checks and
# returns. Prints the venv's python.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

VENV=".venv-tb"
REQUIREMENTS="scripts/tensorboard/requirements.txt"

if [ ! -x "$VENV/bin/python" ]; then
  echo "tensorboard: creating $VENV" >&2
  python3 -m venv "$VENV"
fi
# Installed exactly as pinned? (pip freeze lists what the venv holds.)
wanted=$(grep -v '^#' "$REQUIREMENTS" | sort)
held=$("$VENV/bin/pip" freeze --disable-pip-version-check 2>/dev/null | sort)
if [ "$wanted" != "$held" ]; then
  echo "tensorboard: installing $REQUIREMENTS into $VENV" >&2
  "$VENV/bin/pip" install --disable-pip-version-check --quiet -r "$REQUIREMENTS"
fi
"$VENV/bin/python" -c 'import tensorboard' ||
  { echo "tensorboard: $VENV cannot import tensorboard" >&2; exit 1; }
echo "$PWD/$VENV/bin/python"
