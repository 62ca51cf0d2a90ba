"""SENet vs SNL vs layer-drop at 1/2, 1/4, 1/8, 1/16 of the all-ReLU count (ResNet18 width 16, Fashion-MNIST).

One all-ReLU teacher is trained, then every method reduces it at every budget with the same
epochs (``--search-epochs`` + ``--finetune-epochs``) and seeds: every seed of ``--seeds`` at the
1/2 and 1/4 budgets (where the methods differ by less than a point), the first at 1/8 and 1/16.
Tables and the headline are means over seeds, with the standard deviation beside them. Run
folders go to ``--runs`` and are reused when complete, so a killed benchmark continues where it
stopped. Writes ``bench/results/pi_relu_budget.json`` and ``.png``.

    python bench/pi_relu_budget.py                 # the full protocol (about 70 minutes on 2 CPU cores)
    python bench/pi_relu_budget.py --limit 3000    # a smoke run on a subset
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS, accuracy_gap, ensure_teacher, mean_sd, seeded, write_result

from trustlab.pi.methods import METHODS
from trustlab.pi.config import ReductionConfig
from trustlab.pi.reductions import run_reduction
from trustlab.runs import RunDir, finished

FRACTIONS = (2, 4, 8, 16)
SEEDED = (2, 4)  # the budgets run with every seed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bench-pi-relu-budget")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--search-epochs", type=int, default=1)
    ap.add_argument("--finetune-epochs", type=int, default=1)
    ap.add_argument("--limit", type=int, default=None, help="teacher training images (default: all 60,000)")
    ap.add_argument("--reduce-limit", type=int, default=20000, help="training images seen by each reduction epoch")
    ap.add_argument("--seeds", default="0,1,2", help="reduction seeds at the 1/2 and 1/4 budgets (the first: teacher, "
                                                     "1/8 and 1/16)")
    args = ap.parse_args()
    seeds = [int(v) for v in args.seeds.split(",") if v]
    runs = Path(args.runs)
    t0 = time.time()
    teacher_dir = runs / "teacher"
    teacher = ensure_teacher(teacher_dir, args.teacher_epochs, args.limit, seeds[0])
    total = teacher["relus"]
    rows = []
    for frac in FRACTIONS:
        budget = total // frac
        for seed in seeds if frac in SEEDED else seeds[:1]:
            for method in METHODS:
                out = seeded(runs, f"{method}-{frac}", seed, seeds[0])
                if not finished(out):
                    cfg = ReductionConfig(method=method, teacher=str(teacher_dir), budget=budget, search_epochs=args.search_epochs,
                                          finetune_epochs=args.finetune_epochs, seed=seed, train_limit=args.reduce_limit)
                    run_reduction(cfg, out, resume=(out / "config.yaml").exists())
                s = RunDir(out).summary()
                rows.append({"method": method, "fraction": f"1/{frac}", "seed": seed, "budget": budget, "relus": s["relus"],
                             "test_acc": s["test_acc"], "acc_drop_points": s["acc_drop_points"]})
                print(rows[-1], flush=True)
    table = summarise(rows)
    drop = {k: v["acc_drop_points"] for k, v in table.items()}
    gap = {f: accuracy_gap(rows, "senet", "snl", f"1/{f}") for f in FRACTIONS}
    headline = {
        "senet_half_acc_drop": round(drop[("senet", "1/2")]["mean"], 3),
        "senet_half_acc_drop_sd": round(drop[("senet", "1/2")]["sd"], 3),
        "senet_minus_snl_min": round(min(g["mean"] for g in gap.values()), 3),
        "senet_minus_snl": {f"1/{f}": {k: round(v, 3) for k, v in g.items()} for f, g in gap.items()},
        "seeds": {"1/2, 1/4": seeds, "1/8, 1/16": seeds[:1]},
        "teacher_acc": teacher["test_acc"],
        "teacher_relus": total,
    }
    settings = {"data": "fashion-mnist train/test" + (f" (first {args.limit} train images)" if args.limit else " (60,000/10,000)"),
                "model": "ResNet18 width multiplier 0.25 (stage widths 16/32/64/128), 1x28x28 input",
                "teacher_epochs": args.teacher_epochs, "search_epochs": args.search_epochs,
                "finetune_epochs": args.finetune_epochs, "reduction_train_images": args.reduce_limit,
                "batch_size": 128, "seeds": seeds, "seeded_fractions": [f"1/{f}" for f in SEEDED],
                "budgets": [total // f for f in FRACTIONS],
                "note": "schedules are far shorter than the papers' (hundreds of epochs on CIFAR): each reduction epoch sees the "
                        "first reduction_train_images training images; same epochs for every method; test on all 10,000"}
    write_result("pi_relu_budget", headline, settings, rows=rows,
                 table=[{"method": m, "fraction": f, **v} for (m, f), v in table.items()],
                 minutes=round((time.time() - t0) / 60, 1))
    plot(rows, teacher)
    print(headline)


def summarise(rows: list[dict]) -> dict:
    """(method, fraction) -> mean, sd and count over seeds of ReLUs, test accuracy and accuracy drop."""
    keys = sorted({(r["method"], r["fraction"]) for r in rows}, key=lambda k: (list(METHODS).index(k[0]), int(k[1][2:])))
    return {k: {fig: mean_sd([r[fig] for r in rows if (r["method"], r["fraction"]) == k])
                for fig in ("relus", "test_acc", "acc_drop_points")} for k in keys}


def plot(rows: list[dict], teacher: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    table = summarise(rows)
    for method in METHODS:
        pts = sorted((v["relus"]["mean"], 100 * v["test_acc"]["mean"], 100 * v["test_acc"]["sd"])
                     for (m, _), v in table.items() if m == method and v["relus"]["mean"] > 0)
        linear = [100 * v["test_acc"]["mean"] for (m, _), v in table.items() if m == method and v["relus"]["mean"] == 0]
        label = method + (f" (and {linear[0]:.1f}% with 0 ReLUs)" if linear else "")
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3, label=label)
    ax.scatter([teacher["relus"]], [100 * teacher["test_acc"]], marker="*", s=160, color="k", label="all-ReLU")
    ax.set_xscale("log")
    ax.set_xlabel("ReLUs (log)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("ResNet18 w16, Fashion-MNIST: accuracy vs ReLUs (mean ± sd over seeds)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "pi_relu_budget.png", dpi=110)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["--plot-only"]:  # redraw the figure from the result file
        import json

        doc = json.loads((RESULTS / "pi_relu_budget.json").read_text())
        plot(doc["rows"], {"relus": doc["headline"]["teacher_relus"], "test_acc": doc["headline"]["teacher_acc"]})
    else:
        main()
