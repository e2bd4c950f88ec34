#!/usr/bin/env python3
"""Creates the tiny tokenizer, the tiny PaliGemma 2 checkpoints and the golden
fixtures that the Rust parity tests compare against.

Run it through `scripts/golden/make.sh` (which builds the pinned venv
`.venv-golden`). Every output is deterministic: running it twice gives
byte-identical files. Outputs:

  assets/tiny-tokenizer/                 tokenizer.json, tokenizer_config.json, special_tokens_map.json
  tests/golden/checkpoints/{f32,bf16,sharded,legacy}/
  tests/golden/data/{train,valid}/       Roboflow PaliGemma JSONL dataset
  tests/golden/resize/                   Pillow bicubic resize cases + a JPEG decode case
  tests/golden/values.json               processor / loss / logits / generation golden values

See tests/golden/README.md for the format.
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import itertools
import json
import math
import platform
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import PIL
import safetensors
import tokenizers
import torch
import transformers
from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, normalizers
from tokenizers.models import BPE

ROOT = Path(__file__).resolve().parents[2]
ASSETS_TOK = ROOT / "assets" / "tiny-tokenizer"
GOLDEN = ROOT / "tests" / "golden"
CKPT = GOLDEN / "checkpoints"
DATA = GOLDEN / "data"
RESIZE = GOLDEN / "resize"

PINNED = {
    "torch": "2.13.0",
    "transformers": "5.24.0",
    "pillow": "13.0.0",
    "tokenizers": "0.23.3",
    "safetensors": "0.8.0",
    "numpy": "2.4.6",
}

SEED = 20240611

# The Rust preset PaliGemmaConfig::tiny(Size::B3, Resolution::R224)
# (src/model/config.rs, fn tiny).
TINY = dict(
    text=dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,
        query_pre_attn_scalar=32,
        sliding_window=16,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        max_position_embeddings=8192,
        vocab_size=2048,
        hidden_activation="gelu_pytorch_tanh",
        attention_bias=False,
        attention_dropout=0.0,
    ),
    vision=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_channels=3,
        image_size=32,
        patch_size=8,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
        attention_dropout=0.0,
    ),
    projection_dim=64,
    image_token_index=2047,
    pad_token_id=0,
    bos_token_id=2,
    eos_token_id=1,
)
IMAGE_SIZE = TINY["vision"]["image_size"]
NUM_IMAGE_TOKENS = (IMAGE_SIZE // TINY["vision"]["patch_size"]) ** 2  # 16


def log(*args):
    print("golden:", *args, flush=True)


# ---------------------------------------------------------------------------
# environment checks
# ---------------------------------------------------------------------------


def check_environment() -> dict:
    try:
        importlib.import_module("torchvision")
    except ImportError:
        pass
    else:  # pragma: no cover
        sys.exit("golden: torchvision is installed; transformers must take its PIL path. Remove it.")
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "pillow": PIL.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
    }
    for name, want in PINNED.items():
        got = versions[name].split("+")[0]
        if got != want:
            sys.exit(f"golden: {name} {versions[name]} is installed, {want} is pinned")
    log("versions:", json.dumps(versions))
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()  # e.g. the "<image> tokens inferred" warning
    torch.manual_seed(SEED)
    random.seed(SEED)
    np.random.seed(SEED % 2**32)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    return versions


# ---------------------------------------------------------------------------
# JSON writer: pretty, but numeric lists on one line; float32 values written
# as the shortest decimal that round-trips through float32.
# ---------------------------------------------------------------------------


class F32List(list):
    """A list of float32 values (written with float32 shortest repr)."""


def _num(x) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, float):
        if not math.isfinite(x):
            raise ValueError("non-finite float")
        return repr(x)
    raise TypeError(type(x))


def _f32(x) -> str:
    v = np.float32(x)
    if not np.isfinite(v):
        raise ValueError("non-finite float")
    s = np.format_float_positional(v, unique=True, trim="-") if 1e-4 <= abs(v) < 1e7 or v == 0 else \
        np.format_float_scientific(v, unique=True, trim="-")
    assert np.float32(float(s)) == v, (s, v)
    return s


def dumps(obj, indent=0) -> str:
    pad = "  " * indent
    if isinstance(obj, F32List):
        return "[" + ", ".join(_f32(v) for v in obj) + "]"
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f'{pad}  {json.dumps(str(k))}: {dumps(v, indent + 1)}' for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(isinstance(v, (int, float, bool, np.integer)) and not isinstance(v, dict) for v in obj):
            return "[" + ", ".join(_num(v) for v in obj) + "]"
        if not obj:
            return "[]"
        items = [pad + "  " + dumps(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=False)
    if obj is None:
        return "null"
    return _num(obj)


def write_json(path: Path, obj, compact=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(obj, indent=2, ensure_ascii=False) if compact else dumps(obj)
    path.write_text(text + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------
# 1. tokenizer
# ---------------------------------------------------------------------------

COLORS = ["red", "green", "blue", "yellow", "orange", "purple", "black", "white", "grey", "pink", "brown", "cyan"]
SHAPES = ["circle", "square", "triangle", "rectangle", "star", "ellipse", "diamond", "hexagon", "line", "dot"]
PLACES = ["left", "right", "top", "bottom", "center", "corner", "middle"]
SIZES = ["small", "large", "big", "tiny"]
EXTRA_TEXT = """Each picture contains simple geometric figures painted on a plain canvas.
The training data was generated with a fixed seed so that every run produces identical files.
Fine tuning a vision language model with low rank adapters keeps the base weights frozen.
Please return the answer as valid JSON with keys for the label, the colour and the bounding box.
Objects near the border are partially hidden; outlines may be thick or thin, filled or empty.
A quick brown fox jumps over the lazy dog while the weather is sunny and warm.
Quantized weights use four bits per value with a scale for every block of sixty four numbers.
Learning rate, batch size, epochs and gradient accumulation steps are the usual hyperparameters.
Evaluation reports the mean loss over validation tokens together with exact match accuracy.
Sweeping several configurations in parallel finds a good setting faster than manual search.
Checkpoints store adapter matrices, optimizer moments, the random generator state and metrics.
"""


def tokenizer_corpus() -> str:
    lines = []
    for i, (c, s) in enumerate(itertools.product(COLORS, SHAPES)):
        c2 = COLORS[(i * 5 + 3) % len(COLORS)]
        p = PLACES[i % len(PLACES)]
        z = SIZES[i % len(SIZES)]
        lines.append(f"a {z} {c} {s} on a {c2} background in the {p}.")
        lines.append(f'{{"shape": "{s}", "color": "{c}", "size": "{z}", "count": {i % 10}}}')
        lines.append(f"detect {s} ; {SHAPES[(i + 3) % len(SHAPES)]}")
        lines.append(f"answer en what color is the {s}? {c}")
    lines += [
        "extract JSON",
        "caption en",
        "segment circle ; square",
        "describe the image",
        "There are 3 shapes: one circle, two squares and no triangles.",
        "The image shows several coloured shapes drawn with straight edges and curves.",
        "How many objects are visible? Count them from left to right, then from top to bottom.",
        "0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 255 1024",
        '{"objects": [{"label": "circle", "box": [10, 20, 30, 40]}], "width": 64, "height": 64}',
        "ocr",
        "question: which shape is the largest? answer: the rectangle",
        "Colors: red, green, blue; shapes: circle/square/triangle (and others).",
    ]
    return "\n".join(lines) + "\n" + EXTRA_TEXT


SPECIAL = ["<pad>", "<eos>", "<bos>", "<unk>"]
LOC = [f"<loc{i:04d}>" for i in range(1024)]
SEG = [f"<seg{i:03d}>" for i in range(128)]
FIRST_LOC_ID = 895
VOCAB_SIZE = 2048
# Every printable ASCII character, the space marker and "\n" are pieces.
ALPHABET = sorted({chr(c) for c in range(0x21, 0x7F)} | {"\u2581", "\n"})


def learn_merges(corpus: str, n_new: int):
    """Plain BPE on a SentencePiece-style split ("▁word", single digits,
    punctuation runs, "\n" alone). Ties: highest count, then smallest pair."""
    text = corpus.replace(" ", "\u2581")
    pieces = re.findall(r"\n|[0-9]|\u2581?[A-Za-z]+|\u2581?[^A-Za-z0-9\u2581\n]+|\u2581+", text)
    words = collections.Counter(pieces)
    seqs = {w: list(w) for w in sorted(words)}
    vocab = set(ALPHABET)
    target = len(ALPHABET) + n_new
    merges = []
    while len(vocab) < target:
        pairs = collections.Counter()
        for w, s in seqs.items():
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += words[w]
        if not pairs:
            raise SystemExit("golden: tokenizer corpus too small for the merges needed")
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merged = best[0] + best[1]
        merges.append(best)
        vocab.add(merged)
        for w, s in seqs.items():
            out, i = [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == best[0] and s[i + 1] == best[1]:
                    out.append(merged)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            seqs[w] = out
    return merges


TOKENIZER_CONFIG = {
    "tokenizer_class": "GemmaTokenizer",
    "processor_class": "PaliGemmaProcessor",
    "add_bos_token": False,
    "add_eos_token": False,
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    # GemmaTokenizer defaults mask_token to "<mask>", which this vocabulary
    # does not have: it would be appended as id 2048.
    "mask_token": None,
    "padding_side": "right",
    "clean_up_tokenization_spaces": False,
    "model_max_length": 1000000,
}
SPECIAL_TOKENS_MAP = {
    "bos_token": "<bos>",
    "eos_token": "<eos>",
    "pad_token": "<pad>",
    "unk_token": "<unk>",
    "additional_special_tokens": ["<image>"],
}


def build_tokenizer() -> dict:
    n_new = FIRST_LOC_ID - (len(SPECIAL) + 256 + len(ALPHABET))
    merges = learn_merges(tokenizer_corpus(), n_new)
    vocab = {t: i for i, t in enumerate(SPECIAL)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for ch in ALPHABET:
        vocab[ch] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    assert len(vocab) == FIRST_LOC_ID, len(vocab)
    for t in LOC + SEG + ["<image>"]:
        vocab[t] = len(vocab)
    assert len(vocab) == VOCAB_SIZE and vocab["<image>"] == TINY["image_token_index"]

    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, normalized=False, special=True) for t in SPECIAL])
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in LOC + SEG])
    tok.add_special_tokens([AddedToken("<image>", normalized=False, special=True)])
    assert tok.get_vocab_size() == VOCAB_SIZE

    if ASSETS_TOK.exists():
        shutil.rmtree(ASSETS_TOK)
    ASSETS_TOK.mkdir(parents=True)
    tok.save(str(ASSETS_TOK / "tokenizer.json"), pretty=False)  # compact: 5 copies
    write_json(ASSETS_TOK / "tokenizer_config.json", TOKENIZER_CONFIG, compact=True)
    write_json(ASSETS_TOK / "special_tokens_map.json", SPECIAL_TOKENS_MAP, compact=True)
    return check_tokenizer()


TOKENIZER_PROBES = [
    "\n",
    " ",
    "detect circle ; square\n",
    "extract JSON",
    '{"shape": "circle", "color": "red", "count": 3}',
    "<loc0000><loc1023><loc0512><loc0007> circle ; <loc0100><loc0200><loc0300><loc0400> square",
    "<seg000><seg127> mask",
    "<image><image><bos>caption en\n",
    "a big red circle on a blue background.",
    "naïve café ☃ 日本 \U0001F600",
    "  two  spaces, tab\tand\r\nwindows newline",
    "0123456789 12.5% -7",
    "Zebra XYLOPHONE quokka",
    "<eos><pad><unk><mask>",
    "",
]


def check_tokenizer() -> dict:
    hf = transformers.AutoTokenizer.from_pretrained(str(ASSETS_TOK))
    raw = Tokenizer.from_file(str(ASSETS_TOK / "tokenizer.json"))
    assert type(hf).__name__ == "GemmaTokenizer", type(hf)
    assert len(hf) == VOCAB_SIZE, len(hf)
    assert hf.padding_side == "right" and not hf.add_bos_token and not hf.add_eos_token
    ids = {t: hf.convert_tokens_to_ids(t) for t in SPECIAL + ["<image>", "<loc0000>", "<loc1023>", "<seg000>", "<seg127>"]}
    assert ids == {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<image>": 2047, "<loc0000>": 895,
                   "<loc1023>": 1918, "<seg000>": 1919, "<seg127>": 2046}, ids
    newline = hf("\n", add_special_tokens=True)["input_ids"]
    assert len(newline) == 1, newline
    probes = []
    for text in TOKENIZER_PROBES:
        a = hf(text)["input_ids"]
        b = raw.encode(text, add_special_tokens=True).ids
        assert a == b, (text, a, b)
        probes.append({
            "text": text,
            "ids": a,
            "tokens": raw.encode(text).tokens,
            "decoded": hf.decode(a),
            "decoded_skip_special": hf.decode(a, skip_special_tokens=True),
        })
    loc_text = "<loc0000><loc1023><loc0512><loc0007> circle"
    dec = hf.decode(hf(loc_text)["input_ids"], skip_special_tokens=True)
    assert dec == loc_text, dec
    info = {
        "vocab_size": VOCAB_SIZE,
        "ids": ids,
        "newline_id": newline[0],
        "space_id": hf.convert_tokens_to_ids("\u2581"),
        "first_byte_fallback_id": hf.convert_tokens_to_ids("<0x00>"),
        "first_piece_id": len(SPECIAL) + 256,
        "first_loc_id": FIRST_LOC_ID,
        "first_seg_id": FIRST_LOC_ID + 1024,
        "image_id": 2047,
        "padding_side": hf.padding_side,
        "hf_class": type(hf).__name__,
        "hf_backend_pre_tokenizer": str(hf.backend_tokenizer.pre_tokenizer),
        "hf_backend_post_processor": str(hf.backend_tokenizer.post_processor),
        "probes": probes,
    }
    log(f"tokenizer: 2048 ids, '\\n' = {newline[0]}, HF class {type(hf).__name__}")
    return info


# ---------------------------------------------------------------------------
# 3. dataset images
# ---------------------------------------------------------------------------


def loc(v: float, extent: int) -> str:
    b = min(1023, max(0, int(round(v / extent * 1023))))
    return f"<loc{b:04d}>"


def det(label, box, w, h):
    x0, y0, x1, y1 = box
    return f"{loc(y0, h)}{loc(x0, w)}{loc(y1, h)}{loc(x1, w)} {label}"


def make_train_valid():
    """Returns {split: [(filename, PIL image to save, save kwargs, prefix, suffix)]}."""
    rows = {"train": [], "valid": []}

    # train 0: RGB wide 90x40
    w, h = 90, 40
    im = Image.new("RGB", (w, h), (235, 230, 220))
    d = ImageDraw.Draw(im)
    d.ellipse((6, 5, 36, 35), fill=(220, 30, 40))
    d.rectangle((52, 8, 80, 34), fill=(30, 70, 200))
    suffix = det("circle", (6, 5, 36, 35), w, h) + " ; " + det("square", (52, 8, 80, 34), w, h)
    rows["train"].append(("t0_wide_rgb.png", im, {}, "detect circle ; square", suffix))

    # train 1: RGB tall 37x83
    w, h = 37, 83
    im = Image.new("RGB", (w, h), (250, 250, 250))
    d = ImageDraw.Draw(im)
    d.polygon([(18, 6), (33, 40), (3, 40)], fill=(40, 160, 60))
    d.ellipse((8, 50, 30, 72), fill=(240, 200, 20))
    rows["train"].append(("t1_tall_rgb.png", im, {}, "extract JSON",
                          '{"shapes": [{"shape": "triangle", "color": "green"}, {"shape": "circle", "color": "yellow"}]}'))

    # train 2: RGB square 64x64, larger than 32 (downscaled)
    w, h = 64, 64
    im = Image.new("RGB", (w, h), (20, 20, 30))
    d = ImageDraw.Draw(im)
    for i in range(0, 64, 8):
        d.line((0, i, 63, 63 - i), fill=(90 + 2 * i, 40, 200 - 2 * i), width=1)
    d.rectangle((10, 12, 50, 40), fill=(255, 140, 0))
    rows["train"].append(("t2_square_rgb.png", im, {}, "detect rectangle", det("rectangle", (10, 12, 50, 40), w, h)))

    # train 3: RGB 20x24, smaller than 32 (upscaled)
    w, h = 20, 24
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.ellipse((2, 3, 17, 18), fill=(128, 0, 128))
    d.point([(0, 0), (19, 23), (10, 21)], fill=(0, 0, 0))
    rows["train"].append(("t3_small_rgb.png", im, {}, "caption en", "a small purple circle on a white background"))

    # train 4: RGBA 48x40 with partial transparency (composited onto white)
    w, h = 48, 40
    im = Image.new("RGBA", (w, h), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, 23, 39), fill=(10, 120, 220, 255))
    d.ellipse((14, 6, 44, 36), fill=(230, 40, 60, 128))
    d.rectangle((30, 0, 47, 5), fill=(0, 0, 0, 37))
    rows["train"].append(("t4_rgba.png", im, {}, "answer en what color is the circle?", "red"))

    # train 5: greyscale L 33x29
    w, h = 33, 29
    im = Image.new("L", (w, h), 40)
    d = ImageDraw.Draw(im)
    d.ellipse((4, 4, 24, 24), fill=200)
    d.rectangle((26, 2, 31, 26), fill=120)
    rows["train"].append(("t5_grey_l.png", im, {}, "detect circle", det("circle", (4, 4, 24, 24), w, h)))

    # train 6: palette P 50x30 with a transparent palette index (tRNS)
    w, h = 50, 30
    im = Image.new("P", (w, h), 0)
    palette = [255, 0, 255, 200, 30, 30, 30, 30, 200, 240, 240, 240] + [0, 0, 0] * 252
    im.putpalette(palette)
    d = ImageDraw.Draw(im)
    d.rectangle((0, 0, 49, 29), fill=3)
    d.rectangle((3, 3, 20, 20), fill=1)
    d.polygon([(30, 4), (46, 26), (26, 26)], fill=2)
    d.rectangle((0, 24, 12, 29), fill=0)  # transparent corner
    rows["train"].append(("t6_palette_p.png", im, {"transparency": 0}, "extract JSON",
                          '{"shapes": [{"shape": "square", "color": "red"}, {"shape": "triangle", "color": "blue"}]}'))

    # valid 0: RGB 45x45
    w, h = 45, 45
    im = Image.new("RGB", (w, h), (200, 220, 255))
    d = ImageDraw.Draw(im)
    d.ellipse((5, 5, 30, 30), fill=(0, 160, 160))
    rows["valid"].append(("v0_rgb.png", im, {}, "caption en", "a cyan circle on a blue background"))

    # valid 1: RGB tall 30x70
    w, h = 30, 70
    im = Image.new("RGB", (w, h), (255, 255, 255))
    d = ImageDraw.Draw(im)
    d.rectangle((4, 10, 25, 30), fill=(200, 0, 0))
    d.ellipse((4, 40, 25, 61), fill=(0, 0, 200))
    suffix = det("square", (4, 10, 25, 30), w, h) + " ; " + det("circle", (4, 40, 25, 61), w, h)
    rows["valid"].append(("v1_tall_rgb.png", im, {}, "detect square ; circle", suffix))

    # valid 2: JPEG (the same file as resize/photo.jpg)
    im = jpeg_source()
    rows["valid"].append(("v2_photo.jpg", im, {"quality": 90}, "extract JSON",
                          '{"shape": "circle", "color": "orange"}'))
    return rows


def jpeg_source() -> Image.Image:
    w, h = 61, 43  # odd sizes exercise chroma (4:2:0) edge handling
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    arr = np.stack([
        60 + 150 * xx / (w - 1),
        40 + 120 * yy / (h - 1),
        200 - 100 * (xx + yy) / (w + h - 2),
    ], axis=-1)
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    d.ellipse((12, 8, 40, 36), fill=(250, 140, 20))
    d.line((0, 42, 60, 0), fill=(10, 10, 10), width=2)
    return im


def save_image(im: Image.Image, path: Path, kwargs: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        im.save(path, format="JPEG", **kwargs)
    else:
        im.save(path, format="PNG", **kwargs)


def write_dataset():
    rows = make_train_valid()
    if DATA.exists():
        shutil.rmtree(DATA)
    out = {}
    for split, items in rows.items():
        lines = []
        for name, im, kw, prefix, suffix in items:
            save_image(im, DATA / split / name, kw)
            lines.append(json.dumps({"image": name, "prefix": prefix, "suffix": suffix}, ensure_ascii=False))
        (DATA / split / "annotations.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
        out[split] = [(name, prefix, suffix) for name, _, _, prefix, suffix in items]
    return out


def load_split(split: str):
    rows = [json.loads(l) for l in (DATA / split / "annotations.jsonl").read_text().splitlines() if l.strip()]
    images = []
    for r in rows:
        with Image.open(DATA / split / r["image"]) as im:
            im.load()
            images.append(im.copy())  # copy() keeps .info (a P image's tRNS transparency)
    return rows, images


def pil_pixels(im: Image.Image) -> np.ndarray:
    """Replicates transformers' PIL path up to the resize: composite onto white
    when the image has alpha (or a tRNS transparency), else convert("RGB");
    then resize((S,S), BICUBIC). Returns HxWx3 uint8."""
    has_alpha = "A" in im.getbands() or im.info.get("transparency") is not None
    if has_alpha:
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb = Image.alpha_composite(bg, rgba).convert("RGB")
    else:
        rgb = im.convert("RGB")
    rgb = Image.fromarray(np.array(rgb))  # transformers goes through a uint8 array
    out = rgb.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BICUBIC)
    return np.array(out, dtype=np.uint8)


def normalise(px: np.ndarray) -> np.ndarray:
    """transformers: float64(u8) * (1/255) -> float32, then (x - 0.5) / 0.5 in
    float32; CHW."""
    x = (px.astype(np.float64) * 0.00392156862745098).astype(np.float32)
    x = (x - np.float32(0.5)) / np.float32(0.5)
    return np.transpose(x, (2, 0, 1))


# ---------------------------------------------------------------------------
# 2. checkpoints
# ---------------------------------------------------------------------------

PREPROCESSOR_CONFIG = {
    "do_convert_rgb": True,
    "do_normalize": True,
    "do_rescale": True,
    "do_resize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_processor_type": "SiglipImageProcessor",
    "image_seq_length": NUM_IMAGE_TOKENS,
    "image_std": [0.5, 0.5, 0.5],
    "processor_class": "PaliGemmaProcessor",
    "resample": 3,
    "rescale_factor": 0.00392156862745098,
    "size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
}


def make_config():
    from transformers import PaliGemmaConfig

    t = dict(TINY["text"])
    rope_theta = t.pop("rope_theta")
    text_config = dict(
        model_type="gemma2",
        **t,
        rope_parameters={"rope_type": "default", "rope_theta": rope_theta},
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    vision_config = dict(model_type="siglip_vision_model", vision_use_head=False, **TINY["vision"])
    cfg = PaliGemmaConfig(
        vision_config=vision_config,
        text_config=text_config,
        projection_dim=TINY["projection_dim"],
        image_token_index=TINY["image_token_index"],
        vocab_size=TINY["text"]["vocab_size"],
        hidden_size=TINY["text"]["hidden_size"],
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=1,
    )
    return cfg


def init_weights(model) -> dict:
    """Deterministic re-initialisation. Scales were tuned so that the random
    model is not degenerate: attention is peaky (q/k gain 2), logits spread
    (std ~2.4, |max| ~10, so the final soft-cap matters), the loss is ~10 and
    greedy generation does not just repeat one token. Every norm weight and
    bias is perturbed away from 0/1 (Gemma RMSNorm weights are offsets: the
    scale is 1 + w, so the post-norm offsets ~2 give scales ~3)."""
    g = torch.Generator().manual_seed(SEED)
    stats = {}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
            in_lm = "language_model" in name
            is_vision_ln = "vision_tower" in name and ("layer_norm" in name or "post_layernorm" in name)
            if p.ndim == 1:
                if is_vision_ln and name.endswith(".weight"):  # LayerNorm: scale = w
                    v = 1.0 + 0.15 * torch.randn(p.shape, generator=g)
                elif in_lm and ("post_attention_layernorm" in name or "post_feedforward_layernorm" in name):
                    v = 2.0 + 0.15 * torch.randn(p.shape, generator=g)
                elif in_lm and name.endswith("language_model.norm.weight"):
                    v = 2.0 + 0.15 * torch.randn(p.shape, generator=g)
                else:  # other RMSNorm offsets and all biases
                    v = 0.15 * torch.randn(p.shape, generator=g)
            elif "embed_tokens" in name:
                v = 0.1 * torch.randn(p.shape, generator=g)
            elif "position_embedding" in name:
                v = 0.5 * torch.randn(p.shape, generator=g)
            else:  # linear / conv weights [out, in, ...]
                fan_in = int(np.prod(p.shape[1:]))
                gain = 2.0 if ("q_proj" in name or "k_proj" in name) else 1.0
                v = gain / math.sqrt(fan_in) * torch.randn(p.shape, generator=g)
            p.copy_(v.to(p.dtype))
            stats[name] = list(p.shape)
    return stats


def copy_tokenizer_files(dst: Path):
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(ASSETS_TOK / f, dst / f)
    write_json(dst / "preprocessor_config.json", PREPROCESSOR_CONFIG, compact=True)


def to_legacy(key: str) -> str | None:
    if key == "lm_head.weight":
        return None
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model."):]
    if key.startswith("model.vision_tower."):
        rest = key[len("model.vision_tower."):]
        if rest.startswith("vision_model."):
            rest = rest[len("vision_model."):]
        return "vision_tower.vision_model." + rest
    if key.startswith("model.multi_modal_projector."):
        return "multi_modal_projector." + key[len("model.multi_modal_projector."):]
    raise KeyError(key)


def save_checkpoints() -> dict:
    from transformers import PaliGemmaForConditionalGeneration

    if CKPT.exists():
        shutil.rmtree(CKPT)
    cfg = make_config()
    torch.manual_seed(SEED)
    model = PaliGemmaForConditionalGeneration(cfg).eval()
    init_weights(model)
    info = {"in_memory_names": sorted(model.state_dict().keys())}
    for variant in ("f32", "sharded", "bf16"):
        d = CKPT / variant
        d.mkdir(parents=True)
        m = model if variant != "bf16" else PaliGemmaForConditionalGeneration(cfg).eval()
        if variant == "bf16":
            m.load_state_dict(model.state_dict())
            m = m.to(torch.bfloat16)
            m.config.dtype = torch.bfloat16
        kw = {"max_shard_size": "300KB"} if variant == "sharded" else {}
        m.save_pretrained(str(d), **kw)
        copy_tokenizer_files(d)

    # Which names does save_pretrained write?
    saved = sorted(load_file(str(CKPT / "f32" / "model.safetensors")).keys())
    info["saved_names"] = saved
    shard_files = sorted(p.name for p in (CKPT / "sharded").glob("model-*.safetensors"))
    assert len(shard_files) >= 2, shard_files
    info["sharded_files"] = shard_files

    # legacy: the published hub layout: bf16, the (≤4.51) key names, no
    # lm_head. Same weights as bf16/, so it must give bf16/'s logits exactly.
    d = CKPT / "legacy"
    d.mkdir(parents=True)
    sd = {to_legacy(k): v.detach().to(torch.bfloat16).clone().contiguous()
          for k, v in model.state_dict().items() if to_legacy(k)}
    save_file(dict(sorted(sd.items())), str(d / "model.safetensors"), metadata={"format": "pt"})
    shutil.copyfile(CKPT / "bf16" / "config.json", d / "config.json")
    if (CKPT / "bf16" / "generation_config.json").exists():
        shutil.copyfile(CKPT / "bf16" / "generation_config.json", d / "generation_config.json")
    copy_tokenizer_files(d)
    info["legacy_names"] = sorted(sd.keys())
    info["num_parameters"] = sum(p.numel() for p in model.parameters())
    log(f"checkpoints: {info['num_parameters']} parameters; save_pretrained writes e.g. "
        f"{[n for n in saved if 'layers.0.' not in n and 'layers.1.' not in n]}")
    return info


# ---------------------------------------------------------------------------
# 4. golden values
# ---------------------------------------------------------------------------


def load_processor(path: Path):
    from transformers import PaliGemmaProcessor

    proc = PaliGemmaProcessor.from_pretrained(str(path))
    ip = proc.image_processor
    assert type(ip).__name__ == "SiglipImageProcessorPil", type(ip)
    assert proc.image_seq_length == NUM_IMAGE_TOKENS
    assert len(proc.tokenizer) == VOCAB_SIZE, len(proc.tokenizer)
    assert proc.tokenizer.padding_side == "right"
    return proc


def load_model(variant: str, dtype):
    from transformers import PaliGemmaForConditionalGeneration

    model, loading = PaliGemmaForConditionalGeneration.from_pretrained(
        str(CKPT / variant), dtype=dtype, attn_implementation="eager", output_loading_info=True)
    for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        assert not loading.get(k), (variant, k, loading.get(k))
    model.eval()
    assert model.model.language_model.embed_tokens.weight.data_ptr() == model.lm_head.weight.data_ptr(), "lm_head not tied"
    return model


def batch_for(proc, split, padding_side="right", with_suffix=True):
    rows, images = load_split(split)
    proc.tokenizer.padding_side = padding_side
    kw = dict(suffix=[r["suffix"] for r in rows]) if with_suffix else {}
    batch = proc(images=images, text=[r["prefix"] for r in rows], padding="longest", return_tensors="pt", **kw)
    proc.tokenizer.padding_side = "right"
    return rows, images, batch


def pick_positions(batch):
    ids = batch["input_ids"]
    am = batch["attention_mask"]
    tt = batch["token_type_ids"]
    lengths = am.sum(1).tolist()
    L = ids.shape[1]
    pos = []

    def add(b, t, what):
        if (b, t) not in [(p["b"], p["t"]) for p in pos]:
            pos.append({"b": b, "t": t, "what": what})

    nl0 = int((tt[0] == 0).logical_and(am[0] == 1).sum()) - 1  # last prefix token ("\n")
    add(0, 0, "first image token")
    add(0, NUM_IMAGE_TOKENS - 3, "image token")
    add(0, NUM_IMAGE_TOKENS, "<bos>")
    add(0, nl0, "last prefix token (\\n)")
    add(0, nl0 + 1, "first suffix token")
    add(0, lengths[0] - 1, "last real token (<eos>)")
    longest = int(np.argmax(lengths))
    nll = int((tt[longest] == 0).logical_and(am[longest] == 1).sum()) - 1
    add(longest, (nll + lengths[longest]) // 2, "suffix token (sliding window binds)")
    shortest = int(np.argmin(lengths))
    add(shortest, lengths[shortest] - 1, "last real token of the shortest row (<eos>)")
    assert lengths[shortest] < L
    add(shortest, lengths[shortest], "first padding position of the shortest row")
    add(shortest, L - 1, "last padding position of the shortest row")
    return pos


def golden_values(versions, tok_info, ckpt_info) -> dict:
    proc = load_processor(CKPT / "f32")
    rows, images, batch = batch_for(proc, "train")

    # processor fixtures + pixel check
    pixels = []
    for i, im in enumerate(images):
        px = pil_pixels(im)
        want = torch.from_numpy(normalise(px))
        got = batch["pixel_values"][i]
        assert got.dtype == torch.float32
        assert torch.equal(got, want), f"pixel_values of train image {i} differ from the PIL replica"
        pixels.append(px.reshape(-1).tolist())
    labels = batch["labels"]
    expect_labels = batch["input_ids"].clone()
    expect_labels[batch["token_type_ids"] == 0] = -100
    assert torch.equal(labels, expect_labels)

    def tolist(t):
        return t.tolist()

    processor = {
        "split": "train",
        "images": [r["image"] for r in rows],
        "image_modes": [im.mode for im in images],
        "image_sizes_wh": [list(im.size) for im in images],
        "prefixes": [r["prefix"] for r in rows],
        "suffixes": [r["suffix"] for r in rows],
        "padding": "longest",
        "padding_side": "right",
        "input_ids": tolist(batch["input_ids"]),
        "attention_mask": tolist(batch["attention_mask"]),
        "token_type_ids": tolist(batch["token_type_ids"]),
        "labels": tolist(labels),
        "pixels_hw3": {"shape": [IMAGE_SIZE, IMAGE_SIZE, 3], "layout": "row-major HxWxRGB uint8, after the PIL "
                       "bicubic resize, before rescale/normalise", "data": pixels},
        "pixel_values_first_values": F32List(batch["pixel_values"][0, 0, 0, :8].tolist()),
    }

    positions = pick_positions(batch)
    fwd_inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "labels")}

    variants = {}
    ref_logits = {}
    for variant in ("f32", "sharded", "bf16", "legacy"):
        dtype = torch.bfloat16 if variant in ("bf16", "legacy") else torch.float32
        model = load_model(variant, dtype)
        with torch.no_grad():
            out = model(**fwd_inputs)
        logits = out.logits
        assert logits.dtype == dtype, logits.dtype
        logits32 = logits.float()
        if variant in ("f32", "bf16"):
            ref_logits[variant] = logits32
        else:
            same = "f32" if variant == "sharded" else "bf16"
            assert torch.equal(logits32, ref_logits[same]), f"{variant} logits differ from {same}"
        loss = float(out.loss)
        # independent check of the loss definition (shifted, token mean)
        shift_logits = logits32[:, :-1].reshape(-1, logits32.shape[-1])
        shift_labels = labels[:, 1:].reshape(-1)
        manual = torch.nn.functional.cross_entropy(shift_logits, shift_labels, ignore_index=-100)
        assert abs(float(manual) - loss) <= 1e-6 * max(1.0, abs(loss)), (variant, float(manual), loss)
        n_tokens = int((labels[:, 1:] != -100).sum())
        variants[variant] = {
            "dtype": "bfloat16" if dtype == torch.bfloat16 else "float32",
            "weights_from": {"f32": "f32", "sharded": "f32", "bf16": "f32 cast to bf16",
                             "legacy": "f32 cast to bf16, legacy names"}[variant],
            "loss": loss,
            "loss_tokens": n_tokens,
            "logits": [
                {"b": p["b"], "t": p["t"], "what": p["what"], "values": F32List(logits32[p["b"], p["t"]].tolist())}
                for p in positions
            ],
        }
        log(f"{variant}: loss {loss!r} over {n_tokens} tokens")
    diff = (variants["bf16"]["loss"] - variants["f32"]["loss"])
    log(f"bf16 - f32 loss = {diff:.3e}")

    # valid loss (f32)
    model = load_model("f32", torch.float32)
    vrows, vimages, vbatch = batch_for(proc, "valid")
    with torch.no_grad():
        vout = model(**{k: vbatch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values", "labels")})
    vlabels = vbatch["labels"]
    vtokens = int((vlabels[:, 1:] != -100).sum())
    per_row = []
    lf = vout.logits.float()
    for b in range(lf.shape[0]):
        s = torch.nn.functional.cross_entropy(lf[b, :-1], vlabels[b, 1:], ignore_index=-100, reduction="sum")
        per_row.append({"loss_sum": float(s), "tokens": int((vlabels[b, 1:] != -100).sum())})
    vpix = []
    for i, im in enumerate(vimages):
        px = pil_pixels(im)
        assert torch.equal(vbatch["pixel_values"][i], torch.from_numpy(normalise(px)))
        vpix.append(px.reshape(-1).tolist())
    valid = {
        "variant": "f32",
        "loss": float(vout.loss),
        "tokens": vtokens,
        "per_row": per_row,
        "images": [r["image"] for r in vrows],
        "input_ids": tolist(vbatch["input_ids"]),
        "attention_mask": tolist(vbatch["attention_mask"]),
        "token_type_ids": tolist(vbatch["token_type_ids"]),
        "labels": tolist(vlabels),
        "pixels_hw3": vpix,
    }
    log(f"valid loss {valid['loss']!r} over {vtokens} tokens")

    generation = make_generation(model, proc, vrows, vimages)

    return {
        "about": "Golden values from Hugging Face transformers for palisweep's parity tests; "
                 "see tests/golden/README.md. Regenerate with scripts/golden/make.sh.",
        "versions": versions,
        "seed": SEED,
        "config": {"preset": "PaliGemmaConfig::tiny(Size::B3, Resolution::R224)", **{
            k: v for k, v in TINY.items()}},
        "tokenizer": tok_info,
        "checkpoints": ckpt_info,
        "processor": processor,
        "attn_implementation": "eager",
        "logit_positions": positions,
        "variants": variants,
        "valid_loss": valid["loss"],
        "valid": valid,
        "generation": generation,
    }


def make_generation(model, proc, vrows, vimages) -> dict:
    eos = 1
    gen = {"max_new_tokens": 12, "do_sample": False, "eos_token_id": eos, "pad_token_id": 0}

    def run(indices, padding_side):
        proc.tokenizer.padding_side = padding_side
        batch = proc(images=[vimages[i] for i in indices], text=[vrows[i]["prefix"] for i in indices],
                     padding="longest", return_tensors="pt")
        proc.tokenizer.padding_side = "right"
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids", "pixel_values")}
        with torch.no_grad():
            out = model.generate(**inputs, max_new_tokens=12, do_sample=False, eos_token_id=eos, pad_token_id=0,
                                 output_scores=True, return_dict_in_generate=True)
        plen = batch["input_ids"].shape[1]
        new = out.sequences[:, plen:].tolist()
        margins = []
        for b, row in enumerate(new):
            steps = row.index(eos) + 1 if eos in row else len(row)
            tops = [out.scores[i][b].float().topk(2).values for i in range(steps)]
            margins.append(min(float(t[0] - t[1]) for t in tops))
        result = {
            "images": [vrows[i]["image"] for i in indices],
            "prefixes": [vrows[i]["prefix"] for i in indices],
            "padding_side": padding_side,
            "input_ids": batch["input_ids"].tolist(),
            "attention_mask": batch["attention_mask"].tolist(),
            "token_type_ids": batch["token_type_ids"].tolist(),
            "raw_new_ids": new,
            "new_ids": [],
            "hit_eos": [],
            "text": [],
            "min_top1_top2_logit_margin": margins,
        }
        for row in new:
            cut = row.index(eos) + 1 if eos in row else len(row)
            result["new_ids"].append(row[:cut])
            result["hit_eos"].append(eos in row)
            result["text"].append(proc.tokenizer.decode(row[:cut], skip_special_tokens=True))
        return result

    gen["single"] = run([0], "right")
    gen["batch"] = run([0, 1], "left")
    lens = [sum(m) for m in gen["batch"]["attention_mask"]]
    assert lens[0] != lens[1], lens
    # Cross-check: greedy decoding without the cache, by repeated full forwards
    # (positions 1.., prefix block bidirectional, generated tokens causal).
    gen["single_matches_uncached"] = uncached_greedy(model, proc, vrows, vimages, gen["single"]["new_ids"][0])
    gen["batch_row0_equals_single"] = gen["batch"]["new_ids"][0] == gen["single"]["new_ids"][0]
    log(f"generation: single {gen['single']['new_ids']} eos={gen['single']['hit_eos']}; "
        f"batch {gen['batch']['new_ids']} eos={gen['batch']['hit_eos']}")
    return gen


def uncached_greedy(model, proc, vrows, vimages, cached_ids) -> bool:
    batch = proc(images=[vimages[0]], text=[vrows[0]["prefix"]], return_tensors="pt")
    ids = batch["input_ids"]
    tt = batch["token_type_ids"]
    out = []
    for _ in range(12):
        with torch.no_grad():
            o = model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=tt,
                      pixel_values=batch["pixel_values"], use_cache=False)
        nxt = int(o.logits[0, -1].argmax())
        out.append(nxt)
        if nxt == 1:
            break
        ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
        tt = torch.cat([tt, torch.ones((1, 1), dtype=tt.dtype)], 1)
    return out == cached_ids


# ---------------------------------------------------------------------------
# 5. Pillow resize cases
# ---------------------------------------------------------------------------

RESIZE_SOURCES = [
    ("wide_300x200", 300, 200),
    ("tall_200x300", 200, 300),
    ("tall_37x83", 37, 83),
    ("wide_90x40", 90, 40),
    ("small_20x24", 20, 24),
    ("square_45x45", 45, 45),
    ("near_33x31", 33, 31),
    ("thin_1x50", 1, 50),
    ("thin_60x1", 60, 1),
    ("strip_7x100", 7, 100),
    ("odd_225x226", 225, 226),
    ("tiny_3x2", 3, 2),
]
RESIZE_SIZES = [32, 64, 224]


def resize_source(name: str, w: int, h: int) -> Image.Image:
    """Smooth gradients plus hard-edged shapes (ringing/clamping) plus a little
    noise; deterministic per name."""
    seed = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    fx = xx / max(w - 1, 1)
    fy = yy / max(h - 1, 1)
    arr = np.stack([255 * fx, 255 * fy, 128 + 127 * np.sin(6.0 * fx + 4.0 * fy)], axis=-1)
    arr += rng.normal(0, 4, size=arr.shape)
    im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    for _ in range(4):
        x0, x1 = sorted(rng.integers(0, w, 2).tolist())
        y0, y1 = sorted(rng.integers(0, h, 2).tolist())
        color = tuple(int(c) for c in rng.choice([0, 255], 3))
        if rng.random() < 0.5:
            d.rectangle((x0, y0, x1, y1), fill=color)
        else:
            d.ellipse((x0, y0, x1, y1), fill=color)
    return im


def write_resize_cases() -> dict:
    if RESIZE.exists():
        shutil.rmtree(RESIZE)
    RESIZE.mkdir(parents=True)
    cases = []
    for name, w, h in RESIZE_SOURCES:
        im = resize_source(name, w, h)
        im.save(RESIZE / f"{name}.png", format="PNG")
        outputs = []
        for s in RESIZE_SIZES:
            out = im.resize((s, s), Image.Resampling.BICUBIC)
            fname = f"{name}__{s}.png"
            out.save(RESIZE / fname, format="PNG")
            outputs.append({"size": s, "file": fname})
        cases.append({"source": f"{name}.png", "width": w, "height": h, "outputs": outputs})
    jpg = jpeg_source()
    jpg.save(RESIZE / "photo.jpg", format="JPEG", quality=90)
    with Image.open(RESIZE / "photo.jpg") as im:
        decoded = im.convert("RGB")
        jpeg_info = {"mode": im.mode, "size": list(im.size),
                     "subsampling": _jpeg_subsampling(im)}
    decoded.save(RESIZE / "photo.decoded.png", format="PNG")
    jpeg_outputs = []
    for s in RESIZE_SIZES:
        fname = f"photo__{s}.png"
        decoded.resize((s, s), Image.Resampling.BICUBIC).save(RESIZE / fname, format="PNG")
        jpeg_outputs.append({"size": s, "file": fname})
    doc = {
        "about": "Pillow Image.resize((S, S), Resampling.BICUBIC) of RGB uint8 images. Sources are PNG "
                 "(RGB); each output is an RGB PNG named <src>__<S>.png.",
        "pillow": PIL.__version__,
        "resample": "BICUBIC (3)",
        "sizes": RESIZE_SIZES,
        "cases": cases,
        "jpeg": {
            "source": "photo.jpg",
            "decoded": "photo.decoded.png",
            "note": "Pillow's (libjpeg-turbo) decode of photo.jpg, converted to RGB; the same bytes as "
                    "data/valid/v2_photo.jpg",
            **jpeg_info,
            "outputs": jpeg_outputs,
        },
    }
    write_json(RESIZE / "cases.json", doc, compact=True)
    assert (RESIZE / "photo.jpg").read_bytes() == (DATA / "valid" / "v2_photo.jpg").read_bytes()
    return doc


def _jpeg_subsampling(im) -> str:
    try:
        from PIL import JpegImagePlugin

        return {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(JpegImagePlugin.get_sampling(im), "unknown")
    except Exception:  # pragma: no cover
        return "unknown"


# ---------------------------------------------------------------------------
# verification: load every fixture back
# ---------------------------------------------------------------------------


def verify(values: dict, resize_doc: dict):
    # values.json parses and matches what was computed
    loaded = json.loads((GOLDEN / "values.json").read_text())
    assert loaded["versions"] == values["versions"]
    for v, d in values["variants"].items():
        assert loaded["variants"][v]["loss"] == d["loss"]
        for a, b in zip(loaded["variants"][v]["logits"], d["logits"]):
            assert len(a["values"]) == VOCAB_SIZE
            assert np.array_equal(np.array(a["values"], dtype=np.float32), np.array(b["values"], dtype=np.float32))
    assert loaded["processor"]["input_ids"] == values["processor"]["input_ids"]
    # the dataset reloads and the processor reproduces the stored ids
    proc = load_processor(CKPT / "sharded")
    _, images, batch = batch_for(proc, "train")
    assert batch["input_ids"].tolist() == loaded["processor"]["input_ids"]
    for i, im in enumerate(images):
        px = np.array(loaded["processor"]["pixels_hw3"]["data"][i], dtype=np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 3)
        assert torch.equal(batch["pixel_values"][i], torch.from_numpy(normalise(px)))
    # every checkpoint loads with AutoModel too, tokenizer files are byte-identical
    for variant in ("f32", "bf16", "sharded", "legacy"):
        for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            assert (CKPT / variant / f).read_bytes() == (ASSETS_TOK / f).read_bytes()
        m = transformers.AutoModelForImageTextToText.from_pretrained(str(CKPT / variant), attn_implementation="eager")
        assert type(m).__name__ == "PaliGemmaForConditionalGeneration"
    # resize PNGs decode back to the same pixels
    for case in resize_doc["cases"]:
        with Image.open(RESIZE / case["source"]) as src:
            src = src.convert("RGB")
            assert src.size == (case["width"], case["height"])
            for o in case["outputs"]:
                with Image.open(RESIZE / o["file"]) as out:
                    assert out.mode == "RGB" and out.size == (o["size"], o["size"])
                    assert np.array_equal(np.array(out), np.array(src.resize((o["size"],) * 2, Image.Resampling.BICUBIC)))
    with Image.open(RESIZE / "photo.jpg") as j, Image.open(RESIZE / "photo.decoded.png") as p:
        assert np.array_equal(np.array(j.convert("RGB")), np.array(p))
    total = sum(f.stat().st_size for f in list(GOLDEN.rglob("*")) + list(ASSETS_TOK.rglob("*")) if f.is_file())
    log(f"verified; tests/golden + assets/tiny-tokenizer = {total / 1e6:.2f} MB")


def main():
    versions = check_environment()
    tok_info = build_tokenizer()
    write_dataset()
    ckpt_info = save_checkpoints()
    resize_doc = write_resize_cases()
    values = golden_values(versions, tok_info, ckpt_info)
    write_json(GOLDEN / "values.json", values)
    for f in list(GOLDEN.rglob("*")) + list(ASSETS_TOK.rglob("*")):
        if f.is_file():
            f.chmod(0o644)  # save_pretrained writes 0600 files
    verify(values, resize_doc)


if __name__ == "__main__":
    main()
