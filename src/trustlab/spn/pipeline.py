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

import torch

from trustlab.errors import ConfigError, RunError
from trustlab.runs import RunDir, atomic_save_figure, config_from_dict, resumed_config
from trustlab.spn.circuit import Circuit
from trustlab.spn.classify import accuracy
from trustlab.spn.data import DiscreteData, binarized_images, binary_csv, debd
from trustlab.spn.learn_structure import learn_spn, random_region_graph, with_class_variable
from trustlab.spn.structure import Graph
from trustlab.spn.tensor_train import TensorTrain, exact_ranks, dfs_order, spn_to_tensor_train

STRUCTURES = ("learnspn", "rat")


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

    def load(self) -> DiscreteData:
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


def throughput(model: Circuit | TensorTrain, x: torch.Tensor, repeats: int = 3) -> float:
    """Rows per second of ``model.log_prob`` on ``x`` (best of ``repeats``)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        model.log_prob(x)
        best = min(best, time.perf_counter() - t)
    return len(x) / best


def evaluate(model: Circuit | TensorTrain, data: DiscreteData) -> dict:
    out = {"test_ll": float(model.log_prob(data.x_test).mean()), "rows_per_s": throughput(model, data.x_test)}
    if data.class_var is not None:
        out["accuracy"] = accuracy(model, data.x_test, data.class_var)
    return out


def tt_parameters(graph: Graph, order: list[int], rank: int | None = None) -> int:
    """Parameters of the exact train (``rank`` None) or of one truncated at ``rank``."""
    ranks = [1, *exact_ranks(graph, order), 1]
    if rank is not None:
        ranks = [min(r, rank) for r in ranks]
    card = [graph.cardinality[v] for v in order]
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
    if data.x_valid is not None:
        summary["valid_ll"] = float(circuit.log_prob(data.x_valid).mean())
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
    distill_samples: int = 20000  # rows sampled from the SPN added to the training rows
    epochs: int = 10
    lr: float = 0.02
    batch_size: int = 256
    discriminative: float = 0.0  # weight of log p(class | x) in the fine-tuning objective
    nmf_iterations: int = 1500
    max_rank: int = 4096  # refuse exact trains above this rank
    seed: int = 0


def ranks_for_ratio(graph: Graph, order: list[int], ratio: float) -> int:
    """The largest rank whose train has at most 1/``ratio`` of the exact train's parameters."""
    if ratio <= 1:
        raise ConfigError(f"--target-ratio {ratio} must be above 1")
    budget = tt_parameters(graph, order) / ratio
    best = 0
    for r in range(1, max(exact_ranks(graph, order)) + 1):
        if tt_parameters(graph, order, r) <= budget:
            best = r
    if best < 1:
        raise ConfigError(f"no rank reaches {ratio:g}x fewer parameters than the exact tSPN: ask for less")
    return best


def compress_spn(cfg: CompressConfig, out: str | Path, *, resume: bool = False, quiet: bool = False) -> RunDir:
    """Map the SPN of ``cfg.source`` onto a tensor train and compress it at each of ``cfg.ranks``."""
    from trustlab.progress import progress_bar
    from trustlab.spn.compress import fine_tune, truncate

    if not cfg.ranks or min(cfg.ranks) < 1:
        raise ConfigError(f"ranks {list(cfg.ranks)}: every rank must be at least 1")
    cfg = resumed_config(CompressConfig, out, "spn-compress", cfg, resume)
    _, fit_cfg, graph, data = load_fit(cfg.source)
    spn_params = graph.num_parameters()
    t = time.perf_counter()
    exact = spn_to_tensor_train(graph, max_rank=cfg.max_rank)
    map_seconds = time.perf_counter() - t
    circuit = Circuit(graph, dtype=torch.float64)
    gap = float((circuit.log_prob(data.x_test) - exact.log_prob(data.x_test)).abs().max())
    run = RunDir.start(Path(out), cfg, "spn-compress", resume)
    spn_eval = evaluate(Circuit(graph), data)
    exact32 = TensorTrain([c.float() for c in exact.cores()], exact.order, exact.cardinality)
    exact_eval = evaluate(exact32, data)
    samples = circuit.sample(cfg.distill_samples, seed=cfg.seed).float() if cfg.distill_samples else data.x_train[:0]
    train_rows = torch.cat([data.x_train, samples])
    rows = []
    with progress_bar(quiet) as bar:
        task = bar.add_task("compress", total=len(cfg.ranks))
        for rank in cfg.ranks:
            tag = f"rank{rank}"
            if resume and run.has_checkpoint(tag):
                tensors, meta = run.load_checkpoint(tag)
                tt = TensorTrain.from_state(tensors, meta)
                rows.append(meta["row"])
                bar.update(task, advance=1)
                continue
            t = time.perf_counter()
            tt = truncate(exact, rank, iterations=cfg.nmf_iterations, seed=cfg.seed)
            truncated = {"test_ll": float(tt.log_prob(data.x_test).mean())}
            if data.class_var is not None:
                truncated["accuracy"] = accuracy(tt, data.x_test, data.class_var)
            tt = tt.float()

            def log_epoch(epoch: int, ll: float, rank=rank) -> None:
                run.log(epoch + 1, rank=rank, train_ll=ll)
                bar.update(task, description=f"rank {rank}: epoch {epoch + 1}/{cfg.epochs} train ll {ll:.3f}")

            fine_tune(tt, train_rows, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                      class_var=data.class_var, discriminative=cfg.discriminative, seed=cfg.seed, callback=log_epoch)
            tt.eval()
            ev = evaluate(tt, data)
            params = tt.num_parameters()
            row = {"rank": rank, "parameters": params, "ratio_vs_exact_tspn": exact.num_parameters() / params,
                   "ratio_vs_spn": spn_params / params, "test_ll": ev["test_ll"], "test_ll_truncated": truncated["test_ll"],
                   "rows_per_s": ev["rows_per_s"], "seconds": time.perf_counter() - t}
            if "accuracy" in ev:
                row.update(accuracy=ev["accuracy"], accuracy_truncated=truncated["accuracy"],
                           accuracy_drop_points=100 * (spn_eval["accuracy"] - ev["accuracy"]))
            tensors, meta = tt.to_state()
            run.save_checkpoint(tensors, {**meta, "row": row}, tag)
            rows.append(row)
            bar.update(task, advance=1)
    summary = {"source": str(cfg.source), "data": data.source, "spn_parameters": spn_params,
               "spn": spn_eval, "exact_tspn": {"parameters": exact.num_parameters(), "max_rank": max(exact.ranks()),
                                              "map_seconds": map_seconds, "max_abs_log_prob_gap": gap, **exact_eval},
               "ranks": rows}
    run.write_summary(summary)
    run.write_table("ranks", rows, title="tSPN at each rank: parameters, test log-likelihood, accuracy, speed")
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
        ax.axhline(summary["spn"][key], color="k", ls="--", label="SPN")
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
           "load_model", "ranks_for_ratio", "throughput", "tt_parameters"]
