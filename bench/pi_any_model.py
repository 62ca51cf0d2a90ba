"""SENet vs SNL vs layer-drop on a model trustlab did not make, through the Python API, beside the built-in ResNet18.

The model is ``bench/cifar_resnet.py:resnet18_w16``: ResNet18 at width 0.25 written as the CIFAR
code of the SNL-era repositories writes it (``F.relu`` in ``forward``, ``out +=``), so every
ReLU is a functional call site that forward hooks never saw. The protocol is
``bench/pi_relu_budget.py``'s: a teacher of 4 epochs on the 60,000 Fashion-MNIST training images
(trained as a ``pi train`` run of the factory, seed 0), then each method at 1/2 and 1/4 of its
ReLUs with 1 search and 1 fine-tuning epoch of 20,000 images, seeds 0, 1, 2, called as a user
would: ``trustlab.pi.reduce(model, data, budget, method=...)``. The built-in ResNet18's figures
are read from ``bench/results/pi_relu_budget.json`` (same schedule and seeds) and set beside
these: per method and budget the accuracy difference against the seed spread, and the
SENet-over-SNL gap of each. Finished runs in ``--runs`` are reused, so a killed run continues.
Writes ``bench/results/pi_any_model.json`` and ``.png``.

    python bench/pi_any_model.py                 # the full protocol (about 45 minutes on 2 CPU cores)
    python bench/pi_any_model.py --limit 3000 --reduce-limit 2000 --seeds 0   # a smoke run
    python bench/pi_any_model.py --markdown      # the benchmark page's table (docs/benchmarks/pi.md) from the result file
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from common import RESULTS, accuracy_gap, ensure_teacher, mean_sd, seeded, write_result

import trustlab.pi as pi
from trustlab.data import load_classification
from trustlab.pi.methods import METHODS
from trustlab.pi.training import load_classifier
from trustlab.runs import RunDir, finished

FACTORY = str(Path(__file__).resolve().parent / "cifar_resnet.py") + ":resnet18_w16"
FRACTIONS = (2, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bench-pi-any-model")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--search-epochs", type=int, default=1)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="teacher training images (default: all 60,000)")
    ap.add_argument("--reduce-limit", type=int, default=20000, help="training images seen by each reduction epoch")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(v) for v in args.seeds.split(",") if v]
    runs = Path(args.runs)
    t0 = time.time()
    teacher = ensure_teacher(runs / "teacher", args.teacher_epochs, args.limit, seeds[0], model=FACTORY)
    minutes = {"teacher": round((time.time() - t0) / 60, 1)}
    model, _, _ = load_classifier(runs / "teacher")  # the user's trained model, as an nn.Module
    data = load_classification("fashion-mnist", limit=args.limit)
    total = teacher["relus"]
    rows = []
    for frac in FRACTIONS:
        for seed in seeds:
            for method in METHODS:
                out = seeded(runs, f"{method}-{frac}", seed, seeds[0])
                t1 = time.time()
                if not finished(out):
                    pi.reduce(model, data, total // frac, method=method, out=out, resume=(out / "config.yaml").exists(),
                              quiet=True, search_epochs=args.search_epochs, finetune_epochs=args.finetune_epochs,
                              seed=seed, train_limit=args.reduce_limit)
                    minutes[out.name] = round((time.time() - t1) / 60, 2)
                s = RunDir(out).summary()
                rows.append({"method": method, "fraction": f"1/{frac}", "seed": seed, "budget": total // frac,
                             "relus": s["relus"], "test_acc": s["test_acc"], "acc_drop_points": s["acc_drop_points"]})
                print(rows[-1], flush=True)
    builtin = json.loads((RESULTS / "pi_relu_budget.json").read_text())
    base_rows = [r for r in builtin["rows"] if r["fraction"] in {f"1/{f}" for f in FRACTIONS} and r["seed"] in seeds]
    compare = comparison(rows, base_rows)
    gaps = {f"1/{f}": {"functional": accuracy_gap(rows, "senet", "snl", f"1/{f}"),
                       "built-in": accuracy_gap(base_rows, "senet", "snl", f"1/{f}")}
            for f in FRACTIONS}
    within = [c for c in compare if abs(c["difference_points"]) <= 2 * max(c["spread_points"], 1e-9)]
    headline = {
        "teacher_acc": teacher["test_acc"], "builtin_teacher_acc": builtin["headline"]["teacher_acc"],
        "teacher_relus": total, "builtin_teacher_relus": builtin["headline"]["teacher_relus"],
        "senet_minus_snl": {f: {k: round(v["mean"], 3) for k, v in g.items()} for f, g in gaps.items()},
        "senet_minus_snl_sd": {f: {k: round(v["sd"], 3) for k, v in g.items()} for f, g in gaps.items()},
        "max_abs_acc_difference_points": round(max(abs(c["difference_points"]) for c in compare), 3),
        "cells_within_two_spreads": f"{len(within)}/{len(compare)}",
        "seeds": seeds,
    }
    settings = {"model": "bench/cifar_resnet.py:resnet18_w16 (functional-ReLU CIFAR ResNet18, width 0.25), through "
                         "FILE.py:FACTORY and trustlab.pi.reduce", "data": "fashion-mnist 60,000/10,000"
                + (f" (first {args.limit} train images)" if args.limit else ""),
                "teacher_epochs": args.teacher_epochs, "search_epochs": args.search_epochs,
                "finetune_epochs": args.finetune_epochs, "reduction_train_images": args.reduce_limit, "batch_size": 128,
                "seeds": seeds, "budgets": [total // f for f in FRACTIONS],
                "builtin": "bench/results/pi_relu_budget.json rows of the same budgets and seeds",
                "spread": "spread_points is the larger of the two models' standard deviations over seeds"}
    write_result("pi_any_model", headline, settings, rows=rows, comparison=compare, minutes_this_invocation=minutes,
                 total_minutes=round((time.time() - t0) / 60, 1))
    plot(rows, base_rows, teacher, builtin["headline"])
    print(headline)


def comparison(rows: list[dict], base: list[dict]) -> list[dict]:
    """Per method and budget: mean accuracy of each model over seeds, the difference, and the spread."""
    out = []
    for method in METHODS:
        for frac in FRACTIONS:
            key = f"1/{frac}"
            a = mean_sd([100 * r["test_acc"] for r in rows if (r["method"], r["fraction"]) == (method, key)])
            b = mean_sd([100 * r["test_acc"] for r in base if (r["method"], r["fraction"]) == (method, key)])
            out.append({"method": method, "fraction": key, "functional_acc": round(a["mean"], 3), "functional_sd": round(a["sd"], 3),
                        "builtin_acc": round(b["mean"], 3), "builtin_sd": round(b["sd"], 3),
                        "difference_points": round(a["mean"] - b["mean"], 3), "spread_points": round(max(a["sd"], b["sd"]), 3),
                        "n": [a["n"], b["n"]]})
    return out


def plot(rows: list[dict], base: list[dict], teacher: dict, builtin: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.8, 4.4))
    colors = dict(zip(METHODS, ("C0", "C1", "C2")))
    for label, data, style, star in (("functional ResNet18 (API)", rows, "-", teacher),
                                     ("built-in ResNet18", base, "--", {"relus": builtin["teacher_relus"], "test_acc": builtin["teacher_acc"]})):
        for method in METHODS:
            pts = []
            for frac in FRACTIONS:
                sel = [r for r in data if (r["method"], r["fraction"]) == (method, f"1/{frac}")]
                if sel:
                    acc = mean_sd([100 * r["test_acc"] for r in sel])
                    pts.append((mean_sd([r["relus"] for r in sel])["mean"], acc["mean"], acc["sd"]))
            pts.sort()
            ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], linestyle=style, marker="o",
                        capsize=3, color=colors[method], label=f"{method}, {label}")
        ax.scatter([star["relus"]], [100 * star["test_acc"]], marker="*" if style == "-" else "x", s=120, color="k",
                   label=f"all-ReLU, {label}")
    ax.set_xscale("log")
    ax.set_xlabel("ReLUs (log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Fashion-MNIST, ResNet18 w16: a user's functional-ReLU model vs the built-in one", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6.5, loc="lower right")
    fig.tight_layout()
    fig.savefig(RESULTS / "pi_any_model.png", dpi=110)


def markdown() -> str:
    """The benchmark page's table (docs/benchmarks/pi.md), from the result file."""
    doc = json.loads((RESULTS / "pi_any_model.json").read_text())
    lines = ["| method | budget | functional ResNet18 (API) | built-in ResNet18 | difference | larger sd |",
             "|---|---|---|---|---|---|"]
    for c in doc["comparison"]:
        lines.append(f"| {c['method']} | {c['fraction']} | {c['functional_acc']:.2f} ± {c['functional_sd']:.2f} | "
                     f"{c['builtin_acc']:.2f} ± {c['builtin_sd']:.2f} | {c['difference_points']:+.2f} | {c['spread_points']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--markdown"]:
        print(markdown())
    else:
        main()
