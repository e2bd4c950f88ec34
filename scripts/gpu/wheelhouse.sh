#!/usr/bin/env bash
# Downloads the pinned transformers + PEFT wheels (scripts/gpu/hf-requirements.txt)
# for the GPU machine's Python 3.12 into .gpu-wheels/ (git-ignored), so that
# scripts/gpu/check.sh can run transformers + PEFT side by side with
# palisweep there (it has torch but no transformers and no network). Carry
# .gpu-wheels in a device call of its own (about 47 MB; the carry limit is
# 64 MiB), apart from the binaries:
#
#   scripts/gpu/wheelhouse.sh
#   (device) carry [".gpu-wheels"]: scripts/gpu/check.sh --install-hf
#
# Idempotent: pip skips wheels already there. Needs network (PyPI) here.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
DEST=.gpu-wheels
PIP=${PIP:-.venv/bin/pip}
[ -x "$PIP" ] || PIP=pip3
mkdir -p "$DEST"
"$PIP" download --disable-pip-version-check --quiet --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any \
    -d "$DEST" -r scripts/gpu/hf-requirements.txt
wanted=$(grep -c '^[A-Za-z]' scripts/gpu/hf-requirements.txt)
have=$(ls "$DEST"/*.whl | wc -l)
[ "$have" -ge "$wanted" ] || { echo "wheelhouse: $have wheels for $wanted pins" >&2; exit 1; }
mib=$(du -sm "$DEST" | cut -f1)
[ "$mib" -le 60 ] || { echo "wheelhouse: $mib MiB, over what one carry takes" >&2; exit 1; }
echo "wheelhouse: $have wheels, $mib MiB in $DEST"
