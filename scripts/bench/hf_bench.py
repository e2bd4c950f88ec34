"""The transformers + PEFT side of `scripts/bench/compare.sh`.

Loads a checkpoint folder that `palisweep bench` wrote (same random
weights), applies the same LoRA (rank, alpha, targets, dropout 0) through
PEFT, on a dense base or an NF4 one (bitsandbytes), and times the same
batch (`palisweep bench --dump-batch`) the way `palisweep bench` does:
forward-only evaluation under `torch.no_grad()`, then training steps
(zero_grad, loss, backward, clip to norm 1, AdamW step, read the loss).
Prints one JSON object per mode with palisweep's keys.

Pinned versions: scripts/bench/requirements.txt.
"""

import argparse
import json
import resource
import time

import torch
from safetensors.torch import load_file

# The seven default targets of palisweep (src/model/lora.rs, DEFAULT_TARGETS).
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="checkpoint folder")
    p.add_argument("--batch-file", required=True, help="palisweep bench --dump-batch output")
    p.add_argument("--method", choices=["lora", "qlora"], default="lora")
    p.add_argument("--mode", choices=["both", "train", "forward"], default="both")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16.0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--attn",
        default="eager",
        help="attn_implementation, or `mix`: the best set-up transformers 5.24 supports for "
        "PaliGemma 2 (Gemma 2 refuses sdpa for its soft-cap: eager; SigLIP: sdpa), or "
        "`flex-mix` (Gemma 2 flex_attention, SigLIP sdpa: for CUDA)",
    )
    return p.parse_args()


def peak_rss_mb():
    # Linux reports ru_maxrss in KiB; the same counter as VmHWM.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_model(args, dtype):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, PaliGemmaForConditionalGeneration

    attn = args.attn
    if attn == "mix":
        attn = {"text_config": "eager", "vision_config": "sdpa", "": "eager"}
    elif attn == "flex-mix":
        attn = {"text_config": "flex_attention", "vision_config": "sdpa", "": "eager"}
    kwargs = {"dtype": dtype, "attn_implementation": attn}
    if args.method == "qlora":
        # palisweep's defaults: NF4, double quantisation, blocks of 64.
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = {"": args.device}
    model = PaliGemmaForConditionalGeneration.from_pretrained(args.checkpoint, **kwargs)
    if args.method == "lora":
        model = model.to(args.device)
    else:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=args.gradient_checkpointing
        )
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    config = LoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha,
        lora_dropout=0.0,
        target_modules=TARGETS,
        bias="none",
    )
    return get_peft_model(model, config)


def nf4_bytes_per_param(model):
    """NF4 storage per quantised weight: packed codes, absmax (or its 8-bit
    codes, their absmax, code book and offset when double-quantised)."""
    import bitsandbytes as bnb

    params = 0
    stored = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            state = module.weight.quant_state
            params += state.shape.numel()
            stored += module.weight.data.nbytes + state.absmax.nbytes
            if state.nested:
                stored += state.state2.absmax.nbytes + state.state2.code.nbytes + state.offset.nbytes
    return stored / params if params else None


def timed(warmup, steps, device, step):
    first = None
    for _ in range(warmup):
        loss = step()
        first = loss if first is None else first
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    last = None
    for _ in range(steps):
        last = step()
        first = last if first is None else first
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps, first, last


def main():
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.device == "cpu" else torch.bfloat16
    model = load_model(args, dtype)
    batch = load_file(args.batch_file)
    inputs = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        "token_type_ids": batch["token_type_ids"],
        "pixel_values": batch["pixel_values"].to(dtype),
        "labels": batch["labels"],
    }
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    rows, length = inputs["input_ids"].shape
    tokens = int(batch["attention_mask"].sum())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base = {
        "impl": "transformers+peft",
        "method": args.method,
        "gradient_checkpointing": args.gradient_checkpointing,
        "checkpoint": args.checkpoint,
        "device": args.device,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "batch": rows,
        "seq_len": length,
        "tokens_per_batch": tokens,
        "warmup": args.warmup,
        "steps": args.steps,
        "trainable_params": trainable,
        "nf4_bytes_per_param": nf4_bytes_per_param(model) if args.method == "qlora" else None,
        "versions": {
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
            "peft": __import__("peft").__version__,
        },
    }

    def report(mode, seconds, first, last):
        row = dict(base, mode=mode, step_ms=1000.0 * seconds)
        row["samples_per_s"] = rows / seconds
        row["tokens_per_s"] = tokens / seconds
        row["peak_rss_mb"] = peak_rss_mb()
        if args.device.startswith("cuda"):
            # What the caching allocator reserved: the nearest to NVML's count.
            row["peak_gpu_mb"] = torch.cuda.max_memory_reserved() / 2**20
        row["attn"] = args.attn
        row["loss_first"], row["loss_last"] = first, last
        print(json.dumps(row), flush=True)

    if args.mode in ("both", "forward"):
        model.eval()

        def forward():
            with torch.no_grad():
                return model(**inputs).loss.item()

        report("forward", *timed(args.warmup, args.steps, args.device, forward))
    if args.mode in ("both", "train"):
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)

        def train():
            optimizer.zero_grad(set_to_none=True)
            loss = model(**inputs).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            return loss.item()

        report("train", *timed(args.warmup, args.steps, args.device, train))


if __name__ == "__main__":
    main()
