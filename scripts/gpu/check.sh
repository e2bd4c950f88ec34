#!/usr/bin/env bash
# Runs ON the GPU machine, from the repository root, with the binaries that
# scripts/gpu/build.sh put into .gpu/: CUDA unit tests, device detection,
# a tiny bf16 training run, a sweep and a CUDA rerun, and `bench` on random real-size 3B checkpoints.
# Results: $OUT/bench.jsonl (one JSON object per bench row) and
# $OUT/log.txt. Each step runs in its own process under its own timeout, so
# one failure costs only its own row. Budget: ~7 minutes on an H100.
#
#   OUT=/tmp/out scripts/gpu/check.sh
#   scripts/gpu/check.sh --install-hf   # only: the carried .gpu-wheels into .gpu-venv
#
# transformers + PEFT run beside palisweep (3B LoRA at 224 and 448 px, on
# the same checkpoint folder and batch) when .gpu-venv exists, made by
# --install-hf from the wheels scripts/gpu/wheelhouse.sh downloads (carried
# in a call of their own: with the binaries they pass the carry limit), or
# with HF_PYTHON (a python that imports transformers and peft; a dry run
# here: HF_PYTHON=.venv-golden/bin/python).
#
# Environment: BUDGET_S (400), TORCH_LIB (default: the lib/ of python3's torch), SITE_PACKAGES
# (where nvidia/*/lib are; default: the one holding that torch), CACHE
# (random checkpoints, default /tmp/palisweep-bench), BENCH_DEVICE (cuda),
# BENCH_PRESET (published; `tiny` for a dry run on a CPU), BIG_CACHE (where
# the 10B and 28B checkpoints are written: tmpfs, default /dev/shm/palisweep-bench),
# HF_PYTHON.
set -uo pipefail

OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
LOG="$OUT/log.txt"
JSONL="$OUT/bench.jsonl"
: >"$JSONL"
BIN=$PWD/.gpu/palisweep
TESTS=$PWD/.gpu/palisweep-lib-tests
CACHE=${CACHE:-/tmp/palisweep-bench}
DEVICE=${BENCH_DEVICE:-cuda}
PRESET=${BENCH_PRESET:-published}
# Wall-clock budget: benches get at most what is left of it (none when
# under 45 s are left), so the script returns inside the device call's limit.
BUDGET_S=${BUDGET_S:-400}
STARTED=$SECONDS

log() { echo "[$(date -u +%T) +$((SECONDS - STARTED))s] $*" | tee -a "$LOG"; }

# The carried wheelhouse into a venv over the machine's torch.
install_hf() {
    [ -d .gpu-wheels ] || { log "no .gpu-wheels (scripts/gpu/wheelhouse.sh)"; return 1; }
    python3 -m venv --system-site-packages .gpu-venv &&
        .gpu-venv/bin/pip install --disable-pip-version-check --quiet --no-index --no-deps \
            .gpu-wheels/*.whl &&
        .gpu-venv/bin/python -c 'import torch, transformers, peft; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__)' 2>&1 | tee -a "$LOG"
}
if [ "${1:-}" = "--install-hf" ]; then
    install_hf
    exit $?
fi
HF_PYTHON=${HF_PYTHON:-}
if [ -z "$HF_PYTHON" ] && [ -x .gpu-venv/bin/python ]; then
    HF_PYTHON=.gpu-venv/bin/python
elif [ -z "$HF_PYTHON" ] && [ -d .gpu-wheels ] && install_hf; then
    HF_PYTHON=.gpu-venv/bin/python
fi
BIG_CACHE=${BIG_CACHE:-/dev/shm/palisweep-bench}
HF_JSONL="$OUT/hf.jsonl"
: >"$HF_JSONL"

# Runs "$@" under `timeout SECONDS`, output appended to the log.
run_logged() {
    local limit=$1
    shift
    log "\$ $*"
    timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    [ $rc -eq 0 ] || log "exit $rc"
    return $rc
}

# libtorch and the CUDA libraries of the machine's torch wheel.
if [ -z "${TORCH_LIB:-}" ]; then
    TORCH_LIB=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
fi
SITE=${SITE_PACKAGES:-$(dirname "$(dirname "$TORCH_LIB")")}
NVIDIA_LIBS=$(find "$SITE/nvidia" -maxdepth 3 -type d -name lib 2>/dev/null | sort | tr '\n' ':')
export LD_LIBRARY_PATH="$TORCH_LIB:${NVIDIA_LIBS}${LD_LIBRARY_PATH:-}"
log "TORCH_LIB=$TORCH_LIB"
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
python3 -c 'import torch; print("python torch", torch.__version__, "cuda", torch.version.cuda)' >>"$LOG" 2>&1
nvidia-smi >>"$LOG" 2>&1 || log "no nvidia-smi"
ldd "$BIN" | grep -E 'torch|cuda|not found' >>"$LOG" 2>&1

# The unit tests find their fixtures under the checkout they were built in.
if [ -f .gpu/manifest_dir ]; then
    built_in=$(cat .gpu/manifest_dir)
    if [ "$built_in" != "$PWD" ] && [ ! -e "$built_in" ]; then
        mkdir -p "$(dirname "$built_in")" && ln -s "$PWD" "$built_in" && log "linked $built_in -> $PWD"
    fi
fi

# 1. CUDA unit tests (every test with `cuda` in its name; those that need a
#    GPU skip themselves without one, so check the log for "skipped").
run_logged 150 "$TESTS" cuda --test-threads 1 --nocapture

# 2. Detection through NVML, and the plan on it.
run_logged 30 "$BIN" plan experiments/demo.toml --devices auto

# 3. A tiny training run on the GPU (bf16, LoRA), a few steps.
work=$(mktemp -d)
cat >"$work/spec.toml" <<'SPEC'
[experiment]
name = "gpu-smoke"
seed = 1
[data]
path = "generated:json"
task = "json"
max_suffix_tokens = 32
[model]
checkpoint = "tiny"
[train]
method = "lora"
epochs = 2
max_steps = 6
batch_size = 4
lr = 1e-3
[eval]
generate = false
select = { metric = "val/loss", mode = "min" }
SPEC
(cd "$work" && run_logged 90 "$BIN" worker --spec spec.toml --trial trial --device "$DEVICE")
cp "$work/trial/events.jsonl" "$OUT/worker-events.jsonl" 2>/dev/null

# 3b. The scheduler on the GPU: two tiny trials packed onto one device
#     (CUDA_VISIBLE_DEVICES per worker, NVML peak memory per attempt).
cat >"$work/sweep.toml" <<'SPEC'
[experiment]
name = "gpu-sweep"
[data]
path = "generated:json"
task = "json"
max_suffix_tokens = 32
[model]
checkpoint = "tiny"
[train]
epochs = 1
max_steps = 6
batch_size = 4
lr = 1e-3
[eval]
generate = false
[sweep.axes]
"train.method" = ["lora", "qlora"]
[resources]
devices = "cuda"
max_trials_per_device = 2
SPEC
(cd "$work" && run_logged 120 "$BIN" run sweep.toml --results res --quiet)
(cd "$work" && run_logged 20 "$BIN" status gpu-sweep --results res --json)
(cd "$work" && cp res/palisweep.sqlite "$OUT/gpu-sweep.sqlite" 2>/dev/null)

# 3c. `rerun` of a CUDA trial: deterministic algorithms on, compared within
#     the stated tolerance (exit 0 when it reproduces).
first_trial=$(cd "$work" && ls res/gpu-sweep/trials 2>/dev/null | head -n 1)
if [ -n "$first_trial" ]; then
    # One rerun (each one trains again): its JSON to rerun.json, stderr to the log.
    log "rerun $first_trial"
    (cd "$work" && timeout --kill-after=10 90 "$BIN" rerun "$first_trial" --results res --json \
        >"$OUT/rerun.json" 2>>"$LOG")
    log "rerun exit $?"
    cat "$OUT/rerun.json" >>"$LOG"
else
    log "no trial to rerun"
fi

# 4. Random real-size 3B checkpoints: the body once, one folder per resolution.
for res in 224 448 896; do
    run_logged 240 "$BIN" bench --checkpoint "$PRESET" --size 3b --resolution "$res" \
        --cache "$CACHE" --prepare-only
done
du -sh "$CACHE"/bench/* >>"$LOG" 2>&1

# Runs "$@" (a benchmark) under the smaller of LIMIT seconds and what is
# left of the budget, appending its stdout to JSONL; skipped when under
# 45 s are left.
budgeted() {
    local limit=$1 jsonl=$2
    shift 2
    local remaining=$((BUDGET_S - (SECONDS - STARTED)))
    if [ "$remaining" -lt 45 ]; then
        log "skipped (budget ${BUDGET_S}s): $*"
        return
    fi
    [ "$limit" -le "$remaining" ] || limit=$remaining
    log "$*"
    timeout --kill-after=10 "$limit" "$@" >>"$jsonl" 2>>"$LOG"
    local rc=$?
    [ $rc -eq 0 ] || log "exit $rc"
}

# 5. Benchmarks: one process each, JSON rows appended to bench.jsonl.
bench() {
    local limit=$1
    shift
    budgeted "$limit" "$JSONL" "$BIN" bench --checkpoint "$PRESET" --size "${SIZE:-3b}" \
        --cache "${BENCH_CACHE:-$CACHE}" --device "$DEVICE" --json "$@"
}

# transformers + PEFT (scripts/bench/hf_bench.py) on the checkpoint and the
# batch palisweep dumped, JSON rows appended to hf.jsonl.
hf_bench() {
    local limit=$1
    shift
    budgeted "$limit" "$HF_JSONL" "$HF_PYTHON" scripts/bench/hf_bench.py --device "$DEVICE" "$@"
}

# 5a. The goal rows first (3B LoRA at 224 and 448 px), each beside
#     transformers + PEFT on the same checkpoint and batch: eager, its mix
#     (Gemma 2 eager, SigLIP sdpa) and flex_attention in Gemma 2.
steps=(--warmup 2 --steps 5)
for res in 224 448; do
    batch=$work/batch-$res.safetensors
    bench 90 --resolution $res --batch 4 --method lora --dump-batch "$batch" "${steps[@]}"
    if [ -n "$HF_PYTHON" ] && [ -f "$batch" ]; then
        ckpt=$("$BIN" bench --checkpoint "$PRESET" --size 3b --resolution $res --cache "$CACHE" \
            --prepare-only 2>>"$LOG" | tail -n 1)
        for attn in mix flex-mix eager; do
            hf_bench 120 --checkpoint "$ckpt" --batch-file "$batch" --method lora --mode train \
                --attn $attn "${steps[@]}"
        done
    else
        log "no transformers + PEFT rows at $res px: no python for them (.gpu-venv, .gpu-wheels, HF_PYTHON) or no batch from palisweep's row"
    fi
done
# 5b. The other H200 rows.
for res in 224 448; do
    for method in lora qlora; do
        for gc in "" --gradient-checkpointing; do
            [ "$method$gc" = lora ] && continue # 5a ran it
            bench 100 --resolution $res --batch 4 --method $method $gc "${steps[@]}"
        done
    done
done
bench 150 --resolution 896 --batch 2 --method qlora --gradient-checkpointing "${steps[@]}"
# The eager reference at 448 px, where its scores are most of the memory.
for method in lora qlora; do
    bench 100 --resolution 448 --batch 4 --method $method --attention eager "${steps[@]}"
done

# 5c. 10B@448 and 28B@224 QLoRA. Their bf16 checkpoints (about 20 and 56 GB)
#     do not fit the disk beside the 3B ones: each is written to tmpfs
#     (memory) and deleted after its row.
df -h "$(dirname "$BIG_CACHE")" >>"$LOG" 2>&1
for big in "10b 448" "28b 224"; do
    read -r size res <<<"$big"
    if [ $((BUDGET_S - (SECONDS - STARTED))) -lt 120 ]; then
        log "skipped (budget ${BUDGET_S}s): $size@$res QLoRA"
        continue
    fi
    mkdir -p "$BIG_CACHE"
    if run_logged 240 "$BIN" bench --checkpoint "$PRESET" --size "$size" --resolution "$res" \
        --cache "$BIG_CACHE" --prepare-only; then
        SIZE=$size BENCH_CACHE=$BIG_CACHE bench 150 --resolution "$res" --batch 4 --method qlora \
            "${steps[@]}"
    fi
    rm -rf "$BIG_CACHE"
done

log "done: $(wc -l <"$JSONL") bench rows, $(wc -l <"$HF_JSONL") transformers + PEFT rows"
# A compact table for the log's reader.
python3 - "$JSONL" "$HF_JSONL" <<'PY' | tee -a "$LOG"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
print(f"{'mode':8}{'method':7}{'attn':6}{'gc':4}{'res':>5}{'batch':>6}{'seq':>6}{'step_ms':>9}{'tok/s':>9}{'MFU%':>7}{'peakGPU':>9}{'est':>8}{'err%':>7}")
for r in rows:
    res = r["checkpoint"].rstrip("/").split("-")[-2] if "-" in r["checkpoint"] else "?"
    f = lambda v, fmt: format(v, fmt) if isinstance(v, (int, float)) else "-"
    print(f"{r['mode']:8}{r['method']:7}{r.get('attention', 'eager')[:5]:6}{('y' if r['gradient_checkpointing'] else 'n'):4}{res:>5}{r['batch']:>6}{r['seq_len']:>6}"
          f"{f(r['step_ms'], '.1f'):>9}{f(r['tokens_per_s'], '.0f'):>9}{f(r['mfu'] and 100 * r['mfu'], '.1f'):>7}"
          f"{f(r['peak_gpu_mb'], '.0f'):>9}{f(r['est_memory_mb'], '.0f'):>8}{f(r['est_error_pct'], '+.1f'):>7}")
hf = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
for h in hf:
    ours = [r for r in rows if r["mode"] == "train" and r["method"] == "lora" and not r["gradient_checkpointing"]
            and r.get("attention", "eager") == "memory_efficient" and r["seq_len"] == h["seq_len"]
            and r["batch"] == h["batch"]]
    ratio = ours[0]["tokens_per_s"] / h["tokens_per_s"] if ours and h.get("tokens_per_s") else None
    f = lambda v, fmt: format(v, fmt) if isinstance(v, (int, float)) else "-"
    print(f"HF {h['attn']:9}seq {h['seq_len']:>5} batch {h['batch']} step {f(h['step_ms'], '.1f'):>8} ms"
          f"  tok/s {f(h['tokens_per_s'], '.0f'):>7}  peakGPU {f(h.get('peak_gpu_mb'), '.0f'):>7}"
          f"  palisweep/HF tokens/s {f(ratio, '.2f')}")
PY
