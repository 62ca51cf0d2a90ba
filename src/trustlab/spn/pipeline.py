"""Run-folder jobs of the SPN area: fit an SPN, compress it as a tSPN, evaluate either.

``fit`` learns a structure (LearnSPN or a random region graph, one per class when the data
has a class variable) and writes ``spn.json`` with the figures the other jobs compare with.
``compress`` maps that SPN exactly onto a tensor train (and checks it on the test rows),
then, for each rank, truncates under nonnegativity and fine-tunes by maximum likelihood on
the training rows plus samples drawn from the SPN (distillation keeps the compressed model
close to the SPN instead of over-fitting a small training set). Each finished rank is a
checkpoint, so an interrupted sweep resumes at the next rank.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from trustlab.errors import ConfigError, RunError
from trustlab.progress import progress_bar
from trustlab.report import render_report
from trustlab.runs import Job, RunDir, atomic_save_figure, config_from_dict
from trustlab.spn.circuit import Circuit
from trustlab.spn.classify import accuracy
from trustlab.spn.compress import em_fit, fine_tune, truncate
from trustlab.spn.config import CompressConfig, FitConfig
from trustlab.spn.data import DiscreteData, load_data
from trustlab.spn.learn_structure import learn_spn, random_region_graph, with_class_variable
from trustlab.spn.structure import Graph
from trustlab.spn.tensor_train import (TensorTrain, capped_ranks, dfs_order, exact_ranks, mutual_information_order,
                                       spn_to_tensor_train)

def _learn_one(cfg: FitConfig, x: torch.Tensor, valid: torch.Tensor | None, cardinality: list[int],
               seed: int) -> Graph:
    """One SPN over ``x``; EM (where asked) keeps the iteration that fits the ``valid`` rows best."""
    if cfg.structure == "learnspn":
        g = learn_spn(x.numpy(), cardinality, min_instances=cfg.min_instances, alpha=cfg.alpha,
                      clusters=cfg.clusters, seed=seed)
    else:
        g = random_region_graph(cardinality, depth=cfg.depth, repetitions=cfg.repetitions, sums=cfg.sums,
                                leaves=cfg.leaves, seed=seed)
    if cfg.em_iterations:
        c = Circuit(g)
        c.em(x, iterations=cfg.em_iterations, valid=valid)
        g = c.to_graph()
    return g


def learn_model(cfg: FitConfig, data: DiscreteData) -> Graph:
    """The SPN of ``cfg`` for ``data``: one per class under a class variable, or one over all columns."""
    cfg.validate()
    if data.class_var is None:
        return _learn_one(cfg, data.x_train, data.x_valid, data.cardinality, cfg.seed)
    y = data.x_train[:, data.class_var].long()
    feats = [v for v in range(data.num_vars) if v != data.class_var]
    per_class, priors = [], []
    for k in range(data.cardinality[data.class_var]):
        rows = data.x_train[y == k][:, feats]
        if len(rows) < 2:
            raise ConfigError(f"class {k} has {len(rows)} training rows: each class needs at least two")
        valid = None
        if data.x_valid is not None:
            valid = data.x_valid[data.x_valid[:, data.class_var].long() == k][:, feats]
        per_class.append(_learn_one(cfg, rows, valid, [data.cardinality[v] for v in feats], cfg.seed + k))
        priors.append(len(rows) / len(y))
    return with_class_variable(per_class, priors)


def throughput(log_prob, x: torch.Tensor, repeats: int = 3) -> float:
    """Rows per second of ``log_prob(x)`` (a model's, or a peer's), best of ``repeats``, without gradients."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats):
            t = time.perf_counter()
            log_prob(x)
            best = min(best, time.perf_counter() - t)
    return len(x) / best


def evaluate(model: Circuit | TensorTrain, data: DiscreteData) -> dict:
    """Test (and validation) log-likelihood, rows per second on the test rows, accuracy with a class variable."""
    out = {"test_ll": float(model.log_prob(data.x_test).mean()), "rows_per_s": throughput(model.log_prob, data.x_test)}
    if data.x_valid is not None:
        out["valid_ll"] = float(model.log_prob(data.x_valid).mean())
    if data.class_var is not None:
        out["accuracy"] = accuracy(model, data.x_test, data.class_var)
        if data.x_valid is not None:
            out["valid_accuracy"] = accuracy(model, data.x_valid, data.class_var)
    return out


def tt_parameters(graph: Graph, order: list[int], rank: int | None = None, *, exact: bool = True) -> int:
    """Entries of the cores of the exact train (``rank`` None), or of a train of ``rank`` truncated from it
    (``exact``) or built at that rank from scratch (ranks capped only where a side has fewer joint states).

    Every entry of a compressed train is a free parameter (its cores are dense); the exact
    train's structural zeros are counted too, as the exact map stores them.
    """
    card = [graph.cardinality[v] for v in order]
    if rank is None:
        ranks = exact_ranks(graph, order)
    elif exact:
        ranks = [min(r, rank) for r in exact_ranks(graph, order)]
    else:
        ranks = capped_ranks(card, rank)
    ranks = [1, *ranks, 1]
    return sum(ranks[k] * card[k] * ranks[k + 1] for k in range(len(card)))


def fit_spn(cfg: FitConfig, out: str | Path) -> RunDir:
    """Learn an SPN into the run folder ``out`` (``spn.json``, summary, report tables); one fit, no resume."""
    job = Job(cfg, out, resume=False)
    data = load_data(cfg.data)
    t = time.perf_counter()
    graph = learn_model(cfg, data)
    seconds = time.perf_counter() - t
    run = job.start()
    graph.save(run.path / "spn.json")
    circuit = Circuit(graph)
    summary = {"data": data.source, "variables": data.num_vars, "train_rows": len(data.x_train),
               "test_rows": len(data.x_test), "fit_seconds": seconds, **graph.counts(),
               "train_ll": float(circuit.log_prob(data.x_train).mean()), **evaluate(circuit, data)}
    if all(c > 0 for c in data.cardinality):
        order = dfs_order(graph)
        summary.update(exact_tt_max_rank=max(exact_ranks(graph, order)), exact_tt_parameters=tt_parameters(graph, order))
    run.write_summary(summary)
    render_report(run.path)
    return run


def load_fit(run_dir: str | Path) -> tuple[RunDir, FitConfig, Graph, DiscreteData]:
    run = RunDir.open(run_dir, kind=FitConfig.kind)
    cfg = config_from_dict(FitConfig, run.config)
    if not (run.path / "spn.json").exists():
        raise RunError(f"{run.path} has no spn.json: rerun `trustlab spn fit`")
    return run, cfg, Graph.load(run.path / "spn.json"), load_data(cfg.data)


def variable_order(cfg: CompressConfig, graph: Graph, data: DiscreteData) -> list[int]:
    """The train's variable order: the SPN's depth-first walk, or from the training rows' mutual information."""
    if cfg.order == "spn":
        return dfs_order(graph)
    return mutual_information_order(data.x_train, graph.cardinality)


def start_route(cfg: CompressConfig, graph: Graph, order: list[int]) -> str:
    """``exact`` or ``random``: how each rank's train starts (auto: exact when the exact train fits)."""
    if cfg.init != "auto":
        return cfg.init
    return "exact" if max(exact_ranks(graph, order)) <= cfg.max_rank else "random"


def rank_for_ratio(graph: Graph, order: list[int], ratio: float, *, exact: bool) -> int:
    """The largest rank whose train has at most 1/``ratio`` of the SPN's parameters."""
    if ratio < 1:
        raise ConfigError(f"--target-ratio {ratio:g} is below 1: it is how many times fewer parameters than the SPN")
    budget = graph.num_parameters() / ratio
    most = max(capped_ranks([graph.cardinality[v] for v in order], 2**62))
    best, rank = 0, 1
    while rank <= most and tt_parameters(graph, order, rank, exact=exact) <= budget:
        best, rank = rank, rank + 1
    if best < 1:
        smallest = tt_parameters(graph, order, 1, exact=exact)
        raise ConfigError(f"a rank-1 tSPN has {smallest:,} parameters, more than the SPN's {graph.num_parameters():,} / "
                          f"{ratio:g}: ask for a ratio of at most {graph.num_parameters() / smallest:.2f}")
    return best


def compress_spn(cfg: CompressConfig, out: str | Path, *, resume: bool = False, quiet: bool = False) -> RunDir:
    """Compress the SPN of ``cfg.source`` into a tensor train at each of ``cfg.ranks``.

    Each rank starts from the SPN: the exact train truncated to that rank (``exact``), or a
    random train (``random``, for SPNs whose exact train is too large to build); it is then
    fitted to the training rows plus ``distill_samples`` rows drawn from the SPN, keeping the
    epoch with the best validation likelihood. With ``random`` and no samples the train never
    sees the SPN: the ablation that asks what the SPN adds.
    """

    job = Job(cfg, out, resume)
    cfg = job.config
    _, _, graph, data = load_fit(cfg.source)
    order = variable_order(cfg, graph, data)
    route = start_route(cfg, graph, order)
    spn_params = graph.num_parameters()
    exact_info = {"parameters": tt_parameters(graph, order), "max_rank": max(exact_ranks(graph, order)),
                  "built": route == "exact"}
    exact = None
    if route == "exact":
        t = time.perf_counter()
        exact = spn_to_tensor_train(graph, order, max_rank=cfg.max_rank)
        exact_info["map_seconds"] = time.perf_counter() - t
        circuit64 = Circuit(graph, dtype=torch.float64)
        exact_info["max_abs_log_prob_gap"] = float((circuit64.log_prob(data.x_test) - exact.log_prob(data.x_test)).abs().max())
        exact_info.update(evaluate(TensorTrain([c.float() for c in exact.cores()], exact.order, exact.cardinality), data))
    run = job.start()
    circuit = Circuit(graph)
    spn_eval = {"parameters": spn_params, **evaluate(circuit, data)}
    samples = circuit.sample(cfg.distill_samples, seed=cfg.seed).float() if cfg.distill_samples else data.x_train[:0]
    train_rows = torch.cat([data.x_train, samples])
    rows = []
    with progress_bar(quiet) as bar:
        task = bar.add_task("compress", total=len(cfg.ranks))
        for rank in cfg.ranks:
            tag = f"rank{rank}"
            if resume and run.has_checkpoint(tag):
                rows.append(run.load_checkpoint(tag)[1]["row"])
                bar.update(task, advance=1)
                continue
            t = time.perf_counter()
            row = {"rank": rank}
            if exact is not None:
                tt = truncate(exact, rank, iterations=cfg.nmf_iterations, loss=cfg.rounding, seed=cfg.seed)
                row["test_ll_truncated"] = float(tt.log_prob(data.x_test).mean())
                if data.class_var is not None:
                    row["accuracy_truncated"] = accuracy(tt, data.x_test, data.class_var)
                tt = tt.float()
            else:
                tt = TensorTrain.random(order, graph.cardinality, rank, seed=cfg.seed)

            def log_epoch(epoch: int, lls: dict, rank=rank) -> None:
                run.log(epoch + 1, rank=rank, **lls)
                bar.update(task, description=f"rank {rank}: epoch {epoch + 1}/{cfg.epochs} train ll {lls['train_ll']:.3f}")

            if cfg.fit == "em":
                history = em_fit(tt, train_rows, iterations=cfg.epochs, valid=data.x_valid, callback=log_epoch)
            else:
                history = fine_tune(tt, train_rows, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                                    class_var=data.class_var, discriminative=cfg.discriminative, valid=data.x_valid,
                                    seed=cfg.seed, callback=log_epoch)
            tt.eval()
            ev = evaluate(tt, data)
            params = tt.num_parameters()
            row.update(parameters=params, ratio_vs_spn=spn_params / params,
                       ratio_vs_exact_tspn=exact_info["parameters"] / params, **ev,
                       speedup_vs_spn=ev["rows_per_s"] / spn_eval["rows_per_s"],
                       epochs_kept=(1 + max(range(len(history)), key=lambda e: history[e]["valid_ll"])
                                    if data.x_valid is not None else len(history)),
                       seconds=time.perf_counter() - t)
            if "accuracy" in ev:
                row["accuracy_drop_points"] = 100 * (spn_eval["accuracy"] - ev["accuracy"])
            tensors, meta = tt.to_state()
            run.save_checkpoint(tensors, {**meta, "row": row}, tag)
            rows.append(row)
            bar.update(task, advance=1)
    summary = {"source": str(cfg.source), "data": data.source, "route": route, "order": cfg.order,
               "fitted_on": f"{len(data.x_train):,} training rows" + (f" + {cfg.distill_samples:,} rows sampled from the SPN"
                                                                     if cfg.distill_samples else " (no SPN samples)"),
               "spn_parameters": spn_params, "spn": spn_eval, "exact_tspn": exact_info, "ranks": rows}
    run.write_summary(summary)
    run.write_table("ranks", rows, title="tSPN at each rank: parameters (vs the SPN and the exact train), "
                                         "validation and test log-likelihood, accuracy, speed")
    _plot_tradeoff(run, summary, data.class_var is not None)
    render_report(run.path)
    return run


def _plot_tradeoff(run: RunDir, summary: dict, classify: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(summary["ranks"], key=lambda r: r["parameters"])
    fig, axes = plt.subplots(1, 2 if classify else 1, figsize=(10 if classify else 5, 3.6), squeeze=False)
    keys = [("test_ll", "test log-likelihood")] + ([("accuracy", "test accuracy")] if classify else [])
    for ax, (key, label) in zip(axes[0], keys):
        ax.plot([r["parameters"] for r in rows], [r[key] for r in rows], "o-", label="tSPN (compressed)")
        for r in rows:
            ax.annotate(f"r{r['rank']}", (r["parameters"], r[key]), fontsize=8)
        ax.plot([summary["spn_parameters"]], [summary["spn"][key]], "k*", ms=12, label="SPN")
        ax.axhline(summary["spn"][key], color="k", ls="--", lw=1)
        ax.axvline(summary["exact_tspn"]["parameters"], color="gray", ls=":", label="exact tSPN size")
        ax.set_xscale("log")
        ax.set_xlabel("parameters")
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, run.plot_path("tradeoff"), dpi=120)
    plt.close(fig)


def load_model(run_dir: str | Path, rank: int | None = None) -> tuple[Circuit | TensorTrain, DiscreteData, str]:
    """The SPN of a fit run, or the tSPN at ``rank`` (default: the smallest) of a compress run."""
    run = RunDir.open(run_dir, kind=(FitConfig.kind, CompressConfig.kind))
    if run.kind == FitConfig.kind:
        _, _, graph, data = load_fit(run_dir)
        return Circuit(graph), data, "SPN"
    cfg = config_from_dict(CompressConfig, run.config)
    done = [r for r in cfg.ranks if run.has_checkpoint(f"rank{r}")]
    if not done:
        raise RunError(f"{run.path} has no compressed rank yet: run `trustlab spn compress ... --resume`")
    rank = min(done) if rank is None else rank
    if rank not in done:
        raise ConfigError(f"{run.path} holds ranks {done}, not {rank}")
    tensors, meta = run.load_checkpoint(f"rank{rank}")
    _, _, _, data = load_fit(cfg.source)
    return TensorTrain.from_state(tensors, meta).eval(), data, f"tSPN rank {rank}"


__all__ = ["compress_spn", "evaluate", "fit_spn", "learn_model", "load_model", "rank_for_ratio", "start_route",
           "throughput", "tt_parameters", "variable_order"]
