"""Stubs the ops of tch 0.26's C shim that libtorch 2.11 lacks.

tch 0.26 binds every op of torch 2.13; the GPU machine has torch 2.11, which
lacks these few (or has another signature). palisweep uses none of them, so
their wrappers are replaced by ones that raise a torch error if ever called.

    python3 stub_torch_ops.py torch-sys/libtch/torch_api_generated.cpp
"""

import re
import sys

MISSING = [
    "atg__flash_attention_forward_no_dropout_inplace",
    "atg__philox_key_fold_in",
    "atg__philox_key_split",
    "atg__philox_normal",
    "atg__philox_normal_",
    "atg__philox_normal_out",
    "atg__philox_uniform",
    "atg__philox_uniform_",
    "atg__philox_uniform_out",
    "atg__scaled_dot_product_attention_math_for_mps",
    "atg__upsample_lanczos2d_aa",
    "atg__upsample_lanczos2d_aa_backward",
    "atg__upsample_lanczos2d_aa_backward_grad_input",
    "atg__upsample_lanczos2d_aa_out",
    "atg__upsample_lanczos2d_aa_vec",
]


def main(path):
    text = open(path).read()
    for name in MISSING:
        # `void NAME(args) {\n  PROTECT(\n ... \n  )\n}`: keep the signature.
        pattern = re.compile(r"(\w[\w\s\*]*\b" + re.escape(name) + r"\([^)]*\) \{\n  PROTECT\().*?(\n  \)\n\})", re.S)
        text, count = pattern.subn(
            lambda m: m.group(1) + f'\n    throw std::runtime_error("{name[4:]} is not in this libtorch");' + m.group(2),
            text,
        )
        if count != 1:
            sys.exit(f"{name}: found {count} definitions")
    open(path, "w").write(text)


if __name__ == "__main__":
    main(sys.argv[1])
