"""``trustlab pi``: ReLU accounting and ReLU-reduced models for private inference."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Optional

import typer

from trustlab.cli.apps import new_app
from trustlab.errors import ConfigError, RunError
from trustlab.files import read_json
from trustlab.pi.config import SNL_SCHEDULES, ClassifierConfig, DataConfig, ReductionConfig, ShallowConfig
from trustlab.pi.methods import METHODS

app = new_app()
TEACHER = ClassifierConfig()  # the defaults of `pi train`


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) < 1:
        raise ConfigError(f"--input must be CxHxW with positive integers (e.g. 3x32x32), not '{text}'")
    return dims  # type: ignore[return-value]


MODEL_HELP = "resnet18 | wrn22-8 | FILE.py:FACTORY (your model: FACTORY() returns an nn.Module)"
DATA_DIR_HELP = "Folder with CIFAR batches (cifar10/cifar100), or your images for --dataset folder (one sub-folder per class)."


def model_spec(text: str | None) -> str | None:
    """A built-in model name as it is; ``FILE.py:FACTORY`` with the file's absolute path."""
    from trustlab.pi.factory import is_factory_spec, resolve_spec

    return resolve_spec(text) if text and is_factory_spec(text) else text


@app.command("count")
def count_cmd(model: str = typer.Option("resnet18", help=MODEL_HELP),
              input: str = typer.Option("3x32x32", "--input", help="Input shape CxHxW."),
              classes: int = typer.Option(10, min=1, help="Number of classes."),
              width: float = typer.Option(1.0, help="Width multiplier (0.25 gives ResNet18 width 16)."),
              as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Per-layer ReLUs, MACs and parameters of a model, and totals."""
    from trustlab.pi.accounting import count
    from trustlab.pi.models import build_model, check_input

    shape = parse_shape(input)
    model = model_spec(model)
    m = build_model(model, classes, shape[0], width)
    check_input(m, shape)
    acc = count(m, shape)
    if as_json:
        print(json.dumps({"model": model, "input": list(shape), "classes": classes, "width": width, **acc.to_dict()}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{model} (width {width}) on {input}, {classes} classes")
    for col in ("layer", "kind", "output", "ReLUs", "comparisons", "MACs", "params"):
        t.add_column(col, justify="left" if col in ("layer", "kind") else "right")
    for r in acc.layers:
        t.add_row(r.name, r.kind + (" (not covered)" if r.note else ""), "x".join(map(str, r.output)), f"{r.relus:,}",
                  f"{r.comparisons:,}", f"{r.macs:,}", f"{r.params:,}")
    t.add_row("total", "", "", f"{acc.relus:,}", f"{acc.comparisons:,}", f"{acc.macs:,} ({acc.macs / 1e9:.3f} G)",
              f"{acc.params:,}", style="bold")
    Console(width=160).print(t)
    if acc.uncovered:
        print(f"not covered by ReLU cost models: {', '.join(sorted({r.kind for r in acc.uncovered}))} "
              f"({len(acc.uncovered)} sites): their secure cost is not in these figures")


@app.command("train")
def train_cmd(out: str = typer.Option("runs/pi-train", help="Run folder to write."),
              dataset: str = typer.Option(TEACHER.data.dataset, help="Any classification dataset of `trustlab data list`."),
              data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
              model: str = typer.Option(TEACHER.model, help=MODEL_HELP),
              width: float = typer.Option(TEACHER.width, help="Width multiplier (0.25: ResNet18 width 16)."),
              epochs: int = typer.Option(TEACHER.train.epochs, min=1),
              batch_size: int = typer.Option(TEACHER.train.batch_size, min=1), lr: float = typer.Option(TEACHER.train.lr),
              limit: Optional[int] = typer.Option(None, min=1, help="Train on the first N images only."),
              test_limit: Optional[int] = typer.Option(None, min=1, help="Evaluate on the first N test images only."),
              seed: int = typer.Option(TEACHER.train.seed), device: str = typer.Option(TEACHER.train.device, help="auto | cpu | cuda"),
              checkpoint_every: int = typer.Option(TEACHER.train.checkpoint_every, min=0,
                                                   help="Write a checkpoint every N steps (and at each epoch end)."),
              resume: bool = typer.Option(False, help="Continue the run folder from its last checkpoint."),
              quiet: bool = typer.Option(False, help="No progress bars.")) -> None:
    """Train the all-ReLU baseline (the teacher of SENet, SNL, layer-drop and shallow)."""
    from trustlab.pi.training import train_classifier

    cfg = ClassifierConfig(model=model_spec(model), width=width,
                           data=DataConfig(dataset=dataset, data_dir=data_dir, limit=limit, test_limit=test_limit),
                           train=replace(TEACHER.train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, device=device,
                                         checkpoint_every=checkpoint_every))
    run = train_classifier(cfg, out, resume=resume, quiet=quiet)
    from trustlab.train import world

    if world()[0] != 0:  # under torchrun, rank 0 reports
        return
    s = run.summary()
    print(f"test accuracy {s['test_acc']:.4f}, {s['relus']:,} ReLUs, {s['macs'] / 1e6:.1f} M MACs")
    print(run.path / "report.html")


def _reduction_command(method: str, doc: str) -> None:
    def command(teacher: Optional[str] = typer.Option(None, help="Run folder of `trustlab pi train` (the all-ReLU teacher)."),
                model: Optional[str] = typer.Option(None, help="Or your trained model: FILE.py:FACTORY (with --dataset)."),
                dataset: str = typer.Option(DataConfig.dataset, help="With --model: its data (any of `trustlab data list`, or folder)."),
                data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
                budget: int = typer.Option(..., help="ReLUs to keep in the whole network."),
                out: Optional[str] = typer.Option(None, help=f"Run folder to write (default runs/pi-{method}-BUDGET)."),
                granularity: str = typer.Option(ReductionConfig.granularity, help="pixel | channel (senet only)."),
                search_epochs: int = typer.Option(ReductionConfig.search_epochs, min=1,
                                                  help="Epochs to decide where ReLUs stay (snl until-budget: the most)."),
                snl_schedule: str = typer.Option(ReductionConfig.snl_schedule,
                                                 help=f"{' | '.join(SNL_SCHEDULES)}: SNL's penalty schedule (snl only)."),
                snl_lambda: float = typer.Option(ReductionConfig.snl_lambda, help="SNL's initial penalty weight (snl only)."),
                finetune_epochs: int = typer.Option(ReductionConfig.finetune_epochs, min=1,
                                                    help="Epochs of distillation with the mask fixed."),
                batch_size: int = typer.Option(ReductionConfig.batch_size, min=1),
                lr: float = typer.Option(ReductionConfig.lr, help="Fine-tuning learning rate."),
                beta: float = typer.Option(ReductionConfig.beta, help="Weight of the post-ReLU activation alignment (senet)."),
                temperature: float = typer.Option(ReductionConfig.temperature, help="Temperature of the distillation from the teacher."),
                train_limit: Optional[int] = typer.Option(None, min=1, help="Train on the teacher's first N training images only."),
                seed: int = typer.Option(ReductionConfig.seed), device: str = typer.Option(ReductionConfig.device),
                resume: bool = typer.Option(False, help="Continue the run folder from its last checkpoint."),
                quiet: bool = typer.Option(False)) -> None:
        from trustlab.pi.reductions import run_reduction
        from trustlab.report import times

        cfg = ReductionConfig(method=method, teacher=teacher or "", model=model_spec(model),
                              data=DataConfig(dataset=dataset, data_dir=data_dir), budget=budget, granularity=granularity,
                              search_epochs=search_epochs, snl_schedule=snl_schedule, snl_lambda=snl_lambda,
                              finetune_epochs=finetune_epochs, batch_size=batch_size,
                              lr=lr, beta=beta, temperature=temperature, train_limit=train_limit, seed=seed, device=device)
        run = run_reduction(cfg, out or f"runs/pi-{method}-{budget}", resume=resume, quiet=quiet)
        s = run.summary()
        print(f"{method}: {s['relus']:,} ReLUs ({times(s['relu_reduction'], 'fewer', 'more')}), test accuracy {s['test_acc']:.4f} "
              f"(teacher {s['teacher_acc']:.4f})")
        print(run.path / "report.html")

    command.__doc__ = doc
    app.command(method)(command)


for _method in METHODS.values():
    _reduction_command(_method.name, _method.summary)


@app.command("shallow")
def shallow_cmd(teacher: Optional[str] = typer.Option(None, help="Run folder of `trustlab pi train`."),
                model: Optional[str] = typer.Option(None, help="Or your trained model: FILE.py:FACTORY (with --dataset)."),
                dataset: str = typer.Option(DataConfig.dataset, help="With --model: its data (any of `trustlab data list`, or folder)."),
                data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
                target_relu_reduction: float = typer.Option(ShallowConfig.target_relu_reduction,
                                                            help="Remove inner ReLU layers until ReLUs fall by this factor."),
                kernel: int = typer.Option(ShallowConfig.kernel, min=0, help="3: merged blocks become trained 3x3 convolutions (fewer MACs); 0: exact merge (5x5/7x7, more MACs)."),
                out: Optional[str] = typer.Option(None, help="Run folder to write (default runs/pi-shallow)."),
                anneal_epochs: int = typer.Option(ShallowConfig.anneal_epochs, min=0, help="Epochs in which the removed ReLUs' slope rises from 0 to 1 before the exact merge (0: remove them at once)."),
                ring_epochs: Optional[int] = typer.Option(ShallowConfig.ring_epochs, min=0, help="Epochs in which merged kernels' taps outside the central 3x3 fade to 0 before the cut (default 1 with --kernel 3; 0: cut at once)."),
                finetune_epochs: int = typer.Option(ShallowConfig.finetune_epochs, min=1,
                                                    help="Epochs of distillation of the final shallow model."),
                beta: float = typer.Option(ShallowConfig.beta, min=0.0,
                                           help="Weight of block-wise alignment of block outputs with the teacher's."),
                batch_size: int = typer.Option(ShallowConfig.batch_size, min=1), lr: float = typer.Option(ShallowConfig.lr),
                train_limit: Optional[int] = typer.Option(None, min=1, help="Fine-tune on the teacher's first N training images only."),
                seed: int = typer.Option(ShallowConfig.seed), device: str = typer.Option(ShallowConfig.device),
                resume: bool = typer.Option(False), quiet: bool = typer.Option(False)) -> None:
    """Shallow model: remove the least sensitive inner ReLU layers and merge the convolutions around them."""
    from trustlab.pi.shallow_models import run_shallow
    from trustlab.report import times

    cfg = ShallowConfig(teacher=teacher or "", model=model_spec(model), data=DataConfig(dataset=dataset, data_dir=data_dir),
                        target_relu_reduction=target_relu_reduction, kernel=kernel,
                        anneal_epochs=anneal_epochs, ring_epochs=ring_epochs, finetune_epochs=finetune_epochs, beta=beta,
                        batch_size=batch_size, lr=lr, train_limit=train_limit,
                        seed=seed, device=device)
    run = run_shallow(cfg, out or "runs/pi-shallow", resume=resume, quiet=quiet)
    s = run.summary()
    print(f"shallow: merged {len(s['merged_blocks'])} blocks, {times(s['relu_reduction'], 'fewer', 'more')} ReLUs, "
          f"{times(s['mac_reduction'], 'fewer', 'more')} MACs, "
          f"depth {s['teacher_depth']} -> {s['depth']}, test accuracy {s['test_acc']:.4f} (teacher {s['teacher_acc']:.4f})")
    print(run.path / "report.html")


@app.command("secure-infer")
def secure_infer_cmd(run: Optional[str] = typer.Argument(None, help="A PI run folder (pi train / shallow / senet / snl / layerdrop)."),
                     model: Optional[str] = typer.Option(None, help="Or your trained model: FILE.py:FACTORY (with --dataset)."),
                     dataset: str = typer.Option(DataConfig.dataset, help="With --model: the data whose first test images are inferred."),
                     data_dir: Optional[str] = typer.Option(None, help=DATA_DIR_HELP),
                     protocol: str = typer.Option("semi2k", help="cheetah | semi2k (2 parties) | aby3 (3 parties)"),
                     images: int = typer.Option(4, min=1, help="Test images to infer."),
                     weights: str = typer.Option("secret", help="secret: weights secret-shared; public: compiled in."),
                     relu_mode: str = typer.Option("gather", help="gather: compare kept positions only; naive: mask every element.")) -> None:
    """Run the model under SPU's simulator: check against plaintext, report latency, bytes and rounds."""
    from trustlab.pi.secure import secure_infer

    if bool(run) == bool(model):
        raise ConfigError("give a run folder or --model FILE.py:FACTORY (with --dataset), not " + ("both" if run else "neither"))
    if model:
        from trustlab.pi.load import start_model
        from trustlab.pi.secure import measure_secure

        m, shape, data_cfg, _ = start_model("", model_spec(model), DataConfig(dataset=dataset, data_dir=data_dir), ".")
        r = measure_secure(m, shape, data_cfg.load().x_test[:images], protocol, weights, relu_mode)[0]
    else:
        r = secure_infer(run, protocol, images, weights, relu_mode)
    print(f"{protocol} ({relu_mode} ReLU, {weights} weights), {r['images']} images: top-1 equal to plaintext: "
          f"{r['same_top1_as_plaintext']}, max |logit error| {r['max_abs_logit_error']:.2e}")
    print(f"  {r['execution_seconds_per_image']:.2f} s/image executing ({r['seconds_per_image']:.2f} s with compilation), {r['total_bytes'] / 1e6:.2f} MB (non-linear {r['nonlinear_bytes'] / 1e6:.2f} MB, "
          f"linear {r['linear_bytes'] / 1e6:.2f} MB), {r['rounds']} rounds, {r['relus']:,} ReLUs")
    if not r["same_top1_as_plaintext"]:
        raise ConfigError("secure top-1 differs from plaintext on some image: fixed-point precision is too low for this model")


@app.command("cost")
def cost_cmd(run: str = typer.Argument(..., help="A PI run folder.")) -> None:
    """Garbled-circuit (DELPHI-style) cost from the ReLU count, beside measured SPU figures if any."""
    from pathlib import Path

    from trustlab.pi.accounting import count
    from trustlab.pi.cost import gc_cost
    from trustlab.pi.load import load_pi_model

    model, shape, _ = load_pi_model(run)
    c = gc_cost(count(model, shape).relus)
    print(f"{c['relus']:,} ReLUs: GC storage {c['storage_bytes'] / 1e6:,.1f} MB, offline garbling {c['offline_garble_seconds']:.2f} s, "
          f"online evaluation {c['online_eval_seconds']:.2f} s per image (DELPHI-style cost model)")
    for p in sorted((Path(run) / "secure").glob("*.json")):
        m = read_json(p, "secure-inference result", RunError)
        if not isinstance(m, dict) or not {"execution_seconds_per_image", "total_bytes", "rounds"} <= set(m):
            raise RunError(f"{p} is not a secure-inference result: rerun `trustlab pi secure-infer {run}`")
        print(f"measured SPU {p.stem}: {m['execution_seconds_per_image']:.2f} s/image, {m['total_bytes'] / 1e6:.2f} MB, {m['rounds']} rounds")


@app.command("secure-serve")
def secure_serve_cmd(config: str = typer.Option(..., "--config", help="Nodes file (YAML): protocol, parties, run, images."),
                     party: int = typer.Option(..., "--party", min=0, help="This process's rank: 0 client, 1 server, 2 helper (aby3).")) -> None:
    """Run one party of a distributed secure inference (start every party with the same nodes file)."""
    from trustlab.pi.serve import serve_party

    result = serve_party(config, party)
    if result is not None:
        print(f"client: top-1 {result['top1']} in {result['seconds']:.1f} s over {result['protocol']}")
    else:
        print(f"party {party}: done")
