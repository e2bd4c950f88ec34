#!/usr/bin/env bash
# Builds the CUDA binaries for the GPU machine, here on the CPU machine:
# release `palisweep` and the lib unit-test binary, linked against the
# libtorch of the torch 2.11 cu13 wheel (what the GPU machine has
# installed), stripped and copied into DEST/.gpu/ (default: this checkout).
#
#   scripts/gpu/build.sh [DEST]
#
# Then send DEST with `.gpu` carried and run scripts/gpu/check.sh there.
#
# The build runs on a copy of this checkout's files (tracked and untracked,
# not ignored) in $BUILD_DIR/src, so that patching torch-sys for libtorch
# 2.11 (see stub_torch_ops.py) never touches the checkout's Cargo.lock.
# Idempotent: the wheel is fetched (pip download, pinned) and unpacked once
# under results/.cache/gpu-build, cargo rebuilds what changed.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
DEST=$(cd "${1:-$ROOT}" && pwd)
# The GPU machine's torch: 2.11.0, the CUDA 13.0 build PyPI serves for
# Linux x86-64 (torch+cu130); its headers and libraries are what we link.
TORCH_GPU_VERSION=2.11.0
CACHE_ROOT=${CACHE_ROOT:-$ROOT/results/.cache/gpu-build}
WHEEL_DIR=${WHEEL_DIR:-$CACHE_ROOT/wheels}
WHEEL=${WHEEL:-}
TORCH_ROOT=${TORCH_ROOT:-$CACHE_ROOT/torch-$TORCH_GPU_VERSION}
BUILD_DIR=${BUILD_DIR:-$CACHE_ROOT/build}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE_ROOT/target}

# The wheel: given (WHEEL), already fetched, or fetched now (pinned; any
# Python tag will do, only its C++ half is used).
if [ -z "$WHEEL" ]; then
    WHEEL=$(ls "$WHEEL_DIR"/torch-"$TORCH_GPU_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
fi
if [ -z "$WHEEL" ] || [ ! -f "$WHEEL" ]; then
    echo "build.sh: fetching torch==$TORCH_GPU_VERSION (about 900 MB) into $WHEEL_DIR" >&2
    mkdir -p "$WHEEL_DIR"
    python3 -m pip download --disable-pip-version-check --quiet --no-deps \
        --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 \
        --dest "$WHEEL_DIR" "torch==$TORCH_GPU_VERSION"
    WHEEL=$(ls "$WHEEL_DIR"/torch-"$TORCH_GPU_VERSION"-*.whl | head -n 1)
fi

# Only the headers and libraries: the Python half is not needed to link.
if [ ! -f "$TORCH_ROOT/.unpacked" ]; then
    rm -rf "$TORCH_ROOT"
    mkdir -p "$TORCH_ROOT"
    unzip -q "$WHEEL" 'torch/include/*' 'torch/lib/*' 'torch/share/*' -d "$TORCH_ROOT"
    touch "$TORCH_ROOT/.unpacked"
fi

export LIBTORCH="$TORCH_ROOT/torch"
# tch 0.26 is made for torch 2.13; the 2.11 headers compile its C shim.
export LIBTORCH_BYPASS_VERSION_CHECK=1
# rustc links with --as-needed, and nothing of ours calls into
# libtorch_cuda, so it would be dropped and libtorch would see no GPU:
# name it again after --no-as-needed. The CUDA runtime libraries it needs
# are not here (they come with the GPU machine's torch), hence
# --allow-shlib-undefined. An explicit --target keeps these flags off the
# build scripts, which link no libtorch.
TARGET=x86_64-unknown-linux-gnu
export RUSTFLAGS="-C link-arg=-Wl,--no-as-needed -C link-arg=-ltorch_cuda -C link-arg=-Wl,--as-needed -C link-arg=-Wl,--allow-shlib-undefined"

# torch-sys with the ops libtorch 2.11 lacks stubbed out.
registry_sys=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/torch-sys-0.26.0 | head -n 1)
torch_sys="$BUILD_DIR/torch-sys-0.26.0"
if [ ! -f "$torch_sys/.stubbed" ]; then
    rm -rf "$torch_sys"
    mkdir -p "$BUILD_DIR"
    cp -r "$registry_sys" "$torch_sys"
    python3 "$ROOT/scripts/gpu/stub_torch_ops.py" "$torch_sys/libtch/torch_api_generated.cpp"
    touch "$torch_sys/.stubbed"
fi

# The checkout's files as git would send them (tar keeps modification
# times, so cargo rebuilds only what changed).
src="$BUILD_DIR/src"
rm -rf "$src.new"
mkdir -p "$src.new"
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | tar --null --ignore-failed-read -T - -cf -) \
    | tar -xf - -C "$src.new"
if [ -d "$src" ]; then
    # Replace the files but keep the folder (and its path) stable.
    find "$src" -mindepth 1 -maxdepth 1 -exec rm -rf {} +
    mv "$src.new"/* "$src.new"/.[!.]* "$src"/ 2>/dev/null || true
    rm -rf "$src.new"
else
    mv "$src.new" "$src"
fi

cd "$src"
export CARGO_PATCH="patch.crates-io.torch-sys.path=\"$torch_sys\""
cargo build --config "$CARGO_PATCH" --release --target $TARGET --bin palisweep
# The path of the lib's unit-test binary, from cargo's JSON messages.
test_bin=$(cargo test --config "$CARGO_PATCH" --release --target $TARGET --lib --no-run --message-format=json \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("profile", {}).get("test") \
            and "lib" in m["target"]["kind"] and m.get("executable"):
        print(m["executable"])
')
[ -n "$test_bin" ] || { echo "no lib test binary found" >&2; exit 1; }

out="$DEST/.gpu"
mkdir -p "$out"
cp "$CARGO_TARGET_DIR/$TARGET/release/palisweep" "$out/palisweep"
cp "$test_bin" "$out/palisweep-lib-tests"
strip "$out/palisweep" "$out/palisweep-lib-tests"
# The unit tests read fixtures under the folder they were built in;
# check.sh links it to wherever the checkout lands.
echo "$src" >"$out/manifest_dir"
# `.gpu/` holds build outputs: keep it out of git without touching .gitignore.
exclude="$(git -C "$DEST" rev-parse --git-path info/exclude)"
case "$exclude" in /*) ;; *) exclude="$DEST/$exclude" ;; esac
grep -qx '/.gpu/' "$exclude" 2>/dev/null || echo '/.gpu/' >>"$exclude"

for bin in "$out/palisweep" "$out/palisweep-lib-tests"; do
    if ! readelf -d "$bin" | grep -q 'NEEDED.*libtorch_cuda\.so'; then
        echo "error: $bin does not link libtorch_cuda.so" >&2
        exit 1
    fi
done
du -ch "$out"/* | tail -n 1 | sed 's/total/.gpu total (carry limit 64 MiB)/'
ls -l "$out"
