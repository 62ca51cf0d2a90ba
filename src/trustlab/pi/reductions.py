"""ReLU reduction to a budget: SENet and its baselines (SNL, layer-drop) in one code path.

Each method is a :class:`Reduction` subclass registered in ``IMPLEMENTATIONS`` under its name in
:data:`trustlab.pi.methods.METHODS`: it decides the masks (``search``) and says how it is
fine-tuned; :func:`run_reduction` does the rest, the same for all.

Every method starts from the same all-ReLU teacher run, uses the teacher's data, replaces
each ReLU by a :class:`~trustlab.pi.masks.PartialReLU`, spends ``search_epochs`` deciding
which ReLUs stay and ``finetune_epochs`` distilling from the teacher with the mask fixed, so
methods compare at equal training.

* **senet** — stage 1: per-layer ReLU counts from :func:`pruning_sensitivity` and
  :func:`allocate` (exact total); stage 2: top-k mask search per layer (scores initialised
  from the teacher's mean negative part ``E[relu(−x)]`` at each position — what linearising
  that position would change — then trained through the straight-through estimator, jointly
  with the weights at a tenth of the rate, exactly as SNL trains its α, so that both spend
  their search epochs alike); stage 3: CE + KL(T=4) + β·PRAM distillation.
* **snl** — Selective Network Linearization (Cho et al., 2022), as in its public code: α per
  position, initial 1, trained with the weights under CE + KD + λ‖α‖₁; the final mask keeps
  the ``budget`` largest α over the whole network. Two λ schedules (``snl_schedule``):
  ``until-budget`` is the rule of SNL's public code — after each search epoch the ReLUs whose
  α exceeds ``snl_threshold`` are counted, λ grows ×1.1 whenever that count did not fall below
  its lowest so far (from the sixth epoch on), and the search stops once the count is within the
  budget or after ``search_epochs`` epochs (the cap, reported in the summary when hit);
  ``ramp`` (the default, for short fixed schedules) grows λ ×1.1 every 1% of the
  ``search_epochs``. Both resume exactly. Fine-tuning is CE + KD.
* **layerdrop** — DeepReDuce-style: whole ReLU layers are linearised, least critical first
  (:func:`removal_sensitivity`), until the count is within budget; then CE + KD for all epochs.
  Its count is at most the budget, not equal to it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from trustlab.errors import ConfigError, RunError
from trustlab.pi.accounting import count
from trustlab.pi.config import ReductionConfig
from trustlab.pi.distill import DistillationLoss
from trustlab.pi.load import chained_job
from trustlab.pi.graph import split_sites
from trustlab.pi.masks import PartialReLU, install_partial_relus, partial_relus, topk_mask
from trustlab.pi.sensitivity import allocate, pruning_sensitivity, removal_sensitivity
from trustlab.report import render_report
from trustlab.files import read_json
from trustlab.runs import Job, RunDir, atomic_save_figure, atomic_write_json
from trustlab.train import evaluate, fit
from trustlab.train_config import TrainConfig

def _negative_part(teacher: nn.Module, layers: list[str], x: torch.Tensor, granularity: str) -> dict[str, torch.Tensor]:
    """Mean of relu(-input) at each position of each ReLU layer (per channel for channel masks)."""
    sums: dict[str, torch.Tensor] = {}
    hooks = [teacher.get_submodule(n).register_forward_hook(
        lambda m, i, o, n=n: sums.__setitem__(n, sums.get(n, 0) + torch.relu(-i[0]).sum(0))) for n in layers]
    try:
        with torch.no_grad():
            for i in range(0, len(x), 250):
                teacher(x[i : i + 250])
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for n, s in sums.items():
        s = s / len(x)
        s = s.mean(dim=(1, 2), keepdim=True) if granularity == "channel" else s
        out[n] = (s - s.mean()) / (s.std() + 1e-12)  # unit scale, so the search rate means the same in every layer
    return out


def _train_cfg(cfg: ReductionConfig, epochs: int, search: bool) -> TrainConfig:
    if search:
        return TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.search_lr, optimizer="adamw",
                           weight_decay=0.0, schedule="constant", augment=True, seed=cfg.seed, device=cfg.device)
    return TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, optimizer="sgd", weight_decay=5e-4,
                       schedule="cosine", augment=True, seed=cfg.seed + 1, device=cfg.device)


def _scores_and_weights(student: nn.Module) -> list[dict]:
    """Param groups of a mask search: scores/α at the search rate, weights at a tenth of it."""
    scores = [m.scores for m in partial_relus(student).values()]
    weights = [p for p in student.parameters() if all(p is not s for s in scores)]
    return [{"params": scores}, {"params": weights, "lr_scale": 0.1}]


def _alpha_l1(model: nn.Module) -> torch.Tensor:
    return sum(m.scores.abs().sum() for m in partial_relus(model).values())


def _snl_penalty(cfg: ReductionConfig, steps: int):
    """The ramp schedule's λ‖α‖₁: λ ×1.1 every 1% of ``steps``, counted in ``state`` so a resumed search continues it."""
    state = {"step": 0}

    def penalty(model: nn.Module) -> torch.Tensor:
        lam = cfg.snl_lambda * 1.1 ** (100 * state["step"] / max(1, steps))
        state["step"] += 1
        return lam * _alpha_l1(model)
    return penalty, state


@dataclass
class Search:
    """What a method's mask search works on: the teacher, the student with a partial ReLU per ReLU
    layer, the data, and the run folder it checkpoints into."""

    cfg: ReductionConfig
    teacher: nn.Module
    student: nn.Module
    layers: list[str]
    data: object
    shape: tuple[int, int, int]
    run: RunDir
    resume: bool
    quiet: bool
    notes: dict = field(default_factory=dict)  # what the search reports in the run's summary

    @property
    def masks(self) -> dict[str, PartialReLU]:
        return partial_relus(self.student)

    @property
    def capacity(self) -> dict[str, int]:
        return {n: m.units * m.unit_size for n, m in self.masks.items()}

    def train_masks(self, loss: DistillationLoss, epochs: int | None = None, resume: bool | None = None) -> None:
        """Search epochs (all ``search_epochs`` by default): mask scores (or α) and weights together,
        checkpointed as ``search``; a later call with more ``epochs`` continues from that checkpoint."""
        epochs = self.cfg.search_epochs if epochs is None else epochs
        if epochs:
            fit(self.student, self.data.x_train, self.data.y_train, _train_cfg(self.cfg, epochs, True), self.run, loss_fn=loss,
                resume=self.resume if resume is None else resume, quiet=self.quiet, params=_scores_and_weights(self.student),
                tag="search")


class Reduction(abc.ABC):
    """A ReLU-reduction method: ``search`` fixes every layer's mask (and returns a per-layer table of
    the decision); fine-tuning then distils from the teacher with the masks fixed."""

    pram = False  # fine-tuning aligns post-ReLU activations (β·PRAM); otherwise plain CE + KD
    search_trains_masks = True  # False: the search epochs go to fine-tuning instead

    @abc.abstractmethod
    def search(self, s: Search) -> list[dict]:
        """Fix every layer's mask; one row per layer (``layer``, ``relus``, ``allocated``, the method's evidence)."""

    def finetune_epochs(self, cfg: ReductionConfig) -> int:
        return cfg.finetune_epochs + (0 if self.search_trains_masks else cfg.search_epochs)


class SENet(Reduction):
    pram = True

    def search(self, s: Search) -> list[dict]:
        cfg, prl, capacity = s.cfg, s.masks, s.capacity
        sens = pruning_sensitivity(s.teacher, s.shape, cfg.proxy_density)
        counts = allocate(capacity, sens, cfg.budget)
        init = _negative_part(s.teacher, s.layers, s.data.x_train[: cfg.probe_images], cfg.granularity)
        rows = []
        for n in s.layers:
            keep = counts[n] // prl[n].unit_size
            prl[n].start_search("topk", init[n], keep)
            rows.append({"layer": n, "relus": capacity[n], "sensitivity": round(sens[n], 5), "allocated": keep * prl[n].unit_size})
        s.train_masks(DistillationLoss(s.teacher, s.layers, cfg.temperature, cfg.beta))
        for m in prl.values():
            m.freeze()
        return rows


class SNL(Reduction):
    def search(self, s: Search) -> list[dict]:
        cfg, prl, capacity = s.cfg, s.masks, s.capacity
        for n in s.layers:
            prl[n].start_search("soft", torch.ones(prl[n].mask.shape))
        if cfg.snl_schedule == "until-budget":
            self.search_until_budget(s)
        else:
            steps = cfg.search_epochs * (len(s.data.x_train) // cfg.batch_size)
            penalty, state = _snl_penalty(cfg, steps)
            if s.resume and s.run.has_checkpoint("search"):
                state["step"] = s.run.load_checkpoint("search")[1]["step"]  # λ continues where it was
            s.train_masks(DistillationLoss(s.teacher, s.layers, cfg.temperature, 0.0, extra=penalty))
        flat = torch.cat([prl[n].scores.detach().flatten() for n in s.layers])
        keep_all = topk_mask(flat, cfg.budget)
        offset, rows = 0, []
        for n in s.layers:
            k = int(keep_all[offset : offset + prl[n].units].sum())
            offset += prl[n].units
            above = int((prl[n].scores.detach() > 1e-2).sum())
            prl[n].freeze(k)
            rows.append({"layer": n, "relus": capacity[n], "alpha_above_1e-2": above, "allocated": k})
        return rows

    @staticmethod
    def search_until_budget(s: Search) -> None:
        """SNL's public-code search: epoch by epoch until the α above threshold fit the budget.

        The λ state and the per-epoch counts live in ``snl_search.json`` beside the ``search``
        checkpoint, written after each epoch, so a resumed search picks up λ where it was; an
        epoch whose checkpoint was written but not its count is counted again from the weights.
        """
        cfg, path = s.cfg, s.run.path / "snl_search.json"
        state = {"lambda": cfg.snl_lambda, "epochs": []}
        if s.resume and path.exists():
            state = read_json(path, "SNL search state", RunError)
            if not isinstance(state, dict) or not isinstance(state.get("epochs"), list) or not isinstance(state.get("lambda"), (int, float)):
                raise RunError(f"{path} is not an SNL search state: rerun without --resume into a new folder")
        loss = DistillationLoss(s.teacher, s.layers, cfg.temperature, 0.0, extra=lambda m: state["lambda"] * _alpha_l1(m))
        history = state["epochs"]

        def within_budget() -> bool:
            return bool(history) and history[-1]["relus_above_threshold"] <= cfg.budget

        if history:  # resumed: the weights as of the last counted epoch (or of a later one not yet counted)
            s.train_masks(loss, epochs=len(history), resume=True)
        while len(history) < cfg.search_epochs and not within_budget():
            epoch = len(history) + 1
            s.train_masks(loss, epochs=epoch, resume=s.resume or epoch > 1)
            kept = sum(int((m.scores.detach() > cfg.snl_threshold).sum()) * m.unit_size for m in s.masks.values())
            stalled = epoch > 5 and kept >= min(h["relus_above_threshold"] for h in history)
            history.append({"epoch": epoch, "relus_above_threshold": kept, "lambda": state["lambda"]})  # λ of this epoch
            if stalled:
                state["lambda"] *= 1.1
            atomic_write_json(path, state)
        s.run.write_table("snl_search", history, title="SNL search: ReLUs with α above the threshold, and λ, per epoch")
        s.notes.update(search_epochs_run=len(history), search_cap_hit=bool(history) and not within_budget(),
                       snl_final_lambda=state["lambda"])


class LayerDrop(Reduction):
    search_trains_masks = False

    def search(self, s: Search) -> list[dict]:
        cfg, prl, capacity = s.cfg, s.masks, s.capacity
        crit = removal_sensitivity(s.teacher, s.data.x_train[: cfg.probe_images], s.data.y_train[: cfg.probe_images], s.layers)
        total = sum(capacity.values())
        dropped = set()
        for n in sorted(s.layers, key=lambda n: (crit[n]["kl"], n)):
            if total <= cfg.budget:
                break
            prl[n].mask.zero_()
            dropped.add(n)
            total -= capacity[n]
        return [{"layer": n, "relus": capacity[n], "criticality_kl": round(crit[n]["kl"], 5),
                 "allocated": 0 if n in dropped else capacity[n]} for n in s.layers]


IMPLEMENTATIONS: dict[str, Reduction] = {"senet": SENet(), "snl": SNL(), "layerdrop": LayerDrop()}  # keys: METHODS


def run_reduction(cfg: ReductionConfig, out: str | Path, *, resume: bool = False, quiet: bool = False) -> RunDir:
    """Reduce the teacher run's model to ``cfg.budget`` ReLUs with ``cfg.method``; write a run folder."""
    return reduce_model(*chained_job(cfg, out, resume), resume=resume, quiet=quiet)


def check_budget(teacher: nn.Module, shape: tuple[int, ...], budget: int, what: str = "the model") -> int:
    """The teacher's ReLU count; a teacher with masks already, or a budget it cannot meet, is an error."""
    if partial_relus(teacher):
        raise ConfigError(f"{what} already has partial ReLUs: give an all-ReLU (pi train) or shallow (pi shallow) model")
    total = count(teacher, shape).relus
    if total == 0:
        raise ConfigError(f"{what} has no ReLU call sites: nothing to reduce")
    if not 0 < budget < total:
        raise ConfigError(f"--budget {budget:,} is impossible: {what} has {total:,} ReLUs, give 1..{total - 1:,}")
    return total


def reduce_model(job: Job, teacher: nn.Module, shape: tuple[int, ...], data, link: dict, *, resume: bool = False,
                 quiet: bool = False) -> RunDir:
    """The reduction itself, on any traceable teacher model and its data, into ``job``'s run folder.

    Every ReLU call site of the teacher becomes its own module (:func:`~trustlab.pi.graph.split_sites`)
    and the student gets a partial ReLU at each, so sensitivity, masks and distillation address
    sites by name whatever form the model's code calls ReLU in.
    """
    cfg = job.config
    total = check_budget(teacher, shape, cfg.budget)
    run = job.start()
    teacher, _ = split_sites(teacher, shape)
    teacher.eval()
    teacher_acc = evaluate(teacher, data.x_test, data.y_test)["acc"]
    torch.manual_seed(cfg.seed)
    student, layers = install_partial_relus(teacher, shape, cfg.granularity)
    before = {r.name: r.relus for r in count(student, shape).relu_layers()}
    method = IMPLEMENTATIONS[cfg.method]
    search = Search(cfg, teacher, student, layers, data, shape, run, resume, quiet)
    rows = method.search(search)
    beta = cfg.beta if method.pram else 0.0
    result = fit(student, data.x_train, data.y_train, _train_cfg(cfg, method.finetune_epochs(cfg), False), run,
                 x_test=data.x_test, y_test=data.y_test, loss_fn=DistillationLoss(teacher, layers, cfg.temperature, beta),
                 resume=resume, quiet=quiet, tag="finetune")
    acc = count(student, shape)
    after = {r.name: r.relus for r in acc.relu_layers()}
    for r in rows:
        r["relus_after"] = after[r["layer"]]
    run.write_table("relus", [{"layer": r["layer"], "relus_before": before[r["layer"]], **{k: v for k, v in r.items() if k not in ("layer", "relus")}}
                              for r in rows], title="Per-layer ReLUs before and after")
    run.write_summary({"method": cfg.method, "budget": cfg.budget, "relus": acc.relus, "teacher_relus": total,
                       "relu_reduction": total / max(1, acc.relus), "test_acc": result.get("test_acc"),
                       "teacher_acc": teacher_acc, "acc_drop_points": 100 * (teacher_acc - result.get("test_acc", 0)),
                       "macs": acc.macs, **link, "input_shape": list(shape), "classes": len(data.classes), **search.notes})
    plot_accuracy_vs_relus(run)
    render_report(run.path)
    return run


def plot_accuracy_vs_relus(run: RunDir) -> None:
    """Accuracy against ReLU count for this run, its teacher, and sibling runs of the same teacher."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    me = run.summary()
    points: dict[str, list] = {}
    for sib in sorted(run.path.parent.iterdir()):
        s = sib / "summary.json"
        if sib.is_dir() and s.exists():
            doc = RunDir(sib).summary()
            if (doc.get("teacher"), doc.get("model")) == (me.get("teacher"), me.get("model")) and "method" in doc:
                points.setdefault(doc["method"], []).append((doc["relus"], doc["test_acc"]))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([me["teacher_relus"]], [me["teacher_acc"]], marker="*", s=150, color="k", label="all-ReLU teacher")
    for method, pts in sorted(points.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("ReLUs")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, run.plot_path("accuracy_vs_relus"), dpi=100)
    plt.close(fig)


__all__ = ["IMPLEMENTATIONS", "Reduction", "Search", "check_budget", "reduce_model", "run_reduction"]
