"""Shallow models vs the all-ReLU ResNet18 (width 16) on Fashion-MNIST: ReLUs, MACs, depth, accuracy.

Reuses (or trains) the all-ReLU teacher of ``bench/pi_relu_budget.py``, then compares the ways a
model can become shallow at the same number of training epochs (``--epochs``), at the first seed
of ``--seeds`` (the headline recipe, ``anneal+ring``, and shallow+SENet at every seed):

* ``crop`` — merge, cut each merged kernel to its central 3×3 at once, fine-tune (the abrupt route);
* ``ring`` — merge exactly, fade the taps outside the central 3×3 to zero, cut, fine-tune;
* ``anneal+ring`` — first let the removed ReLUs' slope rise to 1 (the block learns to be linear),
  then merge exactly and fade the ring as above;
* ``anneal+ring+block-kd`` — the same with block-wise distillation (``beta`` 1);
* ``exact`` — the exact merge (5×5/7×7 kernels, for the honest MAC figure);

and SENet at half of the ReLUs of the headline recipe's shallow model. Figures are means over
seeds with their standard deviation; finished run folders are reused, so a killed benchmark
continues where it stopped. Writes ``bench/results/pi_shallow.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS, ensure_teacher, mean_sd, seeded, write_result

from trustlab.pi.config import ReductionConfig, ShallowConfig
from trustlab.pi.reductions import run_reduction
from trustlab.pi.shallow_models import run_shallow
from trustlab.runs import RunDir, finished


def recipes(epochs: int) -> dict[str, dict]:
    """Each recipe's stage epochs at a total of ``epochs``; the ``once`` ones run at the first seed only
    (the headline recipe's spread over seeds tells which of their differences are noise)."""
    half, quarter = epochs // 2, epochs // 4
    return {"crop": {"anneal_epochs": 0, "ring_epochs": 0, "finetune_epochs": epochs, "once": True},
            "ring": {"anneal_epochs": 0, "ring_epochs": half, "finetune_epochs": epochs - half, "once": True},
            "anneal+ring": {"anneal_epochs": quarter, "ring_epochs": half - quarter, "finetune_epochs": epochs - half},
            "anneal+ring+block-kd": {"anneal_epochs": quarter, "ring_epochs": half - quarter, "finetune_epochs": epochs - half,
                                     "beta": 1.0, "once": True},
            "exact": {"kernel": 0, "anneal_epochs": 0, "ring_epochs": 0, "finetune_epochs": epochs, "once": True}}


HEADLINE = "anneal+ring"  # the recipe of the headline and of shallow+SENet
RUNS = "runs/bench-pi-shallow-v2"


def folder(recipe: str) -> str:
    return recipe.replace("+", "-")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="runs/bench-pi-relu-budget/teacher")
    ap.add_argument("--runs", default=RUNS)
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--target", type=float, default=ShallowConfig.target_relu_reduction)
    ap.add_argument("--epochs", type=int, default=4, help="training epochs of every shallow recipe (all stages)")
    ap.add_argument("--limit", type=int, default=None, help="teacher training images (default: all)")
    ap.add_argument("--reduce-limit", type=int, default=20000, help="training images seen by each epoch")
    ap.add_argument("--seeds", default="0,1,2", help=f"seeds of {HEADLINE} and shallow+SENet (the first: every recipe)")
    args = ap.parse_args()
    if args.epochs < 4:
        ap.error("--epochs must be at least 4 (each recipe's stages need one)")
    table = recipes(args.epochs)
    seeds = [int(v) for v in args.seeds.split(",") if v]
    t0 = time.time()
    teacher_dir, runs = Path(args.teacher), Path(args.runs)
    teacher = ensure_teacher(teacher_dir, args.teacher_epochs, args.limit)
    per_seed: dict[str, list[dict]] = {name: [] for name in [*table, "shallow+senet"]}
    for seed in seeds:
        for name, stages in table.items():
            stages = dict(stages)
            if stages.pop("once", False) and seed != seeds[0]:
                continue
            d = seeded(runs, folder(name), seed, seeds[0])
            if not finished(d):
                run_shallow(ShallowConfig(teacher=str(teacher_dir), target_relu_reduction=args.target, train_limit=args.reduce_limit,
                                          seed=seed, **stages), d, resume=(d / "config.yaml").exists())
            per_seed[name].append(RunDir(d).summary())
        shallow_dir, joint_dir = seeded(runs, folder(HEADLINE), seed, seeds[0]), seeded(runs, "shallow-senet", seed, seeds[0])
        if not finished(joint_dir):
            budget = per_seed[HEADLINE][-1]["relus"] // 2
            run_reduction(ReductionConfig(method="senet", teacher=str(shallow_dir), budget=budget, search_epochs=1,
                                          finetune_epochs=1, train_limit=args.reduce_limit, seed=seed), joint_dir,
                          resume=(joint_dir / "config.yaml").exists())
        j = RunDir(joint_dir).summary()
        per_seed["shallow+senet"].append({**j, "relu_reduction": teacher["relus"] / j["relus"],
                                          "mac_reduction": teacher["macs"] / j["macs"],
                                          "acc_drop_points": 100 * (teacher["test_acc"] - j["test_acc"])})
    stats = {name: {k: mean_sd([s[k] for s in runs_]) for k in ("relu_reduction", "mac_reduction", "acc_drop_points",
                                                                   "test_acc", "relus", "macs")}
             for name, runs_ in per_seed.items()}
    sh = per_seed[HEADLINE][0]
    head = stats[HEADLINE]
    headline = {"recipe": HEADLINE,
                "relu_reduction": round(head["relu_reduction"]["mean"], 3),
                "mac_reduction": round(head["mac_reduction"]["mean"], 3),
                "acc_drop": round(head["acc_drop_points"]["mean"], 3),
                "acc_drop_sd": round(head["acc_drop_points"]["sd"], 3),
                "depth": sh["depth"], "teacher_depth": sh["teacher_depth"],
                "acc_drop_by_recipe": {n: {k: round(v, 3) for k, v in stats[n]["acc_drop_points"].items()} for n in table},
                "exact_merge_mac_reduction": round(stats["exact"]["mac_reduction"]["mean"], 3),
                "joint": {k: round(stats["shallow+senet"][k]["mean"], 3) for k in ("relu_reduction", "mac_reduction", "acc_drop_points")}
                | {"acc_drop_sd": round(stats["shallow+senet"]["acc_drop_points"]["sd"], 3)},
                "seeds": {f"{HEADLINE}, shallow+senet": seeds, "other recipes": seeds[:1]},
                "teacher_acc": teacher["test_acc"]}
    settings = {"data": "fashion-mnist" + (f" (first {args.limit} train images)" if args.limit else " 60,000/10,000"),
                "model": "ResNet18 width 0.25 (16/32/64/128)", "target_relu_reduction": args.target,
                "epochs_per_recipe": args.epochs, "recipes": table, "train_images_per_epoch": args.reduce_limit,
                "teacher": str(teacher_dir), "merged_blocks": sh["merged_blocks"], "seeds": seeds,
                "joint": f"SENet at half of the {HEADLINE} shallow model's ReLUs, 1 search + 1 fine-tuning epoch"}
    rows = [{"model": "all-ReLU", "relus": teacher["relus"], "macs": teacher["macs"], "depth": sh["teacher_depth"],
             "test_acc": teacher["test_acc"], "test_acc_sd": 0.0, "seeds": 1},
            *({"model": n, "relus": st["relus"]["mean"], "macs": st["macs"]["mean"], "depth": sh["depth"],
               "test_acc": st["test_acc"]["mean"], "test_acc_sd": st["test_acc"]["sd"], "seeds": st["test_acc"]["n"],
               **({"acc_after_merge": round(mean_sd([s["acc_after_merge"] for s in per_seed[n]])["mean"], 4)} if n in table else {})}
              for n, st in stats.items())]
    write_result("pi_shallow", headline, settings, rows=rows, stats=stats, minutes=round((time.time() - t0) / 60, 1))
    plot(rows)
    print(headline)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in rows:
        for ax, x in zip(axes, (r["relus"], r["macs"] / 1e6)):
            ax.errorbar([x], [100 * r["test_acc"]], yerr=[100 * r.get("test_acc_sd", 0.0)], fmt="o", ms=7, capsize=3,
                        label=f"{r['model']} ({r.get('seeds', 1)} seed{'s' if r.get('seeds', 1) > 1 else ''})")
    axes[0].set_xlabel("ReLUs (thousands)")
    axes[0].xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:g}"))
    axes[1].set_xlabel("MACs (millions)")
    for ax in axes:
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle("Shallow ResNet18 w16 on Fashion-MNIST")
    fig.tight_layout()
    fig.savefig(RESULTS / "pi_shallow.png", dpi=110)


if __name__ == "__main__":
    main()
