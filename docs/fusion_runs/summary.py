"""Print the fusion runs' test metrics as markdown rows (reads metrics.json of each run)."""

import json
import sys
from pathlib import Path

base = Path("/work/main/.cache/runs/fusion/ckpt")
for name in sys.argv[1:]:
    p = base / f"fusion-{name}" / "metrics.json"
    if not p.exists():
        print(f"{name}: missing")
        continue
    m = json.loads(p.read_text())
    t = m["test"]
    print(f"## {name}  (train {m['train_s']:.0f} s, test samples {t['samples']})")
    for k, v in t.items():
        if isinstance(v, dict) and "accuracy" in v:
            lay = " ".join(f"{mm[0]}={x:.2f}" for mm, x in v["fusion_layers_mean"].items())
            print(
                f"| {name} | {k} | {v['accuracy']:.4f} | {v['fusion_macs_mean'] / 1e6:.2f} M | {v['kept_token_ratio']:.3f} | {v['kept_head_ratio']:.3f} | {lay} |"
            )
    if "decoder" in t:
        for k, v in t["decoder"].items():
            print(
                f"| decoder {k} | tok {v['token_accuracy']:.4f} | digit {v['digit_accuracy']:.4f} | layers/step {v['layers_per_step']} | mean {v['mean_layers']:.2f} | {v['decoder_macs_mean'] / 1e6:.2f} M |"
            )
    print(
        "hist",
        {
            k: v["fusion_layer_hist"]
            for k, v in t.items()
            if isinstance(v, dict) and "fusion_layer_hist" in v and k.startswith("mue_q0.5")
        },
    )
