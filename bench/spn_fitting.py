"""Rank or fitting? Tensor trains fitted beyond the SPN benchmark's budget, against the 1% bar.

The SPN benchmark (``bench/spn.py``) fits each train for 40 epochs, and on Plants and Jester no
train comes within 1% of the SPN. This asks whether a larger rank, a longer fit or another
optimiser would: on Plants from ``plants-large`` (the large LearnSPN within 1% of LearnSPN), ranks
32-128 for 40-300 epochs, Adam at another learning rate and EM (``--fit em``); on Plants from the
data alone, EM against Adam; on Jester, rank 16 for 120-500 epochs from the LearnSPN. Every train
is random in the mutual-information order, seed 0, and keeps its best validation epoch.

It reads the SPNs of ``bench/spn.py`` under ``--runs`` (run that first) and writes each train to
``<runs>/<set>/fitting/<label>``; finished trains are reused, so an interrupted run resumes.
Writes ``bench/results/spn_fitting.json`` and ``spn_fitting.png``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import RESULTS, ll_against_parameters, write_result
from spn import one_percent_below, reusable

from trustlab.runs import RunDir, atomic_save_figure, finished
from trustlab.spn.config import CompressConfig
from trustlab.spn.pipeline import compress_spn

ADAM = dict(lr=0.05, batch_size=512)  # the SPN benchmark's settings
EM = dict(fit="em", lr=CompressConfig.lr, batch_size=CompressConfig.batch_size)  # neither is used by EM
TRAINS = {  # label: source set, rank, epochs (EM: iterations), other settings
    "plants-large-r64-e40": ("plants-large", 64, 40, ADAM),
    "plants-large-r128-e40": ("plants-large", 128, 40, ADAM),
    "plants-large-r64-e120": ("plants-large", 64, 120, ADAM),
    "plants-large-r64-e300": ("plants-large", 64, 300, ADAM),
    "plants-large-r32-lr0.1": ("plants-large", 32, 40, dict(ADAM, lr=0.1)),
    "plants-large-r32-em400": ("plants-large", 32, 400, EM),
    "plants-direct-r32-em400": ("plants", 32, 400, dict(EM, distill_samples=0)),
    "jester-r16-e120": ("jester", 16, 120, ADAM),
    "jester-r16-e300": ("jester", 16, 300, ADAM),
    "jester-r16-e500": ("jester", 16, 500, ADAM),
}
BASELINES = {  # the benchmark's own trains these are compared with: label: (set, route, rank)
    "plants-large-r32-e40 (benchmark)": ("plants-large", "mi", 32),
    "plants-direct-r32 (benchmark, Adam)": ("plants", "direct-mi", 32),
    "jester-r8-e40 (benchmark)": ("jester", "mi", 8),
}
BAR_FROM = {"plants-large": "plants-large", "plants": "plants", "jester": "jester"}  # whose validation LL sets the 1% bar


def train(label: str, runs: Path, quiet: bool) -> dict:
    source, rank, epochs, opts = TRAINS[label]
    cfg = CompressConfig(source=str(runs / source / "fit"), ranks=(rank,), init="random", order="mi", epochs=epochs,
                         **opts)
    out = runs / source / "fitting" / label
    if not reusable(cfg, out):
        compress_spn(cfg, out, resume=(out / "config.yaml").exists(), quiet=quiet)
    return row(source, RunDir(out).summary(), rank) | {"fit": cfg.fit, "epochs": epochs, "lr": cfg.lr,
                                                       "distill_samples": cfg.distill_samples}


def row(source: str, summary: dict, rank: int) -> dict:
    r = next(x for x in summary["ranks"] if x["rank"] == rank)
    return {"source": source, "rank": rank, "parameters": r["parameters"], "spn_parameters": summary["spn_parameters"],
            "valid_ll": r["valid_ll"], "test_ll": r["test_ll"], "epochs_kept": r["epochs_kept"], "seconds": r["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bench-spn-v2", help="the --runs of bench/spn.py, holding its SPNs")
    ap.add_argument("--only", default=",".join(TRAINS), help="comma-separated, from " + ",".join(TRAINS))
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    runs, labels = Path(args.runs), [n for n in args.only.split(",") if n]
    unknown = set(labels) - set(TRAINS)
    if unknown:
        ap.error(f"unknown trains {sorted(unknown)}: choose from {','.join(TRAINS)}")
    missing = sorted({s for s in BAR_FROM.values() if not finished(runs / s / "fit")})
    if missing:
        ap.error(f"no fitted SPN for {missing} under {runs}: run bench/spn.py --runs {runs} first")
    valid = {s: RunDir(runs / BAR_FROM[s] / "fit").summary()["valid_ll"] for s in BAR_FROM}
    bars = {s: one_percent_below(v) for s, v in valid.items()}
    results = {label: row(s, RunDir(runs / s / f"tspn-{route}").summary(), rank) | {"fit": "adam", "benchmark": True}
               for label, (s, route, rank) in BASELINES.items()}
    for label in labels:
        results[label] = train(label, runs, args.quiet)
        print(f"{label}: {results[label]['parameters']:,} parameters, valid {results[label]['valid_ll']:.3f}", flush=True)
    for r in results.values():
        r["short_of_1pct"] = bars[r["source"]] - r["valid_ll"]
    closest = {s: min((r["short_of_1pct"] for r in results.values() if r["source"] == s), default=None) for s in bars}
    plot(results, valid, bars, RESULTS / "spn_fitting.png")
    print(write_result("spn_fitting", {"closest_short_of_1pct": closest, "bar_valid_ll": bars},
                       {"order": "mi", "init": "random", "seed": 0, "trains": TRAINS, "baselines": BASELINES,
                        "bar": "1% below the validation LL of the SPN named in bar_from", "bar_from": BAR_FROM},
                       results=results))


def plot(results: dict, valid: dict, bars: dict, path: Path) -> None:
    """Validation LL against parameters, each source SPN as a star with its 1% bar (squares: EM)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, sources in zip(axes, (("plants-large", "plants"), ("jester",))):
        for label, r in results.items():
            if r["source"] in sources:
                ax.scatter(r["parameters"], r["valid_ll"], marker="s" if r["fit"] == "em" else "o")
                ax.annotate(label, (r["parameters"], r["valid_ll"]), fontsize=7)
        for s, ls in zip(sources, ("--", ":")):
            spn = next(r["spn_parameters"] for r in results.values() if r["source"] == s)
            ax.scatter(spn, valid[s], marker="*", s=120, color="black")
            ax.annotate(f"SPN {s}", (spn, valid[s]), fontsize=7)
            ax.axhline(bars[s], color="gray", ls=ls, label=f"1% below the {s} SPN (validation)")
        ll_against_parameters(ax, " / ".join(sources), "tSPN parameters")
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
