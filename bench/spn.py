"""Learned SPN vs its tSPN at several ranks, with SPFlow as the peer, on binarised images.

For each dataset (binarised 8x8 digits; Fashion-MNIST down-sampled to 7x7 and binarised) in
one run: LearnSPN per class under a class variable; the exact tSPN (checked against the SPN);
nonnegative truncation + fine-tuning at each rank (``trustlab spn compress``); then test
log-likelihood, accuracy, parameters and inference throughput of every model, and the same
SPN's throughput in SPFlow on the same rows. Writes ``bench/results/spn.json`` and ``.png``.
Resumes: fitted and compressed run folders under ``--runs`` are reused (``minutes`` is this
invocation's wall time; ``fit_and_compress_minutes`` the recorded time of the fits and ranks).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from common import RESULTS, write_result

from trustlab.runs import RunDir
from trustlab.spn.circuit import Circuit
from trustlab.spn.pipeline import CompressConfig, FitConfig, SPNDataConfig, compress_spn, fit_spn, load_model
from trustlab.spn.spflow_bridge import spflow_log_prob, to_spflow
from trustlab.spn.structure import Graph
from trustlab.spn.tensor_train import spn_to_tensor_train

DATASETS = {
    "digits": dict(data=SPNDataConfig(dataset="digits"), min_instances=30, ranks=(8, 16, 24, 32, 48, 64)),
    "fashion-mnist-7x7": dict(data=SPNDataConfig(dataset="fashion-mnist", size=7, limit=10000), min_instances=100,
                              ranks=(16, 32, 64)),
}


def rows_per_second(fn, x: torch.Tensor, repeats: int = 3) -> float:
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            fn(x)
            best = min(best, time.perf_counter() - t)
    return len(x) / best


def bench_dataset(name: str, spec: dict, runs: Path, args) -> dict:
    fit_dir, tspn_dir = runs / name / "fit", runs / name / "tspn"
    if not (fit_dir / "summary.json").exists():
        fit_spn(FitConfig(data=spec["data"], min_instances=spec["min_instances"]), fit_dir)
    fit = RunDir(fit_dir).summary()
    if not (tspn_dir / "summary.json").exists():
        compress_spn(CompressConfig(source=str(fit_dir), ranks=spec["ranks"], epochs=args.epochs,
                                    distill_samples=args.distill_samples), tspn_dir,
                     resume=(tspn_dir / "config.yaml").exists(), quiet=args.quiet)
    comp = RunDir(tspn_dir).summary()
    graph = Graph.load(fit_dir / "spn.json")
    _, data, _ = load_model(fit_dir)
    x = data.x_test.repeat(max(1, args.speed_rows // len(data.x_test) + 1), 1)[: args.speed_rows]
    spflow = to_spflow(graph)
    speed = {"spflow": rows_per_second(lambda b: spflow_log_prob(spflow, b), x[: args.spflow_rows]),
             "spn": rows_per_second(Circuit(graph).log_prob, x)}
    exact = spn_to_tensor_train(graph, dtype=torch.float32)
    speed["exact_tspn"] = rows_per_second(exact.log_prob, x)
    comp["exact_tspn"]["rows_per_s"] = speed["exact_tspn"]
    for row in comp["ranks"]:
        tt, _, _ = load_model(tspn_dir, row["rank"])
        speed[f"tspn_rank{row['rank']}"] = rows_per_second(tt.log_prob, x)
        row["rows_per_s"] = speed[f"tspn_rank{row['rank']}"]
        row["speedup_vs_spflow"] = row["rows_per_s"] / speed["spflow"]
    ok = [r for r in comp["ranks"] if r["accuracy_drop_points"] <= 1.0]
    best = max(ok, key=lambda r: r["ratio_vs_exact_tspn"]) if ok else None
    return {"data": fit["data"], "train_rows": fit["train_rows"], "test_rows": fit["test_rows"],
            "spn": {"nodes": fit["nodes"], "parameters": fit["parameters"], "test_ll": fit["test_ll"],
                    "accuracy": fit["accuracy"], "rows_per_s": speed["spn"], "fit_seconds": fit["fit_seconds"]},
            "spflow_rows_per_s": speed["spflow"], "exact_tspn": comp["exact_tspn"], "ranks": comp["ranks"],
            "best_at_1pt": best}


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, r in results.items():
        rows = sorted(r["ranks"], key=lambda x: x["parameters"])
        line, = axes[0].plot([x["parameters"] for x in rows], [x["accuracy"] for x in rows], "o-", label=f"{name} tSPN")
        axes[0].axhline(r["spn"]["accuracy"], color=line.get_color(), ls="--", lw=1, label=f"{name} SPN")
        axes[0].axvline(r["exact_tspn"]["parameters"], color=line.get_color(), ls=":", lw=1)
        axes[1].plot([x["parameters"] for x in rows], [x["speedup_vs_spflow"] for x in rows], "o-", label=name)
    axes[0].set(xscale="log", xlabel="tSPN parameters (dotted: exact tSPN)", ylabel="test accuracy",
                title="accuracy vs size (dashed: the SPN)")
    axes[1].set(xscale="log", yscale="log", xlabel="tSPN parameters", ylabel="rows/s relative to SPFlow",
                title="inference speed vs SPFlow on the same SPN")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bench-spn")
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--epochs", type=int, default=10, help="fine-tuning epochs per rank")
    ap.add_argument("--distill-samples", type=int, default=20000)
    ap.add_argument("--speed-rows", type=int, default=20000, help="rows timed for the SPN and the tSPNs")
    ap.add_argument("--spflow-rows", type=int, default=2000, help="rows timed for SPFlow (slower)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    torch.manual_seed(0)
    results = {n: bench_dataset(n, DATASETS[n], Path(args.runs), args) for n in args.datasets.split(",")}
    plot(results, RESULTS / "spn.png")
    digits = results.get("digits") or next(iter(results.values()))
    best = digits["best_at_1pt"]
    headline = {"dataset": "digits" if "digits" in results else next(iter(results)),
                "compression_ratio_at_1pt": best["ratio_vs_exact_tspn"] if best else None,
                "compression_ratio_at_1pt_vs_spn_parameters": best["ratio_vs_spn"] if best else None,
                "rank_at_1pt": best["rank"] if best else None,
                "speedup_vs_spflow": best["speedup_vs_spflow"] if best else
                max(r["speedup_vs_spflow"] for r in digits["ranks"]),
                "minutes": (time.time() - t0) / 60,
                "fit_and_compress_minutes": sum(r["spn"]["fit_seconds"] + r["exact_tspn"]["map_seconds"]
                                                + sum(x["seconds"] for x in r["ranks"]) for r in results.values()) / 60}
    settings = {"datasets": {n: {"data": DATASETS[n]["data"].__dict__, "min_instances": DATASETS[n]["min_instances"],
                                 "ranks": DATASETS[n]["ranks"]} for n in results},
                "epochs": args.epochs, "distill_samples": args.distill_samples, "speed_rows": args.speed_rows,
                "spflow_rows": args.spflow_rows, "ratio": "parameters of the exact tSPN / parameters at the rank",
                "accuracy_drop": "SPN accuracy - tSPN accuracy, in points, on the test split"}
    path = write_result("spn", headline, settings, results=results)
    print(path)
    for n, r in results.items():
        print(f"{n}: SPN {r['spn']['parameters']:,} params acc {r['spn']['accuracy']:.4f}; exact tSPN "
              f"{r['exact_tspn']['parameters']:,}; SPFlow {r['spflow_rows_per_s']:,.0f} rows/s")
        for x in r["ranks"]:
            print(f"  rank {x['rank']}: {x['parameters']:,} params ({x['ratio_vs_exact_tspn']:.1f}x vs exact, "
                  f"{x['ratio_vs_spn']:.2f}x vs SPN) acc {x['accuracy']:.4f} ({x['accuracy_drop_points']:+.2f} pts) "
                  f"ll {x['test_ll']:.3f} {x['rows_per_s']:,.0f} rows/s ({x['speedup_vs_spflow']:.1f}x SPFlow)")


if __name__ == "__main__":
    main()
