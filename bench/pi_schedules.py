"""The private-inference claims at longer schedules: every method at its own schedule, fine-tuning swept.

A user's script on the Python API (``trustlab.pi.reduce`` / ``trustlab.pi.shallow``) with the
all-ReLU teacher (ResNet18 width 16, Fashion-MNIST) trained for ``--teacher-epochs`` on all 60,000
training images, shared by every method:

* ``senet``: its three stages (sensitivity, ``--search-epochs`` of top-k mask search, distillation
  with PRAM);
* ``snl``: the search of SNL's public code (``snl_schedule="until-budget"``: epoch by epoch until
  the α above 1e-2 fit the budget, λ ×1.1 when the count stalls, at most ``--snl-cap`` epochs; the
  epochs run and whether the cap was hit are in the rows), then distillation;
* ``layerdrop``: whole ReLU layers linearised, least critical first; it does not search, so its
  ``--search-epochs`` go to distillation (the same training as SENet's);
* ``shallow``: anneal + ring (one epoch each) + fine-tuning, at 1.7× fewer ReLUs;

each at 1/2 and 1/4 of the teacher's ReLUs (shallow at its own count) and at every fine-tuning
length of ``--lengths``; the longest with every seed of ``--seeds``, the others with the first.
An epoch of a reduction is ``--reduce-limit`` training images. The search (or anneal and ring)
does not depend on the fine-tuning length: a longer fine-tuning starts from a copy of the
shortest one's finished search checkpoints, so each search is paid for once per seed.

Finished run folders are reused, so a killed benchmark continues where it stopped (each run
resumes from its last checkpoint); the minutes of each run are kept beside them. Writes
``bench/results/pi_schedules.json`` and ``.png`` (accuracy against ReLUs per fine-tuning length);
``--finished-only`` writes them from the runs finished so far: the headline at the longest length where
every method and budget has a finished run (over the seeds finished), the missing runs under ``partial``.

The default lengths (1 and 3 fine-tuning epochs, the longest with three seeds) come closest to a budget of
about five hours: an epoch of a reduction takes about two minutes here, SNL's search 4 epochs to 1/2 of the
ReLUs, and 1, 3 and 9 would take about nine hours.

    python bench/pi_schedules.py                       # the full protocol (about 6 hours on 2 CPU cores, the teacher 1.5)
    python bench/pi_schedules.py --finished-only       # the result file of the runs finished so far
    python bench/pi_schedules.py --limit 2000 --reduce-limit 1000 --lengths 1,2 --teacher-epochs 1   # a smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import shutil
import signal
import sys
import time
from pathlib import Path

from common import RESULTS, accuracy_gap, ensure_teacher, mean_sd, write_result

import trustlab.pi as pi
from trustlab.data import load_classification
from trustlab.pi.load import load_pi_model
from trustlab.runs import RunDir, atomic_write_json, finished

METHODS = ("senet", "snl", "layerdrop", "shallow")
FRACTIONS = (2, 4)
SHARED_STAGES = ("search", "anneal", "ring")  # checkpoints that do not depend on the fine-tuning length
SHALLOW_TARGET = 1.7
SNL_LAMBDA_PROBE = (  # why SNL's λ starts at 1e-4: ReLUs with α above 1e-2 after each search epoch at 1/4, seed 0, from
    # the snl_search table of pi.reduce(teacher, data, relus // 4, method="snl", snl_schedule="until-budget",
    # snl_lambda=λ, seed=0, train_limit=20000) run before this benchmark's runs and stopped after two epochs
    "1e-5 (SNL's public scripts, there with Adam at lr 1e-3): 107,405 and 105,664 of 108,544 after one and two "
    "epochs, hundreds of epochs to the budget; 1e-3: 20,808 after one, below both budgets, a one-epoch search; "
    "1e-4: 93,388 and 69,806 after one and two")


def settings_of(method: str, args, length: int, seed: int) -> dict:
    """The Python API settings of one run: each method at its own schedule convention."""
    common = {"finetune_epochs": length, "seed": seed, "train_limit": args.reduce_limit}
    if method == "shallow":
        return {**common, "anneal_epochs": 1, "ring_epochs": 1, "target_relu_reduction": SHALLOW_TARGET}
    if method == "snl":
        return {**common, "search_epochs": args.snl_cap, "snl_schedule": "until-budget", "snl_lambda": args.snl_lambda}
    return {**common, "search_epochs": args.search_epochs}


def plan(args, seeds: list[int], lengths: list[int]) -> list[dict]:
    """Every run, shortest fine-tuning first (so the longer ones find its search to copy)."""
    jobs = []
    for length in lengths:
        for seed in seeds if length == lengths[-1] else seeds[:1]:
            for method in METHODS:
                for frac in (None,) if method == "shallow" else FRACTIONS:
                    name = f"{method}{'' if frac is None else f'-{frac}'}-ft{length}-s{seed}"
                    jobs.append({"name": name, "method": method, "fraction": frac, "length": length, "seed": seed})
    return jobs


def seed_search(runs: Path, job: dict, lengths: list[int]) -> None:
    """Copy the finished search (or anneal and ring) checkpoints of the same run at the shortest length."""
    out = runs / job["name"]
    source = runs / job["name"].replace(f"-ft{job['length']}-", f"-ft{lengths[0]}-")
    if job["length"] == lengths[0] or (out / "config.yaml").exists() or not finished(source):
        return
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    for tag in SHARED_STAGES:
        for suffix in (".safetensors", ".json"):
            f = source / "checkpoints" / f"{tag}{suffix}"
            if f.exists():
                shutil.copy2(f, out / "checkpoints" / f.name)
    if (source / "snl_search.json").exists():
        shutil.copy2(source / "snl_search.json", out / "snl_search.json")


@contextlib.contextmanager
def timed(minutes: dict, key: str, path: Path):
    """Add the wall-clock minutes of the block to ``minutes[key]`` and save them, also when the
    block is interrupted (Ctrl-C, SIGTERM), so a run that spans invocations counts each of them."""
    t = time.time()
    try:
        yield
    finally:
        minutes[key] = round(minutes.get(key, 0) + (time.time() - t) / 60, 1)
        atomic_write_json(path, minutes)


def run_one(runs: Path, job: dict, args, teacher, data, total: int, lengths: list[int]) -> None:
    """Run (or resume) one job through the Python API."""
    out = runs / job["name"]
    seed_search(runs, job, lengths)
    cfg = settings_of(job["method"], args, job["length"], job["seed"])
    if job["method"] == "shallow":
        pi.shallow(teacher, data, out=out, resume=out.exists(), quiet=args.quiet, **cfg)
    else:
        pi.reduce(teacher, data, total // job["fraction"], method=job["method"], out=out, resume=out.exists(), quiet=args.quiet, **cfg)


def row_of(runs: Path, job: dict, minutes: dict) -> dict:
    s = RunDir(runs / job["name"]).summary()
    row = {k: job[k] for k in ("method", "length", "seed")}
    row.update(fraction=f"1/{job['fraction']}" if job["fraction"] else f"shallow {SHALLOW_TARGET}x", relus=s["relus"],
               test_acc=s["test_acc"], acc_drop_points=s["acc_drop_points"], minutes=minutes.get(job["name"]))
    if job["method"] == "snl":
        row.update(search_epochs_run=s["search_epochs_run"], search_cap_hit=s["search_cap_hit"])
    return row


def iso_accuracy_ratio(snl_points: list[tuple[int, float]], relus: int, acc: float) -> dict:
    """How many times fewer ReLUs SENet needs for SNL's accuracy: the ReLU count at which SNL's
    curve (log-linear between its points, the all-ReLU teacher as its top) reaches ``acc``, over ``relus``.
    Beyond the curve's ends the ratio is a bound (``bound``: "at least" or "at most")."""
    pts = sorted(snl_points)
    if acc <= pts[0][1]:
        return {"ratio": pts[0][0] / relus, "bound": "at most"}
    for (r0, a0), (r1, a1) in zip(pts, pts[1:]):
        if a0 <= acc <= a1 and a1 > a0:
            t = (acc - a0) / (a1 - a0)
            return {"ratio": math.exp(math.log(r0) + t * (math.log(r1) - math.log(r0))) / relus, "bound": None}
    return {"ratio": pts[-1][0] / relus, "bound": "at least"}


def headline_of(rows: list[dict], teacher: dict, longest: int) -> dict:
    """The claims at the longest fine-tuning, means over its seeds."""
    at = [r for r in rows if r["length"] == longest]

    def acc(method, fraction):
        return mean_sd([r["test_acc"] for r in at if r["method"] == method and r["fraction"] == fraction])

    total = teacher["relus"]
    snl = [(total // f, acc("snl", f"1/{f}")["mean"]) for f in FRACTIONS] + [(total, teacher["test_acc"])]
    shallow = [r for r in at if r["method"] == "shallow"]
    return {
        "finetune_epochs": longest,
        "senet_relu_ratio_at_iso_accuracy": iso_accuracy_ratio(snl, total // 4, acc("senet", "1/4")["mean"]),
        "senet_minus_snl": {f"1/{f}": accuracy_gap(at, "senet", "snl", f"1/{f}") for f in FRACTIONS},
        "senet_minus_layerdrop": {"1/2": accuracy_gap(at, "senet", "layerdrop", "1/2")},
        "shallow_acc_drop_points": mean_sd([r["acc_drop_points"] for r in shallow]),
        "shallow_relu_reduction": total / shallow[0]["relus"] if shallow else None,
        "teacher_acc": teacher["test_acc"],
        "teacher_relus": total,
    }


def by_length(rows: list[dict]) -> list[dict]:
    """Mean and sd over seeds of accuracy and ReLUs for each method, budget and fine-tuning length."""
    keys = sorted({(r["method"], r["fraction"], r["length"]) for r in rows}, key=lambda k: (METHODS.index(k[0]), k[1], k[2]))
    return [{"method": m, "fraction": f, "length": n,
             **{fig: mean_sd([r[fig] for r in rows if (r["method"], r["fraction"], r["length"]) == (m, f, n)])
                for fig in ("test_acc", "relus")}} for m, f, n in keys]


def teacher_curve(teacher_dir: Path) -> list[dict]:
    """The teacher's test accuracy per epoch: whether it converged."""
    return [{"epoch": m["epoch"], "test_acc": m["test_acc"]} for m in RunDir(teacher_dir).metrics() if "test_acc" in m]


def plot(table: list[dict], teacher: dict, lengths: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.8), sharey=True, squeeze=False)
    for ax, length in zip(axes[0], lengths):
        for method in METHODS:
            pts = sorted((t["relus"]["mean"], 100 * t["test_acc"]["mean"], 100 * t["test_acc"]["sd"])
                         for t in table if t["method"] == method and t["length"] == length)
            if pts:
                ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                            label=method)
        ax.scatter([teacher["relus"]], [100 * teacher["test_acc"]], marker="*", s=150, color="k", label="all-ReLU teacher")
        ax.set_xscale("log")
        ax.set_xlabel("ReLUs (log)")
        ax.set_title(f"fine-tuning {length} epoch{'s' if length > 1 else ''}", fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.suptitle("ResNet18 w16, Fashion-MNIST: accuracy vs ReLUs as fine-tuning grows (mean ± sd over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / "pi_schedules.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bench-pi-schedules")
    ap.add_argument("--teacher-epochs", type=int, default=15)
    ap.add_argument("--limit", type=int, default=None, help="teacher training images (default: all 60,000)")
    ap.add_argument("--reduce-limit", type=int, default=20000, help="training images in each reduction epoch")
    ap.add_argument("--lengths", default="1,3", help="fine-tuning epochs, shortest first")
    ap.add_argument("--search-epochs", type=int, default=2, help="SENet's mask search (layer-drop: extra distillation)")
    ap.add_argument("--snl-cap", type=int, default=20, help="the most search epochs SNL may take to reach the budget")
    ap.add_argument("--snl-lambda", type=float, default=1e-4, help="SNL's initial penalty weight (see SNL_LAMBDA_PROBE)")
    ap.add_argument("--seeds", default="0,1,2", help="seeds at the longest fine-tuning (the first: all others)")
    ap.add_argument("--finished-only", action="store_true",
                    help="train nothing: write the result file from the finished runs, marked partial")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a terminated run still saves its minutes
    seeds = [int(v) for v in args.seeds.split(",") if v]
    lengths = sorted(int(v) for v in args.lengths.split(",") if v)
    runs = Path(args.runs)
    t0 = time.time()
    teacher_dir = runs / "teacher"
    minutes_path = runs / "minutes.json"
    minutes = json.loads(minutes_path.read_text()) if minutes_path.exists() else {}
    training = not finished(teacher_dir)
    if training and args.finished_only:
        raise SystemExit(f"no finished teacher in {runs}: run without --finished-only first")
    with timed(minutes, "teacher", minutes_path) if training else contextlib.nullcontext():
        teacher = ensure_teacher(teacher_dir, args.teacher_epochs, args.limit, seeds[0])
    model = load_pi_model(teacher_dir)[0]
    data = load_classification("fashion-mnist")
    rows, jobs = [], plan(args, seeds, lengths)
    for job in jobs:
        if not finished(runs / job["name"]):
            if args.finished_only:
                continue
            with timed(minutes, job["name"], minutes_path):
                run_one(runs, job, args, model, data, teacher["relus"], lengths)
        rows.append(row_of(runs, job, minutes))
        print(rows[-1], flush=True)
    table = by_length(rows)
    missing = [job["name"] for job in jobs if not finished(runs / job["name"])]  # only with --finished-only

    def settings_at(n: int, done: bool = False) -> set:  # the (method, budget) pairs run at length n (finished ones)
        return {(j["method"], j["fraction"]) for j in jobs if j["length"] == n and not (done and j["name"] in missing)}

    measured = [n for n in lengths if settings_at(n) == settings_at(n, done=True)]  # every pair with a seed or more
    headline = headline_of(rows, teacher, measured[-1]) if measured else {}
    if missing:
        headline["partial"] = {"runs_finished": len(jobs) - len(missing), "runs_planned": len(jobs), "missing": missing}
    stage_minutes = {m: round(sum(r["minutes"] or 0 for r in rows if r["method"] == m), 1) for m in METHODS}
    settings = {"data": "fashion-mnist train/test" + (f" (first {args.limit} teacher images)" if args.limit else " (60,000/10,000)"),
                "model": "ResNet18 width multiplier 0.25 (stage widths 16/32/64/128), 1x28x28 input",
                "teacher_epochs": args.teacher_epochs, "teacher_schedule": "SGD, cosine, augmented (trustlab pi train defaults)",
                "reduction_epoch_images": args.reduce_limit, "finetune_lengths": lengths, "search_epochs": args.search_epochs,
                "snl": {"schedule": "until-budget", "cap": args.snl_cap, "lambda_start": args.snl_lambda, "threshold": 1e-2,
                        "lambda_start_probe": SNL_LAMBDA_PROBE},
                "shallow": {"anneal_epochs": 1, "ring_epochs": 1, "target_relu_reduction": SHALLOW_TARGET},
                "seeds": {"longest": seeds, "others": seeds[:1]}, "fractions": [f"1/{f}" for f in FRACTIONS]}
    write_result("pi_schedules", headline, settings, rows=rows, table=table, teacher_curve=teacher_curve(teacher_dir),
                 minutes={"teacher": minutes.get("teacher"), **stage_minutes, "this_invocation": round((time.time() - t0) / 60, 1)})
    plot(table, teacher, lengths)
    print(json.dumps(headline, indent=1))


if __name__ == "__main__":
    main()
