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
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import torch

from trustlab.errors import ConfigError, RunError
from trustlab.progress import progress_bar
from trustlab.runs import RunDir, atomic_save_figure, config_from_dict, resumed_config
from trustlab.spn.circuit import Circuit
from trustlab.spn.classify import accuracy
from trustlab.spn.compress import NMF_LOSSES, fine_tune, truncate
from trustlab.spn.data import DiscreteData, binarized_images, binary_csv, debd, with_valid_split
from trustlab.spn.learn_structure import learn_spn, random_region_graph, with_class_variable
from trustlab.spn.structure import Graph
from trustlab.spn.tensor_train import (TensorTrain, capped_ranks, dfs_order, exact_ranks, mutual_information_order,
                                       spn_to_tensor_train)

STRUCTURES = ("learnspn", "rat")
INITS = ("auto", "exact", "random")
ORDERS = ("spn", "mi")  # the SPN's depth-first walk, or dependent variables side by side
ROUNDINGS = tuple(NMF_LOSSES)  # truncation of the exact train: KL-divergence NMF or nonnegative least squares


@dataclass(frozen=True)
class SPNDataConfig:
    dataset: str = "digits"  # a registry dataset, "csv" with csv=PATH, or "debd" with name and data_dir
    csv: str | None = None
    name: str | None = None  # debd: the set's name (nltcs, plants, ...)
    data_dir: str | None = None  # debd: the folder holding NAME.{train,valid,test}.data
    size: int | None = None  # down-sample images to size x size before binarising
    threshold: float = 0.5
    with_class: bool = True  # the class as variable 0 (generative classifier)
    limit: int | None = None
    test_limit: int | None = None
    valid_share: float = 0.1  # training rows held out for validation where the data set has no fixed split

    LEGACY: ClassVar[dict] = {"valid_share": 0.0}  # runs written before the split trained on every row

    def load(self) -> DiscreteData:
        return with_valid_split(self._load(), self.valid_share)

    def _load(self) -> DiscreteData:
        if self.dataset == "csv":
            if not self.csv:
                raise ConfigError("--dataset csv needs --csv PATH")
            return binary_csv(self.csv)
        if self.dataset == "debd":
            if not self.name or not self.data_dir:
                raise ConfigError("--dataset debd needs --name NAME and --data-dir DIR")
            return debd(self.name, self.data_dir)
        return binarized_images(self.dataset, size=self.size, threshold=self.threshold, with_class=self.with_class,
                                limit=self.limit, test_limit=self.test_limit)


@dataclass(frozen=True)
class FitConfig:
    data: SPNDataConfig = field(default_factory=SPNDataConfig)
    structure: str = "learnspn"
    min_instances: int = 30  # LearnSPN: fewer rows end in a factorised product
    alpha: float = 0.001  # LearnSPN: p-value below which two variables count as dependent
    clusters: int = 2
    depth: int = 2  # random region graph
    repetitions: int = 4
    sums: int = 4
    leaves: int = 4
    em_iterations: int = 0  # EM after structure learning (random region graphs need it)
    seed: int = 0

    def validate(self) -> None:
        if self.structure not in STRUCTURES:
            raise ConfigError(f"unknown structure '{self.structure}': use {' or '.join(STRUCTURES)}")
        if self.em_iterations < 0:
            raise ConfigError("--em-iterations must be >= 0")


def _learn_one(cfg: FitConfig, x: torch.Tensor, cardinality: list[int], seed: int) -> Graph:
    if cfg.structure == "learnspn":
        g = learn_spn(x.numpy(), cardinality, min_instances=cfg.min_instances, alpha=cfg.alpha,
                      clusters=cfg.clusters, seed=seed)
    else:
        g = random_region_graph(cardinality, depth=cfg.depth, repetitions=cfg.repetitions, sums=cfg.sums,
                                leaves=cfg.leaves, seed=seed)
    if cfg.em_iterations:
        c = Circuit(g)
        c.em(x, iterations=cfg.em_iterations)
        g = c.to_graph()
    return g


def learn_model(cfg: FitConfig, data: DiscreteData) -> Graph:
    """The SPN of ``cfg`` for ``data``: one per class under a class variable, or one over all columns."""
    cfg.validate()
    if data.class_var is None:
        return _learn_one(cfg, data.x_train, data.cardinality, cfg.seed)
    y = data.x_train[:, data.class_var].long()
    feats = [v for v in range(data.num_vars) if v != data.class_var]
    per_class, priors = [], []
    for k in range(data.cardinality[data.class_var]):
        rows = data.x_train[y == k][:, feats]
        if len(rows) < 2:
            raise ConfigError(f"class {k} has {len(rows)} training rows: each class needs at least two")
        per_class.append(_learn_one(cfg, rows, [data.cardinality[v] for v in feats], cfg.seed + k))
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
    """Learn an SPN into the run folder ``out`` (``spn.json``, summary, report tables)."""
    cfg.validate()
    data = cfg.data.load()
    t = time.perf_counter()
    graph = learn_model(cfg, data)
    seconds = time.perf_counter() - t
    run = RunDir.create(Path(out), cfg, "spn-fit")
    graph.save(run.path / "spn.json")
    circuit = Circuit(graph)
    summary = {"data": data.source, "variables": data.num_vars, "train_rows": len(data.x_train),
               "test_rows": len(data.x_test), "fit_seconds": seconds, **graph.counts(),
               "train_ll": float(circuit.log_prob(data.x_train).mean()), **evaluate(circuit, data)}
    if all(c > 0 for c in data.cardinality):
        order = dfs_order(graph)
        summary.update(exact_tt_max_rank=max(exact_ranks(graph, order)), exact_tt_parameters=tt_parameters(graph, order))
    run.write_summary(summary)
    return run


def load_fit(run_dir: str | Path) -> tuple[RunDir, FitConfig, Graph, DiscreteData]:
    run = RunDir.open(run_dir, kind="spn-fit")
    cfg = config_from_dict(FitConfig, run.config)
    if not (run.path / "spn.json").exists():
        raise RunError(f"{run.path} has no spn.json: rerun `trustlab spn fit`")
    return run, cfg, Graph.load(run.path / "spn.json"), cfg.data.load()


@dataclass(frozen=True)
class CompressConfig:
    source: str = ""  # the spn-fit run folder
    ranks: tuple[int, ...] = (32,)
    init: str = "auto"  # exact: truncate the exact map; random: fit a random train; auto: exact when it fits max_rank
    distill_samples: int = 20000  # rows sampled from the SPN added to the training rows (0: the data alone)
    epochs: int = 10  # at most: the epoch with the best validation likelihood is kept
    lr: float = 0.02
    batch_size: int = 256
    discriminative: float = 0.0  # weight of log p(class | x) in the fine-tuning objective
    nmf_iterations: int = 1500
    rounding: str = "kl"  # how the exact train is truncated (ROUNDINGS)
    order: str = "spn"  # the variable order of the train (ORDERS)
    max_rank: int = 4096  # the largest exact train that is built
    seed: int = 0

    def validate(self) -> None:
        if not self.ranks or min(self.ranks) < 1:
            raise ConfigError(f"ranks {list(self.ranks)}: every rank must be at least 1")
        if self.init not in INITS:
            raise ConfigError(f"--init {self.init}: use {', '.join(INITS)}")
        if self.distill_samples < 0:
            raise ConfigError("--distill-samples must be >= 0")
        if self.order not in ORDERS:
            raise ConfigError(f"--order {self.order}: use {', '.join(ORDERS)}")
        if self.rounding not in ROUNDINGS:
            raise ConfigError(f"--rounding {self.rounding}: use {', '.join(ROUNDINGS)}")

    def variable_order(self, graph: Graph, data: DiscreteData) -> list[int]:
        """The train's variable order: the SPN's depth-first walk, or from the training rows' mutual information."""
        if self.order == "spn":
            return dfs_order(graph)
        return mutual_information_order(data.x_train, graph.cardinality)

    def route(self, graph: Graph, order: list[int]) -> str:
        """``exact`` or ``random``: how each rank's train starts (auto: exact when the exact train fits)."""
        if self.init != "auto":
            return self.init
        return "exact" if max(exact_ranks(graph, order)) <= self.max_rank else "random"


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

    cfg.validate()
    cfg = resumed_config(CompressConfig, out, "spn-compress", cfg, resume)
    _, _, graph, data = load_fit(cfg.source)
    order = cfg.variable_order(graph, data)
    route = cfg.route(graph, order)
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
    run = RunDir.start(Path(out), cfg, "spn-compress", resume)
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
    run = RunDir.open(run_dir, kind=("spn-fit", "spn-compress"))
    if run.kind == "spn-fit":
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


__all__ = ["CompressConfig", "FitConfig", "SPNDataConfig", "compress_spn", "evaluate", "fit_spn", "learn_model",
           "load_model", "rank_for_ratio", "throughput", "tt_parameters"]
