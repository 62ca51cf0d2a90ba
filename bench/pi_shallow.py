"""Shallow models vs the all-ReLU ResNet18 (width 16) on Fashion-MNIST: ReLUs, MACs, depth, accuracy.

Reuses (or trains) the all-ReLU teacher of ``bench/pi_relu_budget.py``; then, in one run:
shallow with trained 3x3 merged blocks (the MAC-saving option), shallow with the exact merge
(5x5/7x7 kernels, for the honest MAC figure), and shallow followed by SENet at half of the
shallow model's ReLUs. Writes ``bench/results/pi_shallow.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS, ensure_teacher, write_result

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
    args = ap.parse_args()
    t0 = time.time()
    teacher_dir, runs = Path(args.teacher), Path(args.runs)
    teacher = ensure_teacher(teacher_dir, args.teacher_epochs, args.limit)
    out = {}
    for name, kernel in (("shallow", 3), ("shallow_exact", 0)):
        d = runs / name
        if not (d / "summary.json").exists():
            run_shallow(ShallowConfig(teacher=str(teacher_dir), target_relu_reduction=args.target, kernel=kernel,
                                      finetune_epochs=args.finetune_epochs, train_limit=args.reduce_limit), d,
                        resume=(d / "config.yaml").exists())
        out[name] = RunDir(d).summary()
    joint_dir = runs / "shallow_senet"
    if not (joint_dir / "summary.json").exists():
        budget = out["shallow"]["relus"] // 2
        run_reduction(ReductionConfig(method="senet", teacher=str(runs / "shallow"), budget=budget, search_epochs=1,
                                      finetune_epochs=args.finetune_epochs - 1 or 1, train_limit=args.reduce_limit), joint_dir,
                      resume=(joint_dir / "config.yaml").exists())
    j = RunDir(joint_dir).summary()
    sh = out["shallow"]
    joint = {"relu_reduction": teacher["relus"] / j["relus"], "mac_reduction": teacher["macs"] / j["macs"],
             "acc_drop": 100 * (teacher["test_acc"] - j["test_acc"]), "relus": j["relus"], "test_acc": j["test_acc"]}
    headline = {"relu_reduction": round(sh["relu_reduction"], 3), "mac_reduction": round(sh["mac_reduction"], 3),
                "acc_drop": round(sh["acc_drop_points"], 3), "depth": sh["depth"], "teacher_depth": sh["teacher_depth"],
                "exact_merge_mac_reduction": round(out["shallow_exact"]["mac_reduction"], 3),
                "exact_merge_acc_drop": round(out["shallow_exact"]["acc_drop_points"], 3),
                "joint": {k: round(v, 3) if isinstance(v, float) else v for k, v in joint.items()},
                "teacher_acc": teacher["test_acc"]}
    settings = {"data": "fashion-mnist" + (f" (first {args.limit} train images)" if args.limit else " 60,000/10,000"),
                "model": "ResNet18 width 0.25 (16/32/64/128)", "target_relu_reduction": args.target,
                "finetune_epochs": args.finetune_epochs, "finetune_train_images": args.reduce_limit, "teacher": str(teacher_dir),
                "merged_blocks": sh["merged_blocks"], "joint": "SENet at half of the shallow model's ReLUs, 1 search epoch"}
    rows = [{"model": "all-ReLU", "relus": teacher["relus"], "macs": teacher["macs"], "depth": sh["teacher_depth"], "test_acc": teacher["test_acc"]},
            *({"model": n, "relus": s["relus"], "macs": s["macs"], "depth": s["depth"], "test_acc": s["test_acc"]} for n, s in out.items()),
            {"model": "shallow+senet", "relus": j["relus"], "macs": j["macs"], "depth": sh["depth"], "test_acc": j["test_acc"]}]
    write_result("pi_shallow", headline, settings, rows=rows, minutes=round((time.time() - t0) / 60, 1))
    plot(rows)
    print(headline)


def plot(rows: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in rows:
        axes[0].scatter(r["relus"], 100 * r["test_acc"], s=60, label=r["model"])
        axes[1].scatter(r["macs"] / 1e6, 100 * r["test_acc"], s=60, label=r["model"])
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
