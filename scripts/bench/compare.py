"""Runs `palisweep bench` and the transformers + PEFT twin (hf_bench.py) on
the same checkpoint, batch, method, steps and threads, alternating the two
`--repeats` times, and prints the medians side by side with the ratio
palisweep / HF. Standard library only: run it with any python3; the HF side
runs with --python (default: .venv-golden, the pinned versions).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small", help="tiny | small | a checkpoint folder")
    p.add_argument("--size", default="3b")
    p.add_argument("--resolution", default="224")
    p.add_argument("--method", choices=["lora", "qlora"], default="lora")
    p.add_argument("--mode", choices=["both", "train", "forward"], default="both")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--attention", choices=["memory_efficient", "eager"], default="memory_efficient",
                   help="palisweep's model.attention")
    p.add_argument("--hf-attn", default="eager",
                   help="transformers' attn_implementation, or `mix` (Gemma 2 eager, SigLIP sdpa: "
                        "the best transformers 5.24 supports for PaliGemma 2)")
    p.add_argument("--hf-malloc", choices=["glibc", "tcmalloc"], default="glibc",
                   help="the HF process's malloc: glibc (what `python` runs with) or tcmalloc "
                        "preloaded (PyTorch's CPU tuning advice). palisweep's is its own: tcmalloc "
                        "where installed, or PALISWEEP_ALLOCATOR in the environment")
    p.add_argument("--cache", default=os.path.join(ROOT, "results", ".cache"))
    p.add_argument("--palisweep", default=os.path.join(ROOT, "target", "release", "palisweep"))
    p.add_argument("--python", default=os.path.join(ROOT, ".venv-golden", "bin", "python"))
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    return p.parse_args()


def tcmalloc_path():
    """The installed tcmalloc library, as src/allocator.rs looks for it."""
    for path in ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
                 "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
                 "/usr/lib64/libtcmalloc_minimal.so.4", "/usr/lib/libtcmalloc_minimal.so.4",
                 "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4", "/usr/lib64/libtcmalloc.so.4"):
        if os.path.exists(path):
            return path
    sys.exit("--hf-malloc tcmalloc: no tcmalloc installed (apt-get install libtcmalloc-minimal4)")


def rows_of(command, env=None):
    result = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def main():
    args = parse_args()
    common = ["--method", args.method, "--steps", str(args.steps),
              "--warmup", str(args.warmup), "--threads", str(args.threads)]
    if args.gradient_checkpointing:
        common.append("--gradient-checkpointing")
    modes = ["forward", "train"] if args.mode == "both" else [args.mode]
    # Both sides get the same thread count and nothing else competing for it.
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    hf_env = dict(env)
    if args.hf_malloc == "tcmalloc":
        hf_env["LD_PRELOAD"] = ":".join(filter(None, [tcmalloc_path(), env.get("LD_PRELOAD")]))
        hf_env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] = str(1 << 60)
    results = {"palisweep": [], "transformers+peft": []}
    # One process per tool and mode: each row's peak memory is its own, and
    # no mode inherits another's state (bitsandbytes repacks NF4 weights for
    # CPU inference on the first eval forward, after which its training
    # path fails).
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = os.path.join(tmp, "batch.safetensors")
        for _ in range(args.repeats):
            for mode in modes:
                ours = rows_of([args.palisweep, "bench", "--checkpoint", args.preset, "--size", args.size,
                                "--resolution", args.resolution, "--batch", str(args.batch),
                                "--device", "cpu", "--cache", args.cache, "--json", "--mode", mode,
                                "--dump-batch", batch_file, "--attention", args.attention,
                                *common], env)
                results["palisweep"] += ours
                theirs = rows_of([args.python, os.path.join(ROOT, "scripts", "bench", "hf_bench.py"),
                                  "--checkpoint", ours[0]["checkpoint"], "--batch-file", batch_file,
                                  "--mode", mode, "--attn", args.hf_attn, *common], hf_env)
                results["transformers+peft"] += theirs

    summary = {"config": vars(args) | {"seq_len": results["palisweep"][0]["seq_len"],
                                       "palisweep_malloc": results["palisweep"][0].get("allocator")},
               "rows": []}
    for mode in ("forward", "train"):
        medians = {}
        for impl, rows in results.items():
            picked = [r for r in rows if r["mode"] == mode]
            if not picked:
                continue
            medians[impl] = {key: statistics.median(r[key] for r in picked)
                             for key in ("step_ms", "samples_per_s", "tokens_per_s", "peak_rss_mb")}
            medians[impl]["runs"] = [round(r["samples_per_s"], 4) for r in picked]
            # The best run: on a shared machine, the least disturbed one.
            medians[impl]["best_samples_per_s"] = max(r["samples_per_s"] for r in picked)
            nf4 = picked[0].get("nf4_bytes_per_param")
            if nf4:
                medians[impl]["nf4_bytes_per_param"] = nf4
            summary["rows"].append({"impl": impl, "mode": mode, **medians[impl]})
        if len(medians) == 2:
            ratio = medians["palisweep"]["samples_per_s"] / medians["transformers+peft"]["samples_per_s"]
            best = (medians["palisweep"]["best_samples_per_s"]
                    / medians["transformers+peft"]["best_samples_per_s"])
            summary["rows"].append({"impl": "ratio palisweep/HF", "mode": mode, "samples_per_s": ratio,
                                    "best_samples_per_s": best})

    if args.json:
        print(json.dumps(summary))
        return
    c = summary["config"]
    print(f"{c['preset']} {c['size']}@{c['resolution']} {c['method']}"
          f"{' +gc' if c['gradient_checkpointing'] else ''}, palisweep {c['attention']} vs"
          f" transformers {c['hf_attn']}, malloc {c['palisweep_malloc']} vs {c['hf_malloc']},"
          f" batch {c['batch']} × {c['seq_len']} tokens,"
          f" {c['threads']} threads, {c['steps']} steps after {c['warmup']}, medians of {c['repeats']}")
    print(f"{'impl':20}{'mode':9}{'step ms':>10}{'samples/s':>11}{'best':>9}{'tokens/s':>10}{'peak RSS MiB':>14}")
    for r in summary["rows"]:
        if r["impl"].startswith("ratio"):
            print(f"{r['impl']:20}{r['mode']:9}{'':>10}{r['samples_per_s']:>10.2f}x{r['best_samples_per_s']:>8.2f}x")
        else:
            print(f"{r['impl']:20}{r['mode']:9}{r['step_ms']:>10.1f}{r['samples_per_s']:>11.3f}"
                  f"{r['best_samples_per_s']:>9.3f}{r['tokens_per_s']:>10.1f}{r['peak_rss_mb']:>14.0f}")
    print("runs (samples/s):", {f"{r['impl']}/{r['mode']}": r["runs"] for r in summary["rows"] if "runs" in r})
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    sys.exit(main())
