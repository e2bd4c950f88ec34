#!/usr/bin/env bash
# Regenerates the golden fixtures (tests/golden/) and the tiny tokenizer
# (assets/tiny-tokenizer/) with Hugging Face transformers. CI never runs this:
# the outputs are committed. The venv .venv-golden is separate from the
# product venv .venv and holds exact pins (scripts/golden/requirements.txt),
# without torchvision so that transformers takes its PIL image path.
#
# Usage: scripts/golden/make.sh            (creates .venv-golden on first use)
# Running it twice gives byte-identical files; it prints their sha256 sums.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

VENV=".venv-golden"
fail() { printf 'golden: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null || fail "python3 is missing"
if [ ! -x "$VENV/bin/python" ]; then
  echo "golden: creating $VENV"
  python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' ||
  fail "$VENV must be Python 3.11 (the fixtures record the Python version); delete it and rerun with python3.11"

want=$(sort scripts/golden/requirements.txt | grep -v '^#' | grep -v '^$' | tr 'A-Z_' 'a-z-' | tr '\n' ' ')
have=$("$VENV/bin/pip" freeze --disable-pip-version-check 2>/dev/null | tr 'A-Z_' 'a-z-' | sed 's/+.*//' | tr '\n' ' ')
missing=""
for req in $want; do
  case " $have " in *" $req "*) ;; *) missing="$missing $req";; esac
done
if [ -n "$missing" ]; then
  echo "golden: installing pinned packages into $VENV:$missing"
  "$VENV/bin/pip" install --disable-pip-version-check --quiet \
    -c scripts/torch-constraints.txt -r scripts/golden/requirements.txt
fi
if "$VENV/bin/python" -c 'import torchvision' 2>/dev/null; then
  fail "torchvision is installed in $VENV; remove it (pip uninstall torchvision): transformers must use PIL"
fi

"$VENV/bin/python" scripts/golden/make_golden.py
"$VENV/bin/python" scripts/golden/make_adapters.py  # tests/golden/{nf4,adapters}: PEFT + bitsandbytes fixtures
find assets/tiny-tokenizer tests/golden -type f -not -name README.md | LC_ALL=C sort | xargs sha256sum
