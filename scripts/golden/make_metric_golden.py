#!/usr/bin/env python3
"""Golden values for palisweep's task metrics, from the reference
implementations themselves:

  tests/golden/metrics/bleu.json      sacrebleu.corpus_bleu(hyps, [refs]) (defaults)
  tests/golden/metrics/coco_map.json  pycocotools COCOeval (bbox) stats[0], stats[1]

Run it with the pinned venv (see tests/golden/README.md, "Metric golden values"):

  python3 -m venv .venv-metrics
  .venv-metrics/bin/pip install -r scripts/golden/metrics-requirements.txt
  .venv-metrics/bin/python scripts/golden/make_metric_golden.py

Deterministic (fixed seed, no clock): two runs give byte-identical files.
"""

from __future__ import annotations

import contextlib
import io
import json
import platform
import random
import sys
from importlib.metadata import version
from pathlib import Path

import sacrebleu
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "golden" / "metrics"
PINNED = {"sacrebleu": "2.5.1", "pycocotools": "2.0.11", "numpy": "2.4.6"}
SEED = 20260520


def versions() -> dict[str, str]:
    got = {name: version(name) for name in PINNED}
    for name, want in PINNED.items():
        if got[name] != want:
            sys.exit(f"metric golden: {name} {got[name]} is installed, {want} is pinned")
    return {"python": platform.python_version(), **got}


def write(name: str, payload: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, ensure_ascii=False, indent=1) + "\n"
    (OUT / name).write_text(text, encoding="utf-8")
    print(f"metric golden: wrote {OUT / name}")


# ---------------------------------------------------------------- BLEU

WORDS = [
    "the", "a", "cat", "dog", "sat", "on", "mat", "Pallet", "manifest", "total",
    "invoice", "café", "日本語", "naïve", "well-known", "it's", "don't", "e.g.",
    "U.S.A.", "3.14", "1,000", "5-6", "10-", "(ok)", "[x]", "{y}", "a/b", "x@y",
    "50%", "$20", "#7", "&amp;", "&lt;b&gt;", "&quot;hi&quot;", "&amp;lt;", "<skipped>",
    "end.", "end,", "yes!", "why?", "a:b", "a;b", "~", "`q`", "^", "_", "|",
    "\\", "'quoted'", "--", "...", ".5", ",5", "5.", "5,", "x.y", "1.a", "a.1",
]
SPACES = [" ", " ", " ", " ", "  ", "\t", "\n", "-\n", "\u00a0", "\u2003", "\x1c", "\r\n"]


def sentence(rng: random.Random, lo: int, hi: int) -> str:
    n = rng.randint(lo, hi)
    out = []
    for i in range(n):
        out.append(rng.choice(WORDS))
        if i + 1 < n:
            out.append(rng.choice(SPACES))
    text = "".join(out)
    if rng.random() < 0.15:
        text = rng.choice([" ", "\t", "\n", "  "]) + text
    if rng.random() < 0.15:
        text += rng.choice([" ", "\t", "\n", "\x1f", "\u3000"])
    return text


def edit(rng: random.Random, ref: str) -> str:
    """A hypothesis near a reference: drop, swap or replace some words."""
    words = ref.split(" ")
    for _ in range(rng.randint(0, 3)):
        if not words:
            break
        i = rng.randrange(len(words))
        op = rng.random()
        if op < 0.4:
            del words[i]
        elif op < 0.7:
            words[i] = rng.choice(WORDS)
        else:
            j = rng.randrange(len(words))
            words[i], words[j] = words[j], words[i]
    return " ".join(words)


def bleu_cases(rng: random.Random) -> list[dict]:
    fixed = [
        ("exact, long", ["the cat sat on the mat today ."], ["the cat sat on the mat today ."]),
        ("exact, short: no 4-grams", ["a cat"], ["a cat"]),
        ("empty prediction", [""], ["the cat sat on the mat"]),
        ("all empty predictions", ["", " "], ["the cat sat on the mat", "a dog ran"]),
        ("empty reference", ["the cat sat on the mat"], [""]),
        ("no match", ["one two three four five"], ["six seven eight nine ten"]),
        ("unigrams only", ["mat the on sat cat"], ["the cat sat on the mat"]),
        ("short hypothesis", ["the cat sat on"], ["the cat sat on the mat by the door"]),
        ("long hypothesis", ["the cat sat on the mat by the door and then slept"], ["the cat sat on the mat"]),
        ("numbers and punctuation", ["Total: 1,000.50 USD (approx.)"], ["Total: 1,000.50 USD (approx)."]),
        ("entities", ["&quot;a&quot; &amp; b &lt;c&gt; d"], ['"a" & b <c> d']),
        ("hyphen newline", ["well-\nknown cat sat on mats"], ["wellknown cat sat on mats"]),
        ("digit dash", ["pages 5-6 and 7-8 of 10"], ["pages 5 - 6 and 7 - 8 of 10"]),
        ("repeated words clip", ["the the the the the the"], ["the cat sat on the mat"]),
        ("trailing whitespace", ["the cat sat on the mat \t\n"], ["  the cat sat on the mat"]),
    ]
    cases = [{"name": n, "hypotheses": h, "references": r} for n, h, r in fixed]
    for k in range(30):
        size = rng.randint(1, 12)
        refs = [sentence(rng, 1, 14) for _ in range(size)]
        hyps = []
        for ref in refs:
            roll = rng.random()
            if roll < 0.1:
                hyps.append("")
            elif roll < 0.25:
                hyps.append(ref)
            elif roll < 0.35:
                hyps.append(sentence(rng, 1, 3))
            elif roll < 0.45:
                hyps.append(sentence(rng, 1, 14))
            else:
                hyps.append(edit(rng, ref))
        cases.append({"name": f"random {k}", "hypotheses": hyps, "references": refs})
    tokenizer = Tokenizer13a()
    for case in cases:
        score = sacrebleu.corpus_bleu(case["hypotheses"], [case["references"]])
        case["sacrebleu_score"] = score.score
        case["bleu"] = score.score / 100.0
        case["counts"] = score.counts
        case["totals"] = score.totals
        case["sys_len"] = score.sys_len
        case["ref_len"] = score.ref_len
    texts = sorted({t for c in cases for t in c["hypotheses"] + c["references"]})
    tokens = [{"text": t, "tokens": tokenizer(t.rstrip()).split()} for t in texts]
    return cases, tokens


# ---------------------------------------------------------------- COCO mAP

LABELS = ["cat", "dog", "traffic light", "person"]


def loc(obj: tuple[int, int, int, int, str]) -> str:
    y1, x1, y2, x2, label = obj
    return f"<loc{y1:04d}><loc{x1:04d}><loc{y2:04d}><loc{x2:04d}> {label}"


def random_box(rng: random.Random) -> tuple[int, int, int, int]:
    y1, x1 = rng.randint(0, 900), rng.randint(0, 900)
    # Some zero-height or zero-width boxes; never inverted.
    h = 0 if rng.random() < 0.03 else rng.randint(1, 1023 - y1)
    w = 0 if rng.random() < 0.03 else rng.randint(1, 1023 - x1)
    return y1, x1, y1 + h, x1 + w


def jitter(rng: random.Random, box, scale: int):
    y1, x1, y2, x2 = box
    d = [rng.randint(-scale, scale) for _ in range(4)]
    ny1, nx1 = min(max(y1 + d[0], 0), 1023), min(max(x1 + d[1], 0), 1023)
    ny2, nx2 = min(max(y2 + d[2], ny1), 1023), min(max(x2 + d[3], nx1), 1023)
    return ny1, nx1, ny2, nx2


def random_detection_case(rng: random.Random, many: bool) -> list[dict]:
    examples = []
    for _ in range(rng.randint(1, 8)):
        refs = [(*random_box(rng), rng.choice(LABELS)) for _ in range(rng.randint(0, 6))]
        preds = []
        for ref in refs:
            if rng.random() < 0.8:
                scale = rng.choice([0, 2, 10, 30, 80])
                label = ref[4] if rng.random() < 0.9 else rng.choice(LABELS + ["cow"])
                preds.append((*jitter(rng, ref[:4], scale), label))
                if rng.random() < 0.15:  # a duplicate
                    preds.append((*jitter(rng, ref[:4], 5), ref[4]))
        for _ in range(rng.randint(0, 3)):  # false positives
            preds.append((*random_box(rng), rng.choice(LABELS + ["cow"])))
        if many and rng.random() < 0.5:  # past COCO's 100 detections per image and class
            ref = refs[0] if refs else (*random_box(rng), "cat")
            preds.extend((*jitter(rng, ref[:4], 40), ref[4]) for _ in range(rng.randint(95, 140)))
        rng.shuffle(preds)
        examples.append({"references": refs, "predictions": preds})
    return examples


def fixed_detection_cases() -> list[tuple[str, list[dict]]]:
    a, b = (0, 0, 100, 100), (0, 200, 100, 300)
    # The first prediction has IoU 0.6 with both references; COCO gives it the
    # later one, which leaves the earlier one to the second prediction.
    tie = {"references": [(*a, "cat"), (0, 50, 100, 150, "cat")],
           "predictions": [(0, 25, 100, 125, "cat"), (*a, "cat")]}
    return [
        ("perfect", [{"references": [(*a, "cat"), (*b, "dog")], "predictions": [(*a, "cat"), (*b, "dog")]}]),
        ("class never predicted", [{"references": [(*a, "cat"), (*b, "dog")], "predictions": [(*a, "cat"), (*b, "cow")]}]),
        ("false positive first", [{"references": [(*a, "cat")], "predictions": [(*b, "cat"), (*a, "cat")]}]),
        ("duplicate", [{"references": [(*a, "cat"), (*b, "cat")], "predictions": [(*a, "cat"), (*a, "cat")]}]),
        ("ranking across examples", [
            {"references": [(*a, "cat")], "predictions": [(*a, "cat")]},
            {"references": [(*a, "cat")], "predictions": [(*b, "cat"), (*a, "cat")]},
        ]),
        # IoU exactly 0.5, 0.75 and 0.9: on the thresholds, which match (IoU >= t).
        ("iou on thresholds", [
            {"references": [(0, 0, 100, 100, "cat")], "predictions": [(0, 0, 100, 50, "cat")]},
            {"references": [(0, 0, 100, 100, "dog")], "predictions": [(0, 0, 100, 75, "dog")]},
            {"references": [(0, 0, 100, 100, "person")], "predictions": [(0, 0, 100, 90, "person")]},
        ]),
        ("equal iou tie", [tie]),
        ("nothing predicted in one example", [
            {"references": [(*a, "cat")], "predictions": []},
            {"references": [(*b, "cat")], "predictions": [(*b, "cat")]},
        ]),
        ("over 100 per image and class", [
            {"references": [(*a, "cat")], "predictions": [(*b, "cat")] * 100 + [(*a, "cat")]},
        ]),
    ]


def coco_map(examples: list[dict]) -> tuple[float, float]:
    """stats[0] (AP@[.50:.95], maxDets 100, area all) and stats[1] (AP@.50)."""
    ref_labels = sorted({o[4] for e in examples for o in e["references"]})
    all_labels = sorted({o[4] for e in examples for o in e["references"] + e["predictions"]})
    cat_id = {label: i + 1 for i, label in enumerate(all_labels)}

    def xywh(o):  # loc bins used as pixels of a 1024 x 1024 image: IoU is the same
        y1, x1, y2, x2 = o[:4]
        return [x1, y1, x2 - x1, y2 - y1]

    images = [{"id": i + 1, "width": 1024, "height": 1024} for i in range(len(examples))]
    anns, dets = [], []
    for i, e in enumerate(examples):
        for o in e["references"]:
            box = xywh(o)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cat_id[o[4]],
                         "bbox": box, "area": box[2] * box[3], "iscrowd": 0})
        for rank, o in enumerate(e["predictions"]):
            # palisweep ranks by position in the output, ties to the earlier
            # example: COCOeval's stable (mergesort) sort over images in id order.
            dets.append({"image_id": i + 1, "category_id": cat_id[o[4]], "bbox": xywh(o),
                         "score": 1.0 - rank / 1000.0})
    gt = COCO()
    # Only reference classes are evaluated; other predicted labels drop out.
    gt.dataset = {"images": images, "annotations": anns,
                  "categories": [{"id": cat_id[l], "name": l} for l in ref_labels]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        dt = gt.loadRes(dets)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return float(ev.stats[0]), float(ev.stats[1])


def detection_cases(rng: random.Random) -> list[dict]:
    cases = [(name, ex) for name, ex in fixed_detection_cases()]
    k = 0
    while k < 40:
        examples = random_detection_case(rng, many=k % 8 == 7)
        has_refs = any(e["references"] for e in examples)
        has_preds = any(e["predictions"] for e in examples)
        ranks_fit = all(len(e["predictions"]) < 1000 for e in examples)
        if has_refs and has_preds and ranks_fit:  # COCO needs both (loadRes of [] fails)
            cases.append((f"random {k}", examples))
            k += 1
    out = []
    for name, examples in cases:
        map50_95, map50 = coco_map(examples)
        out.append({
            "name": name,
            "examples": [{"prediction": " ; ".join(map(loc, e["predictions"])),
                          "reference": " ; ".join(map(loc, e["references"]))} for e in examples],
            "map50_95": map50_95,
            "map50": map50,
        })
    return out


def main() -> None:
    vers = versions()
    rng = random.Random(SEED)
    bleu, tokens = bleu_cases(rng)
    write("bleu.json", {
        "about": "sacrebleu.corpus_bleu(hypotheses, [references]) with its defaults; "
                 "bleu = score / 100; tokens = Tokenizer13a()(text.rstrip()).split()",
        "versions": vers, "seed": SEED, "cases": bleu, "tokenizer_13a": tokens,
    })
    params = COCOeval(iouType="bbox").params
    write("coco_map.json", {
        "about": "pycocotools COCOeval(gt, dt, 'bbox'): map50_95 = stats[0], map50 = stats[1]; "
                 "loc bins as pixels of a 1024x1024 image, score = 1 - rank / 1000",
        "versions": vers, "seed": SEED,
        # repr strings: parsed exactly (correctly rounded) on the Rust side.
        "iou_thresholds": [repr(float(t)) for t in params.iouThrs],
        "recall_thresholds": [repr(float(r)) for r in params.recThrs],
        "max_detections": int(params.maxDets[-1]),
        "cases": detection_cases(rng),
    })


if __name__ == "__main__":
    main()
