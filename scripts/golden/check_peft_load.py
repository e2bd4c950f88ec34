#!/usr/bin/env python3
"""Dev tool (never run by CI): loads a LoRA adapter that palisweep wrote onto
the Hugging Face transformers model with real PEFT, strictly, and prints the
token-weighted validation loss, to compare with `palisweep eval --adapter`.

    .venv-golden/bin/python scripts/golden/check_peft_load.py ADAPTER_DIR BASE_DIR DATA_DIR \\
        [--split valid] [--batch-size 8] [--dtype float32|bfloat16] [--processor DIR]

ADAPTER_DIR  adapter_config.json + adapter_model.safetensors (PEFT format)
BASE_DIR     a PaliGemma checkpoint folder (config.json + *.safetensors); its
             tokenizer/preprocessor files are used unless --processor is given
DATA_DIR     a Roboflow PaliGemma JSONL dataset: DATA_DIR/<split>/annotations.jsonl
             (images beside it) or DATA_DIR/_annotations.<split>.jsonl

Fails (exit 1) on: missing/unexpected/mismatched base weights; any warning
from peft/transformers while loading the adapter (missing or unexpected
adapter keys, unused weights, unknown config fields, ...); adapter tensors in
the file that the model did not take or LoRA/modules_to_save weights of the
model that the file did not set (compared value by value).

Prints one JSON line on stdout: {"loss": <sum of per-token CE> / tokens,
"tokens": <supervised tokens>}. Loss = cross-entropy of logits[t] against
labels[t+1] over suffix tokens (the processor's labels, -100 elsewhere),
summed over all rows and divided by the token count, so it does not depend on
the batching. Same processor path as scripts/golden/make_golden.py:
PaliGemmaProcessor(images, text=prefixes, suffix=suffixes, padding="longest"),
right padding, eager attention, eval mode (dropout off).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path

logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # import-time notice of its CPU backend

import torch


def fail(msg: str):
    print(f"check_peft_load: FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def note(msg: str):
    print(f"check_peft_load: {msg}", file=sys.stderr, flush=True)


def locate_split(root: Path, split: str):
    nested = root / split / "annotations.jsonl"
    if nested.is_file():
        return nested, root / split
    flat = root / f"_annotations.{split}.jsonl"
    if flat.is_file():
        return flat, root
    fail(f"{root}: no {split} split ({nested} or {flat})")


def load_rows(root: Path, split: str):
    from PIL import Image

    file, images_dir = locate_split(root, split)
    rows = []
    for i, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        r = json.loads(line)
        for k in ("image", "prefix", "suffix"):
            if not isinstance(r.get(k), str):
                fail(f"{file}:{i}: missing string key {k!r}")
        with Image.open(images_dir / r["image"]) as im:
            im.load()
            img = im.copy()  # copy() keeps .info (a P image's tRNS transparency)
        rows.append((img, r["prefix"], r["suffix"]))
    if not rows:
        fail(f"{file}: no rows")
    return rows


class Captured(logging.Handler):
    def __init__(self):
        super().__init__(level=logging.WARNING)
        self.records: list[str] = []

    def emit(self, record):
        self.records.append(f"{record.name}: {record.getMessage()}")


# Warnings that say nothing about the adapter (transformers 5.24 deprecation hit through PEFT).
BENIGN = ("is_gradient_checkpointing",)


def strict_load(adapter_dir: Path, base_dir: Path, dtype):
    import transformers
    from peft import PeftModel, get_peft_model_state_dict
    from peft.utils.save_and_load import load_peft_weights
    from transformers import PaliGemmaForConditionalGeneration

    transformers.utils.logging.disable_progress_bar()
    base, info = PaliGemmaForConditionalGeneration.from_pretrained(
        str(base_dir), dtype=dtype, attn_implementation="eager", output_loading_info=True)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        if info.get(k):
            fail(f"base model {k}: {sorted(info[k])[:20]}")

    for f in ("adapter_config.json", "adapter_model.safetensors"):
        if not (adapter_dir / f).is_file():
            fail(f"{adapter_dir / f} is missing")
    handler = Captured()
    loggers = [logging.getLogger(n) for n in ("peft", "transformers")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
    except Exception as e:  # noqa: BLE001
        fail(f"PeftModel.from_pretrained raised {type(e).__name__}: {e}")
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    problems = handler.records + [f"{w.category.__name__}: {w.message}" for w in ws]
    problems = [p for p in problems if not any(b in p for b in BENIGN)]
    if problems:
        fail("warnings while loading the adapter:\n  " + "\n  ".join(problems))
    model.eval()

    # Key-by-key: what PEFT would save now must be exactly what the file holds
    # (after PEFT's own renaming of older key forms, which load_peft_weights and
    # the transformers conversion apply). Compared against the converted file.
    from peft.utils.transformers_weight_conversion import convert_peft_adapter_state_dict_for_transformers

    file_sd = load_peft_weights(str(adapter_dir), device="cpu")
    file_sd = convert_peft_adapter_state_dict_for_transformers(model, model.peft_config["default"], file_sd)
    model_sd = get_peft_model_state_dict(model)
    missing = sorted(set(model_sd) - set(file_sd))
    unexpected = sorted(set(file_sd) - set(model_sd))
    if missing or unexpected:
        fail(f"adapter keys differ: not in the file {missing[:20]}, not taken by the model {unexpected[:20]}")
    for k, v in model_sd.items():
        if not torch.equal(v.float().cpu(), file_sd[k].float().cpu()):
            fail(f"{k}: the model's value differs from the file's")
    cfg = model.peft_config["default"]
    note(f"adapter loaded: {len(model_sd)} tensors, r={cfg.r}, lora_alpha={cfg.lora_alpha}, "
         f"use_rslora={cfg.use_rslora}, modules_to_save={cfg.modules_to_save}")
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("adapter_dir", type=Path)
    ap.add_argument("base_dir", type=Path)
    ap.add_argument("data_dir", type=Path)
    ap.add_argument("--split", default="valid")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    ap.add_argument("--processor", type=Path, default=None, help="folder with the processor files "
                    "(default: BASE_DIR)")
    args = ap.parse_args()

    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    from transformers import PaliGemmaProcessor

    proc = PaliGemmaProcessor.from_pretrained(str(args.processor or args.base_dir))
    proc.tokenizer.padding_side = "right"
    model = strict_load(args.adapter_dir, args.base_dir, dtype)
    rows = load_rows(args.data_dir, args.split)
    import transformers

    transformers.utils.logging.set_verbosity_error()  # the processor's "<image> tokens inferred" notice

    loss_sum = 0.0
    tokens = 0
    for i in range(0, len(rows), args.batch_size):
        chunk = rows[i:i + args.batch_size]
        batch = proc(images=[r[0] for r in chunk], text=[r[1] for r in chunk], suffix=[r[2] for r in chunk],
                     padding="longest", return_tensors="pt")
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}
        with torch.no_grad():
            logits = model(**inputs).logits.float()
        labels = batch["labels"]
        for b in range(logits.shape[0]):
            s = torch.nn.functional.cross_entropy(logits[b, :-1], labels[b, 1:], ignore_index=-100, reduction="sum")
            loss_sum += float(s)
            tokens += int((labels[b, 1:] != -100).sum())
    if tokens == 0:
        fail("no supervised tokens")
    print(json.dumps({"loss": loss_sum / tokens, "tokens": tokens}))


if __name__ == "__main__":
    main()
