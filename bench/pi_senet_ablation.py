"""SENet at half the ReLUs: what each knob of its recipe is worth (ResNet18 width 16, Fashion-MNIST).

The base is the SENet-1/2 recipe of ``pi_relu_budget.py`` (1 search + 1 fine-tuning epoch of
20,000 images, activation alignment beta 1, KD temperature 4) on the same teacher, and its run
folders are shared with that benchmark (``--runs``), so its finished seeds are reused. Each
variant changes one thing: fine-tuning length, mask-search length, the alignment weight, the KD
temperature, and the two longer schedules together. Every variant runs every seed; the table gives the accuracy drop (mean +- sd) and its
change against the base, seed by seed. Resumable: finished run folders are reused. Writes
``bench/results/pi_senet_ablation.json`` and ``.png``.

    python bench/pi_senet_ablation.py              # about 70 minutes on 2 CPU cores beside a finished pi_relu_budget
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import RESULTS, ensure_teacher, mean_sd, seeded, write_result

from trustlab.pi.config import ReductionConfig
from trustlab.pi.reductions import run_reduction
from trustlab.runs import RunDir, finished

BASE = dict(search_epochs=1, finetune_epochs=1, beta=1.0, temperature=4.0)  # pi_relu_budget's SENet recipe
VARIANTS = {  # folder suffix: (what changes, the change)
    "": ("base (search 1, fine-tune 1, beta 1, T 4)", {}),
    "-ft2": ("fine-tuning 2 epochs", {"finetune_epochs": 2}),
    "-search2": ("mask search 2 epochs", {"search_epochs": 2}),
    "-beta0": ("no activation alignment (beta 0)", {"beta": 0.0}),
    "-t1": ("KD temperature 1", {"temperature": 1.0}),
    "-search2-ft2": ("mask search 2 + fine-tuning 2 epochs", {"search_epochs": 2, "finetune_epochs": 2}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bench-pi-relu-budget", help="shared with pi_relu_budget.py (teacher, base runs)")
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--reduce-limit", type=int, default=20000, help="training images seen by each epoch")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(v) for v in args.seeds.split(",") if v]
    runs = Path(args.runs)
    t0 = time.time()
    teacher_dir = runs / "teacher"
    teacher = ensure_teacher(teacher_dir, args.teacher_epochs, None, seeds[0])
    budget = teacher["relus"] // 2
    rows = []
    for seed in seeds:  # seed-major: an interrupted run leaves whole seeds, comparable across variants
        for suffix, (label, change) in VARIANTS.items():
            recipe = {**BASE, **change}
            out = seeded(runs, f"senet-2{suffix}", seed, seeds[0])
            if not finished(out):
                cfg = ReductionConfig(method="senet", teacher=str(teacher_dir), budget=budget, seed=seed,
                                      train_limit=args.reduce_limit, **recipe)
                run_reduction(cfg, out, resume=(out / "config.yaml").exists())
            s = RunDir(out).summary()
            rows.append({"variant": label, "seed": seed, "test_acc": s["test_acc"], "acc_drop_points": s["acc_drop_points"],
                         "epochs": recipe["search_epochs"] + recipe["finetune_epochs"]})
            print(rows[-1], flush=True)
    table = summarise(rows)
    base = table[VARIANTS[""][0]]
    best = min(table, key=lambda k: table[k]["acc_drop_points"]["mean"])
    headline = {"base_acc_drop": round(base["acc_drop_points"]["mean"], 3),
                "base_acc_drop_sd": round(base["acc_drop_points"]["sd"], 3),
                "best_variant": best, "best_acc_drop": round(table[best]["acc_drop_points"]["mean"], 3),
                "change_vs_base": {k: round(v["change_vs_base"]["mean"], 3) for k, v in table.items() if k != VARIANTS[""][0]},
                "teacher_acc": teacher["test_acc"], "budget": budget, "seeds": seeds}
    settings = {"data": "fashion-mnist (60,000/10,000); each reduction epoch sees the first reduce_limit training images",
                "model": "ResNet18 width multiplier 0.25 (stage widths 16/32/64/128), 1x28x28 input",
                "budget": "1/2 of the teacher's ReLUs, pixel masks", "base": BASE,
                "variants": {v[0]: v[1] for v in VARIANTS.values()}, "reduce_limit": args.reduce_limit, "seeds": seeds,
                "change_vs_base": "variant's accuracy drop minus the base's, per seed, then mean +- sd (negative: better)"}
    write_result("pi_senet_ablation", headline, settings, rows=rows, table=[{"variant": k, **v} for k, v in table.items()],
                 minutes_this_invocation=round((time.time() - t0) / 60, 1))
    plot(table, teacher)
    print(headline)


def summarise(rows: list[dict]) -> dict:
    """variant -> accuracy drop, test accuracy and the per-seed change against the base (mean, sd, n)."""
    base = {r["seed"]: r["acc_drop_points"] for r in rows if r["variant"] == VARIANTS[""][0]}
    out = {}
    for label, _ in VARIANTS.values():
        mine = [r for r in rows if r["variant"] == label]
        if not mine:
            continue
        paired = [r["acc_drop_points"] - base[r["seed"]] for r in mine if r["seed"] in base]
        out[label] = {"acc_drop_points": mean_sd([r["acc_drop_points"] for r in mine]),
                      "test_acc": mean_sd([r["test_acc"] for r in mine]),
                      "change_vs_base": mean_sd(paired) if paired else None, "epochs": mine[0]["epochs"]}
    return out


def plot(table: dict, teacher: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(table)
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    means = [table[k]["acc_drop_points"]["mean"] for k in labels]
    sds = [table[k]["acc_drop_points"]["sd"] for k in labels]
    ax.barh(range(len(labels)), means, xerr=sds, capsize=3, color=["0.5"] + ["C0"] * (len(labels) - 1))
    ax.axvline(0.5, color="k", ls="--", lw=1, label="target: 0.5 points")
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel(f"accuracy drop vs the teacher's {100 * teacher['test_acc']:.2f}% (points, mean ± sd)")
    ax.set_title("SENet at 1/2 of the ReLUs: one change at a time", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(RESULTS / "pi_senet_ablation.png", dpi=110)


if __name__ == "__main__":
    main()
