"""``trustlab spn``: learn SPNs, map them onto tensor trains, compress and evaluate them."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import typer

from trustlab.cli.apps import new_app
from trustlab.errors import ConfigError
from trustlab.spn.config import CompressConfig, FitConfig, SPNDataConfig

app = new_app()


def _ranks(text: str) -> tuple[int, ...]:
    try:
        ranks = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--rank takes integers separated by commas (e.g. 8,16,32), not '{text}'") from None
    if not ranks or min(ranks) < 1:
        raise ConfigError(f"--rank {text}: a tensor-train rank must be at least 1")
    return ranks


@app.command("fit")
def fit_cmd(out: str = typer.Option("runs/spn-digits", help="Run folder to write."),
            dataset: str = typer.Option(SPNDataConfig.dataset, help="digits | mnist | fashion-mnist | emoji | csv | debd"),
            csv: Optional[str] = typer.Option(None, help="With --dataset csv: rows of comma-separated 0/1 values (a header row is skipped)."),
            name: Optional[str] = typer.Option(None, help="With --dataset debd: the set, e.g. nltcs, plants, jester, dna."),
            data_dir: Optional[str] = typer.Option(None, help="With --dataset debd: the folder holding "
                                                              "NAME.train.data, NAME.valid.data, NAME.test.data."),
            size: Optional[int] = typer.Option(None, min=1, help="Down-sample images to SIZE x SIZE before binarising."),
            threshold: float = typer.Option(SPNDataConfig.threshold, help="Grey level above which a pixel is 1."),
            classify: bool = typer.Option(SPNDataConfig.with_class, help="Model the class as variable 0 (generative classifier)."),
            structure: str = typer.Option(FitConfig.structure, help="learnspn | rat (random region graph)"),
            min_instances: int = typer.Option(FitConfig.min_instances, min=1,
                                              help="LearnSPN: rows below which a node is fully factorised."),
            alpha: float = typer.Option(FitConfig.alpha, help="LearnSPN: independence-test p-value threshold."),
            depth: int = typer.Option(FitConfig.depth, min=1, help="rat: splits per repetition."),
            repetitions: int = typer.Option(FitConfig.repetitions, min=1, help="rat: random variable permutations."),
            sums: int = typer.Option(FitConfig.sums, min=1, help="rat: sum nodes per region."),
            leaves: int = typer.Option(FitConfig.leaves, min=1, help="rat: input distributions per leaf region."),
            em_iterations: int = typer.Option(FitConfig.em_iterations, min=0,
                                              help="Most EM iterations after structure learning (rat: use ~20); the one best on validation is kept."),
            limit: Optional[int] = typer.Option(None, min=1, help="Use the first N training images only."),
            test_limit: Optional[int] = typer.Option(None, min=1, help="Use the first N test images only."),
            valid_share: float = typer.Option(SPNDataConfig.valid_share, help="Training rows held out for validation where the data has "
                                                        "no fixed split (debd has one)."),
            seed: int = typer.Option(FitConfig.seed)) -> None:
    """Learn an SPN (per class, under a class variable) and report its likelihood, accuracy and size."""
    from trustlab.report import number
    from trustlab.spn.pipeline import fit_spn

    cfg = FitConfig(data=SPNDataConfig(dataset=dataset, csv=csv, name=name, data_dir=data_dir, size=size,
                                       threshold=threshold, with_class=classify and dataset not in ("csv", "debd"),
                                       limit=limit, test_limit=test_limit, valid_share=valid_share),
                    structure=structure, min_instances=min_instances, alpha=alpha, depth=depth,
                    repetitions=repetitions, sums=sums, leaves=leaves, em_iterations=em_iterations, seed=seed)
    run = fit_spn(cfg, out)
    s = run.summary()
    acc = f", accuracy {s['accuracy']:.4f}" if "accuracy" in s else ""
    tt = (f"; exact tSPN: rank {number(s['exact_tt_max_rank'])}, {number(s['exact_tt_parameters'])} parameters"
          if "exact_tt_parameters" in s else "")
    print(f"SPN: {s['nodes']:,} nodes, {s['parameters']:,} parameters; {_lls(s)}{acc}{tt}")
    print(run.path / "report.html")


@app.command("compress")
def compress_cmd(run_dir: str = typer.Argument(..., help="A run folder written by `trustlab spn fit`."),
                 rank: Optional[str] = typer.Option(None, help="Rank(s) of the tSPN, e.g. 32 or 8,16,32."),
                 target_ratio: Optional[float] = typer.Option(None, help="Instead of --rank: the largest rank with "
                                                              "this many times fewer parameters than the SPN."),
                 out: Optional[str] = typer.Option(None, help="Run folder to write (default: RUN_DIR-tspn)."),
                 init: str = typer.Option(CompressConfig.init, help="exact: truncate the exact tensor train; random: fit a random "
                                                       "train (SPNs whose exact train is too large); auto: exact "
                                                       "when its rank is at most --max-rank."),
                 distill_samples: int = typer.Option(CompressConfig.distill_samples, min=0, help="Rows sampled from the SPN added to the "
                                                                        "training rows (0: the data alone)."),
                 epochs: int = typer.Option(CompressConfig.epochs, min=1,
                                            help="Most fine-tuning epochs per rank (the best on validation is kept)."),
                 fit: str = typer.Option(CompressConfig.fit, help="adam: gradient steps on the log cores; em: "
                                                                  "expectation-maximisation over all rows per iteration "
                                                                  "(--epochs iterations; --lr and --batch-size unused)."),
                 lr: float = typer.Option(CompressConfig.lr), batch_size: int = typer.Option(CompressConfig.batch_size, min=1),
                 discriminative: float = typer.Option(CompressConfig.discriminative, help="Weight of log p(class|x) in fine-tuning."),
                 order: str = typer.Option(CompressConfig.order, help="Variable order of the train: spn (the SPN's depth-first walk) "
                                                       "or mi (dependent variables side by side, from the training rows)."),
                 rounding: str = typer.Option(CompressConfig.rounding, help="Truncation of the exact train: kl (KL-divergence NMF) or "
                                                         "als (alternating nonnegative least squares)."),
                 max_rank: int = typer.Option(CompressConfig.max_rank, min=1, help="The largest exact train that is built."),
                 seed: int = typer.Option(CompressConfig.seed),
                 resume: bool = typer.Option(False, help="Continue: keep the ranks already done."),
                 quiet: bool = typer.Option(False, help="No progress bars.")) -> None:
    """Compress an SPN into tensor trains (from its exact train, or fitted to it) and compare them with the SPN."""
    from trustlab.report import number, times
    from trustlab.spn.pipeline import compress_spn, load_fit, rank_for_ratio, start_route, variable_order

    if (rank is None) == (target_ratio is None):
        raise ConfigError("give exactly one of --rank and --target-ratio")
    cfg = CompressConfig(source=run_dir, init=init, distill_samples=distill_samples, epochs=epochs, fit=fit, lr=lr,
                         batch_size=batch_size, discriminative=discriminative, order=order, rounding=rounding,
                         max_rank=max_rank, seed=seed)
    if rank is not None:
        ranks = _ranks(rank)
    else:
        cfg.validate()
        _, _, graph, data = load_fit(run_dir)
        variables = variable_order(cfg, graph, data)
        ranks = (rank_for_ratio(graph, variables, target_ratio, exact=start_route(cfg, graph, variables) == "exact"),)
    run = compress_spn(dataclasses.replace(cfg, ranks=ranks), out or f"{run_dir.rstrip('/')}-tspn", resume=resume,
                       quiet=quiet)
    s = run.summary()
    ex, spn = s["exact_tspn"], s["spn"]
    gap = f", max |log p gap| to the SPN {ex['max_abs_log_prob_gap']:.2e}" if ex["built"] else " (not built)"
    print(f"SPN: {s['spn_parameters']:,} parameters, {_lls(spn)}, {spn['rows_per_s']:,.0f} rows/s; exact tSPN: "
          f"{number(ex['parameters'])} parameters (rank {number(ex['max_rank'])}){gap}; tSPN from the {s['route']} route, "
          f"fitted on {s['fitted_on']}")
    for r in s["ranks"]:
        acc = f", accuracy {r['accuracy']:.4f} ({r['accuracy_drop_points']:+.2f} points lost)" if "accuracy" in r else ""
        print(f"rank {r['rank']}: {r['parameters']:,} parameters ({times(r['ratio_vs_spn'])} than the SPN, "
              f"{times(r['ratio_vs_exact_tspn'])} than the exact tSPN), {_lls(r)}{acc}, "
              f"{r['speedup_vs_spn']:.1f}x the SPN's rows/s, {r['seconds']:.0f} s")
    print(run.path / "report.html")


def _lls(figures: dict) -> str:
    valid = f"valid log-likelihood {figures['valid_ll']:.3f}, " if "valid_ll" in figures else ""
    return f"{valid}test log-likelihood {figures['test_ll']:.3f}"


@app.command("eval")
def eval_cmd(run_dir: str = typer.Argument(..., help="An spn fit or compress run folder."),
             rank: Optional[int] = typer.Option(None, min=1, help="Of a compress run: the rank to evaluate (default smallest)."),
             csv: Optional[str] = typer.Option(None, help="Evaluate on these 0/1 rows instead of the run's test split."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Test log-likelihood, accuracy (with a class variable) and rows per second of a model."""
    import torch

    from trustlab.spn.data import binary_csv
    from trustlab.spn.pipeline import evaluate, load_model

    model, data, name = load_model(run_dir, rank)
    if csv is not None:
        if data.class_var is not None:
            raise ConfigError("--csv evaluates density models (fit with --dataset csv); this one has a class variable")
        other = binary_csv(csv)
        if other.num_vars != data.num_vars:
            raise ConfigError(f"{csv} has {other.num_vars} columns, the model is over {data.num_vars} variables")
        data = dataclasses.replace(data, x_test=torch.cat([other.x_train, other.x_test]), x_valid=None, source=csv)
    res = {"model": name, "data": data.source, **evaluate(model, data)}
    if as_json:
        print(json.dumps(res, indent=2))
        return
    acc = f", accuracy {res['accuracy']:.4f}" if "accuracy" in res else ""
    print(f"{name} on {data.source}: test log-likelihood {res['test_ll']:.3f}{acc}, {res['rows_per_s']:,.0f} rows/s")
