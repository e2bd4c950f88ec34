#!/usr/bin/env bash
# Measures the peak RSS of `palisweep bench` training on the CPU for every
# preset × size × resolution × method, one process per configuration (so
# each peak is its own), and writes the memory estimator's calibration data:
#
#   cargo build --release
#   scripts/bench/calibrate.sh            # writes src/estimate/calibration/cpu-memory_efficient-tcmalloc.json
#   PALISWEEP_ALLOCATOR=system scripts/bench/calibrate.sh   # cpu-memory_efficient-glibc.json
#   ATTENTION=eager scripts/bench/calibrate.sh   # cpu-eager-tcmalloc.json
#
# A configuration whose RSS passes the cap is killed and recorded with the
# reason, then retried at half the batch (down to 1): nothing is skipped
# silently. Environment (defaults in brackets):
#   BIN        the binary [target/release/palisweep, or $CARGO_TARGET_DIR's]
#   ATTENTION  model.attention: memory_efficient | eager [memory_efficient]
#   OUT        the data file [src/estimate/calibration/cpu-$ATTENTION-$ALLOCATOR.json,
#              the allocator the rows ran with]
#   PRESETS    [tiny small]   SIZES [3b 10b 28b]   RESOLUTIONS [224 448 896]
#   METHODS    [lora qlora]   BATCH [4, the spec's train.batch_size default]
#   THREADS    torch threads [2]
#   RSS_CAP_MIB  kill a run past this resident size [16384: the machine has
#              24 GiB, shared with its other processes]
#   TIME_CAP_S   kill a run after this long [900]
#   CACHE      random checkpoints [results/.cache]
#   PALISWEEP_ALLOCATOR  the CPU's malloc (src/allocator.rs) [auto: tcmalloc
#              where installed]; each row records the one it ran with
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=${BIN:-$TARGET/release/palisweep}
ATTENTION=${ATTENTION:-memory_efficient}
OUT=${OUT:-}
read -ra PRESETS <<<"${PRESETS:-tiny small}"
read -ra SIZES <<<"${SIZES:-3b 10b 28b}"
read -ra RESOLUTIONS <<<"${RESOLUTIONS:-224 448 896}"
read -ra METHODS <<<"${METHODS:-lora qlora}"
BATCH=${BATCH:-4}
THREADS=${THREADS:-2}
RSS_CAP_MIB=${RSS_CAP_MIB:-16384}
TIME_CAP_S=${TIME_CAP_S:-900}
CACHE=${CACHE:-$ROOT/results/.cache}
# One warm-up and one timed step: the second step is the first with the
# optimiser state allocated, the steady-state peak.
STEPS=(--warmup 1 --steps 1)

[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release first" >&2; exit 2; }
command -v jq >/dev/null || { echo "calibrate.sh needs jq" >&2; exit 2; }
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ROWS=$WORK/rows.jsonl
: >"$ROWS"
STARTED=$SECONDS

torch_version() {
    sed -n "s/^__version__ = '\(.*\)'/\1/p" "$ROOT/.venv/libtorch/version.py" 2>/dev/null | head -1
}

# Runs one bench in the background and polls its resident size, killing
# it past the caps. Prints `ok`, `over_rss_cap PEAK_MIB`, `over_time_cap`
# or `failed RC`; the JSON row, if any, is in $WORK/out.
measure() {
    "$BIN" bench "$@" --mode train --device cpu --threads "$THREADS" --cache "$CACHE" \
        --attention "$ATTENTION" \
        --json "${STEPS[@]}" >"$WORK/out" 2>"$WORK/err" &
    local pid=$! start=$SECONDS seen=0 kib
    while kill -0 "$pid" 2>/dev/null; do
        kib=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null)
        kib=${kib:-0}
        [ "$kib" -gt "$seen" ] && seen=$kib
        if [ "$kib" -gt $((RSS_CAP_MIB * 1024)) ]; then
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            echo "over_rss_cap $((seen / 1024))"
            return
        fi
        if [ $((SECONDS - start)) -gt "$TIME_CAP_S" ]; then
            kill -KILL "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            echo "over_time_cap"
            return
        fi
        sleep 0.2
    done
    wait "$pid"
    local rc=$?
    if [ $rc -eq 0 ] && [ -s "$WORK/out" ]; then echo ok; else echo "failed $rc"; fi
}

for preset in "${PRESETS[@]}"; do
    for size in "${SIZES[@]}"; do
        for res in "${RESOLUTIONS[@]}"; do
            # Written before the timed runs: its RSS is not a trial's.
            "$BIN" bench --checkpoint "$preset" --size "$size" --resolution "$res" \
                --cache "$CACHE" --prepare-only >/dev/null || exit 1
            for method in "${METHODS[@]}"; do
                batch=$BATCH
                while :; do
                    t0=$SECONDS
                    result=$(measure --checkpoint "$preset" --size "$size" --resolution "$res" \
                        --method "$method" --batch "$batch")
                    secs=$((SECONDS - t0))
                    status=${result%% *}
                    detail=${result#"$status"}
                    detail=${detail# }
                    base=$(jq -nc --arg p "$preset" --arg s "$size" --argjson r "$res" \
                        --arg m "$method" --argjson b "$batch" --argjson t "$secs" \
                        --arg a "$ATTENTION" \
                        '{preset: $p, size: $s, resolution: $r, method: $m, attention: $a,
                          gradient_checkpointing: false, batch: $b, wall_s: $t}')
                    case $status in
                    ok)
                        jq -c --argjson base "$base" '$base + {
                            status: "ok",
                            seq_len, prefix_tokens, suffix_tokens, dtype, allocator,
                            measured_mib: (.peak_rss_mb * 10 | round / 10),
                            estimate_mib_then: (.est_memory_mb * 10 | round / 10)}' \
                            "$WORK/out" >>"$ROWS"
                        ;;
                    over_rss_cap)
                        jq -c --argjson base "$base" --argjson cap "$RSS_CAP_MIB" \
                            --argjson seen "$detail" '$base + {status: "over_rss_cap",
                            note: "killed when its RSS passed the \($cap) MiB cap (seen \($seen) MiB)"}' \
                            <<<null >>"$ROWS"
                        ;;
                    over_time_cap)
                        jq -c --argjson base "$base" --argjson cap "$TIME_CAP_S" \
                            '$base + {status: "over_time_cap", note: "killed after \($cap) s"}' \
                            <<<null >>"$ROWS"
                        ;;
                    *)
                        jq -c --argjson base "$base" --arg err "$(tail -c 300 "$WORK/err")" \
                            '$base + {status: "failed", note: $err}' <<<null >>"$ROWS"
                        ;;
                    esac
                    echo "[+$((SECONDS - STARTED))s] $preset $size@$res $method batch $batch: $result (${secs}s)" >&2
                    # Too large for the cap: the same configuration at half the batch.
                    if [ "$status" = over_rss_cap ] && [ "$batch" -gt 1 ]; then
                        batch=$((batch / 2))
                        continue
                    fi
                    break
                done
            done
        done
    done
done

commit=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || echo unknown)
dirty=$([ -n "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] && echo true || echo false)
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
mem=$(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
allocator=$(jq -r 'select(.allocator) | .allocator' "$ROWS" | head -1)
OUT=${OUT:-$ROOT/src/estimate/calibration/cpu-$ATTENTION-${allocator:-unknown}.json}
mkdir -p "$(dirname "$OUT")"
jq -n --slurpfile rows "$ROWS" \
    --arg commit "$commit" --argjson dirty "$dirty" --arg torch "$(torch_version)" \
    --arg machine "$(nproc) cores of an ${cpu:-unknown CPU}, $mem, $(uname -sr)" \
    --arg date "$(date -u +%Y-%m-%dT%H:%MZ)" --argjson threads "$THREADS" \
    --argjson cap "$RSS_CAP_MIB" --argjson total "$((SECONDS - STARTED))" \
    '{
      what: "Peak RSS (VmHWM) of `palisweep bench --mode train` on the CPU, f32, one process per row; the memory estimator is tested against the rows with status ok (src/estimate/calibration.rs)",
      command: "scripts/bench/calibrate.sh",
      bench_args: "--mode train --device cpu --warmup 1 --steps 1 --json, synthetic batch, LoRA r 8 on the 7 default targets, QLoRA NF4 blocks of 64 with double quantisation",
      palisweep_commit: $commit, worktree_dirty: $dirty, torch: $torch,
      machine: $machine, date: $date, threads: $threads,
      rss_cap_mib: $cap, total_wall_s: $total,
      rows: $rows
    }' >"$OUT"
echo "wrote $OUT: $(jq '[.rows[] | select(.status == "ok")] | length' "$OUT") measured rows of $(jq '.rows | length' "$OUT") in $((SECONDS - STARTED)) s" >&2
