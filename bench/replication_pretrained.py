"""Steps per second of ``replication train --pretrained`` on random Stable Diffusion pipelines, per device.

The pipelines have SD's architecture at small sizes (:func:`trustlab.replication.pretrained.save_random_pipeline`):
``tiny`` (UNet widths 16, 32; the tests' pipeline) and ``small`` (UNet widths 32, 64, 128, 128,
cross-attention in the upper three levels). Each is fine-tuned in latent space on 64 emoji at
``--size`` (the plain UNet, no mitigation: the loop's cost is the UNet's), for
``--steps`` steps of ``--batch-size``; the figure is steps over the loop's own seconds (the
run summary's minutes, without loading). On a GPU add ``--device cuda --bf16`` (and run
under torchrun for several GPUs). Writes ``bench/results/replication_pretrained[_<device>].json``.

    python bench/replication_pretrained.py                       # CPU, about 3 minutes on 2 cores
    python bench/replication_pretrained.py --device cuda --bf16  # a GPU
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import write_result

from trustlab.replication.config import CaptionDataConfig, DiffusionConfig
from trustlab.replication.pretrained import save_random_pipeline
from trustlab.replication.training import train_diffusion

PIPELINES = {"tiny": (16, 32), "small": (32, 64, 128, 128)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bench-replication-pretrained")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--bf16", action="store_true")
    args = ap.parse_args()
    runs = Path(args.runs)
    rows, t0 = {}, time.time()
    for name, widths in PIPELINES.items():
        pipe = save_random_pipeline(runs / f"pipeline-{name}", unet_widths=widths)
        out = runs / f"{name}-{args.device}{'-bf16' if args.bf16 else ''}"
        shutil.rmtree(out, ignore_errors=True)  # a timing, not a result to resume
        cfg = DiffusionConfig(data=CaptionDataConfig(n=64, size=args.size), pretrained=str(pipe), steps=args.steps,
                              batch_size=args.batch_size, checkpoint_every=0, device=args.device, bf16=args.bf16)
        s = train_diffusion(cfg, out, quiet=True).summary()
        rows[name] = {"unet_widths": list(widths), "parameters": s["parameters"], "device": s["device"],
                      "steps": s["steps"], "steps_per_s": s["steps"] / (60 * s["minutes"]),
                      "images_per_s": s["steps"] * args.batch_size / (60 * s["minutes"])}
        print(f"{name}: {rows[name]['parameters']:,} parameters, {rows[name]['steps_per_s']:.2f} steps/s "
              f"({rows[name]['images_per_s']:.1f} images/s) on {s['device']}", flush=True)
    headline = {f"steps_per_s_{name}": r["steps_per_s"] for name, r in rows.items()}
    settings = {"size": args.size, "steps": args.steps, "batch_size": args.batch_size, "device": args.device,
                "bf16": args.bf16, "data": "64 emoji, unique captions", "pipelines": {k: list(v) for k, v in PIPELINES.items()},
                "minutes": (time.time() - t0) / 60}
    suffix = "" if args.device == "cpu" else f"_{args.device.split(':')[0]}"
    print(write_result(f"replication_pretrained{suffix}", headline, settings, results=rows))


if __name__ == "__main__":
    main()
