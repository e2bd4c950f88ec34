#!/usr/bin/env bash
# Sets up a fresh Debian machine for palisweep: a project-local Python venv
# holding the pinned PyPI torch wheel (its libtorch is what tch links), and a
# release build of the binary. Idempotent: a second run checks and returns.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

TORCH_VERSION="2.13.0"   # the libtorch tch 0.26 expects
VENV=".venv"

fail() { printf 'setup: %s\n' "$*" >&2; exit 1; }

command -v python3 >/dev/null ||
  fail "python3 is missing: sudo apt-get install -y python3 python3-venv"
python3 -c 'import venv, ensurepip' 2>/dev/null ||
  fail "python3's venv module is missing: sudo apt-get install -y python3-venv"
command -v cc >/dev/null ||
  fail "a C compiler is missing (needed to build libtorch bindings and SQLite): sudo apt-get install -y build-essential"
command -v c++ >/dev/null ||
  fail "a C++ compiler is missing (needed by the libtorch bindings): sudo apt-get install -y build-essential"
command -v cargo >/dev/null ||
  fail "Rust is missing: install it with rustup (https://rustup.rs), then rerun"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV"
  python3 -m venv "$VENV"
fi

installed=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)
if [ "${installed%%+*}" != "$TORCH_VERSION" ]; then
  echo "setup: installing torch==$TORCH_VERSION into $VENV (about 5 GB with its CUDA libraries)"
  "$VENV/bin/pip" install --disable-pip-version-check --quiet \
    -c scripts/torch-constraints.txt "torch==$TORCH_VERSION"
fi

# A stable path to the wheel's libtorch, whatever the Python version:
# .cargo/config.toml points LIBTORCH here, build.rs bakes lib/ into the rpath.
torch_dir=$("$VENV/bin/python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null)
[ -f "$torch_dir/lib/libtorch_cpu.so" ] || fail "torch at $torch_dir has no lib/libtorch_cpu.so"
ln -sfn "$torch_dir" "$VENV/libtorch"

# tcmalloc: palisweep preloads it when installed (src/allocator.rs): faster
# CPU steps and peaks near the live tensors, where glibc's heap keeps much of
# what is freed (docs/benchmarks.md, "The CPU allocator"). Optional.
# The folders src/allocator.rs looks in.
tcmalloc_installed() {
  local pattern
  for pattern in "/usr/lib/*/libtcmalloc*.so.4" "/usr/lib64/libtcmalloc*.so.4" "/usr/lib/libtcmalloc*.so.4"; do
    compgen -G "$pattern" >/dev/null && return 0
  done
  return 1
}
if ! tcmalloc_installed; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing tcmalloc (libtcmalloc-minimal4)"
    { apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; }; } ||
      echo "setup: could not install libtcmalloc-minimal4; palisweep will use glibc's malloc" >&2
  else
    echo "setup: tcmalloc is not installed; palisweep uses glibc's malloc, slower and larger on the CPU" \
      "(sudo apt-get install -y libtcmalloc-minimal4)" >&2
  fi
fi

if [ "${1:-}" != "--no-build" ]; then
  echo "setup: building palisweep (release; the first build takes a few minutes)"
  cargo build --release --locked --quiet
fi
