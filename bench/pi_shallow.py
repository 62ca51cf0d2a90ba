"""Shallow models vs the all-ReLU ResNet18 (width 16) on Fashion-MNIST: ReLUs, MACs, depth, accuracy.

Reuses (or trains) the all-ReLU teacher of ``bench/pi_relu_budget.py``; then, for each seed of
``--seeds``: shallow with trained 3x3 merged blocks (the MAC-saving option) and shallow followed
by SENet at half of the shallow model's ReLUs; once, shallow with the exact merge (5x5/7x7
kernels, for the honest MAC figure). Figures are means over seeds with their standard
deviation; finished run folders are reused, so a killed benchmark continues where it stopped.
Writes ``bench/results/pi_shallow.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS, ensure_teacher, mean_sd, seeded, write_result

from trustlab.pi.reduce import ReductionConfig, run_reduction
from trustlab.pi.shallow import ShallowConfig, run_shallow
from trustlab.runs import RunDir


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default="runs/bench-pi-relu-budget/teacher")
    ap.add_argument("--runs", default="runs/bench-pi-shallow")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--target", type=float, default=1.7)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="teacher training images (default: all)")
    ap.add_argument("--reduce-limit", type=int, default=20000, help="training images seen by each fine-tuning epoch")
    ap.add_argument("--seeds", default="0,1,2", help="seeds of the shallow and shallow+SENet models (the first: the "
                                                     "exact merge)")
    args = ap.parse_args()
    seeds = [int(v) for v in args.seeds.split(",") if v]
    t0 = time.time()
    teacher_dir, runs = Path(args.teacher), Path(args.runs)
    teacher = ensure_teacher(teacher_dir, args.teacher_epochs, args.limit)
    per_seed: dict[str, list[dict]] = {"shallow": [], "shallow_exact": [], "shallow+senet": []}
    for seed in seeds:
        for name, kernel in (("shallow", 3), ("shallow_exact", 0)):
            if kernel == 0 and seed != seeds[0]:
                continue
            d = seeded(runs, name, seed, seeds[0])
            if not (d / "summary.json").exists():
                run_shallow(ShallowConfig(teacher=str(teacher_dir), target_relu_reduction=args.target, kernel=kernel,
                                          finetune_epochs=args.finetune_epochs, train_limit=args.reduce_limit, seed=seed), d,
                            resume=(d / "config.yaml").exists())
            per_seed[name].append(RunDir(d).summary())
        shallow_dir, joint_dir = seeded(runs, "shallow", seed, seeds[0]), seeded(runs, "shallow_senet", seed, seeds[0])
        if not (joint_dir / "summary.json").exists():
            budget = per_seed["shallow"][-1]["relus"] // 2
            run_reduction(ReductionConfig(method="senet", teacher=str(shallow_dir), budget=budget, search_epochs=1,
                                          finetune_epochs=args.finetune_epochs - 1 or 1, train_limit=args.reduce_limit,
                                          seed=seed), joint_dir, resume=(joint_dir / "config.yaml").exists())
        j = RunDir(joint_dir).summary()
        per_seed["shallow+senet"].append({**j, "relu_reduction": teacher["relus"] / j["relus"],
                                          "mac_reduction": teacher["macs"] / j["macs"],
                                          "acc_drop_points": 100 * (teacher["test_acc"] - j["test_acc"])})
    stats = {name: {k: mean_sd([s[k] for s in runs_]) for k in ("relu_reduction", "mac_reduction", "acc_drop_points",
                                                                   "test_acc", "relus", "macs")}
             for name, runs_ in per_seed.items()}
    sh = per_seed["shallow"][0]
    headline = {"relu_reduction": round(stats["shallow"]["relu_reduction"]["mean"], 3),
                "mac_reduction": round(stats["shallow"]["mac_reduction"]["mean"], 3),
                "acc_drop": round(stats["shallow"]["acc_drop_points"]["mean"], 3),
                "acc_drop_sd": round(stats["shallow"]["acc_drop_points"]["sd"], 3),
                "depth": sh["depth"], "teacher_depth": sh["teacher_depth"],
                "exact_merge_mac_reduction": round(stats["shallow_exact"]["mac_reduction"]["mean"], 3),
                "exact_merge_acc_drop": round(stats["shallow_exact"]["acc_drop_points"]["mean"], 3),
                "joint": {k: round(stats["shallow+senet"][k]["mean"], 3) for k in ("relu_reduction", "mac_reduction", "acc_drop_points")}
                | {"acc_drop_sd": round(stats["shallow+senet"]["acc_drop_points"]["sd"], 3)},
                "seeds": {"shallow, shallow+senet": seeds, "shallow_exact": seeds[:1]},
                "teacher_acc": teacher["test_acc"]}
    settings = {"data": "fashion-mnist" + (f" (first {args.limit} train images)" if args.limit else " 60,000/10,000"),
                "model": "ResNet18 width 0.25 (16/32/64/128)", "target_relu_reduction": args.target,
                "finetune_epochs": args.finetune_epochs, "finetune_train_images": args.reduce_limit, "teacher": str(teacher_dir),
                "merged_blocks": sh["merged_blocks"], "seeds": seeds,
                "joint": "SENet at half of the shallow model's ReLUs, 1 search epoch"}
    rows = [{"model": "all-ReLU", "relus": teacher["relus"], "macs": teacher["macs"], "depth": sh["teacher_depth"],
             "test_acc": teacher["test_acc"], "test_acc_sd": 0.0, "seeds": 1},
            *({"model": n, "relus": st["relus"]["mean"], "macs": st["macs"]["mean"], "depth": sh["depth"],
               "test_acc": st["test_acc"]["mean"], "test_acc_sd": st["test_acc"]["sd"], "seeds": st["test_acc"]["n"]}
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
    axes[0].set_xlabel("ReLUs")
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
