"""Markdown rows of the decoder results of the command runs."""

import json
import sys

for name in sys.argv[1:]:
    m = json.load(open(f"/work/main/.cache/runs/fusion/ckpt/fusion-{name}/metrics.json"))["test"]["decoder"]
    for k, v in m.items():
        steps = " / ".join(f"{x:.2f}" for x in v["layers_per_step"])
        print(
            f"| `{name}` | {k.split('=')[1]} | {v['token_accuracy']:.3f} | {v['digit_accuracy']:.3f} | {steps} | {v['mean_layers']:.2f} | {v['decoder_macs_mean'] / 1e6:.2f} M |"
        )
