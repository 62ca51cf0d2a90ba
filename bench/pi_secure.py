"""Secure inference cost of reduced models on SPU (CHEETAH, SEMI2K): latency, bytes, rounds.

Models come from the other PI benchmarks' run folders (run them first): the all-ReLU ResNet18
(width 16) on Fashion-MNIST, SENet at half of its ReLUs, and the shallow model; the SENet model
is also run with the naive masked ReLU. Weights are secret-shared (the real setting). Writes
``bench/results/pi_secure.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import time

from common import RESULTS, write_result
from pi_shallow import HEADLINE, RUNS, folder

from trustlab.errors import ConfigError
from trustlab.pi.secure import secure_infer
from trustlab.runs import finished


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all-relu", default="runs/bench-pi-relu-budget/teacher")
    ap.add_argument("--senet-half", default="runs/bench-pi-relu-budget/senet-2")
    ap.add_argument("--shallow", default=f"{RUNS}/{folder(HEADLINE)}", help=f"the {HEADLINE} shallow model")
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--protocols", default="cheetah,semi2k")
    args = ap.parse_args()
    models = {"all-relu": args.all_relu, "senet-half": args.senet_half, "shallow": args.shallow}
    for name, path in models.items():
        if not finished(path):
            raise ConfigError(f"{name} run {path} is missing: run bench/pi_relu_budget.py and bench/pi_shallow.py first")
    t0 = time.time()
    rows = []
    for protocol in args.protocols.split(","):
        for name, path in models.items():
            rows.append({"model": name, "relu_mode": "gather", **_measure(path, protocol, args.images, "gather")})
            print(rows[-1]["model"], protocol, rows[-1]["total_bytes"], flush=True)
        rows.append({"model": "senet-half", "relu_mode": "naive", **_measure(models["senet-half"], protocol, args.images, "naive")})
    get = {(r["model"], r["relu_mode"], r["protocol"]): r for r in rows}
    headline = {}
    if "cheetah" in args.protocols:
        full, half, naive = get[("all-relu", "gather", "cheetah")], get[("senet-half", "gather", "cheetah")], get[("senet-half", "naive", "cheetah")]
        ideal = (full["linear_bytes"] + full["nonlinear_bytes"]) / (full["linear_bytes"] + full["nonlinear_bytes"] / 2)
        measured = full["total_bytes"] / half["total_bytes"]
        headline = {"cheetah_nonlinear_bytes_ratio_senet_half": round(full["nonlinear_bytes"] / half["nonlinear_bytes"], 3),
                    "cheetah_total_bytes_ratio_senet_half": round(measured, 3), "cheetah_total_bytes_ideal_ratio": round(ideal, 3),
                    "cheetah_total_bytes_efficiency": round(measured / ideal, 3),
                    "cheetah_latency_ratio_senet_half": round(full["execution_seconds_per_image"] / half["execution_seconds_per_image"], 3),
                    "cheetah_wall_ratio_senet_half_with_compilation": round(full["seconds_per_image"] / half["seconds_per_image"], 3),
                    "naive_mask_bytes_saving": round(1 - naive["nonlinear_bytes"] / full["nonlinear_bytes"], 3)}
    settings = {"models": models, "images": args.images, "weights": "secret-shared", "field": "FM64",
                "simulator": "spu.utils.simulation (threads in one process)",
                "nonlinear_ops": "comparisons and the ReLU multiplexer multiply (pphlo.less/greater/select/multiply)",
                "note": "latency ratio from SPU's execution time; the wall ratio includes compilation; bytes are party 0's sent + received"}
    write_result("pi_secure", headline, settings, rows=rows, minutes=round((time.time() - t0) / 60, 1))
    plot(rows)
    print(headline)


def _measure(path: str, protocol: str, images: int, relu_mode: str) -> dict:
    r = secure_infer(path, protocol, images, "secret", relu_mode)
    return {k: r[k] for k in ("protocol", "relus", "compared_elements_per_image", "same_top1_as_plaintext", "max_abs_logit_error",
                              "seconds_per_image", "execution_seconds_per_image", "total_bytes", "nonlinear_bytes", "linear_bytes", "rounds")}


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = sorted({r["protocol"] for r in rows})
    fig, axes = plt.subplots(1, len(protocols), figsize=(5.5 * len(protocols), 3.8), squeeze=False)
    for ax, p in zip(axes[0], protocols):
        sub = [r for r in rows if r["protocol"] == p]
        labels = [f"{r['model']}\n({r['relu_mode']})" for r in sub]
        lin = [r["linear_bytes"] / 1e6 for r in sub]
        non = [r["nonlinear_bytes"] / 1e6 for r in sub]
        ax.bar(labels, lin, label="linear")
        ax.bar(labels, non, bottom=lin, label="non-linear")
        ax.set_ylabel("MB per run (party 0)")
        ax.set_title(p)
        ax.tick_params(axis="x", labelsize=7)
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "pi_secure.png", dpi=110)


if __name__ == "__main__":
    main()
