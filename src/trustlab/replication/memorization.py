"""Memorized prompts found from the model alone, without the training images.

A text-to-image model that has memorized a training image pulls every generation for its prompt
towards that image from the first sampling step, so the model's own noise predictions give the
prompt away. Two detectors from the literature, both read from the first ``first_steps`` steps of
guided DDIM sampling from ``seeds`` starting noises and averaged over them:

* ``magnitude`` (Wen et al., ICLR 2024): the size of the text-conditional part of the noise
  prediction, ``‖ε(x_t, prompt) − ε(x_t, ∅)‖₂``. A memorized prompt has a large one: the prompt,
  not the noise, decides the image.
* ``attention-entropy`` (Ren et al., ECCV 2024): the entropy of the cross-attention over the
  prompt's tokens, averaged over layers, heads and image positions, for the conditional
  prediction. Ren et al. find memorized prompts spreading their attention over the prompt's
  tokens (a higher entropy) where other prompts put it on few tokens at the first steps; the
  direction is theirs and the benchmark measures whether it holds on a given model.

Higher scores mean "more likely memorized" for both. :func:`gate_threshold` turns the scores of
a reference set of prompts (prompts the model was not trained on) into a threshold with a chosen
false-positive rate; :mod:`trustlab.replication.sampling` applies mitigations only to prompts
above it. :func:`lower_magnitude` is Wen et al.'s inference-time mitigation: the prompt's text
states optimised until the magnitude at the first step falls below a target.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trustlab.errors import ConfigError
from trustlab.files import read_text
from trustlab.replication.config import DETECTORS


def check_fpr(fpr: float, option: str = "--gate-fpr") -> float:
    if not 0 < fpr < 1:
        raise ConfigError(f"{option} {fpr:g}: a false-positive rate lies in (0, 1)")
    return fpr


@dataclass
class Prompts:
    """Prompts to score, and for each whether it is known to be memorized (``labels``; None when unknown)."""

    texts: list[str]
    labels: np.ndarray | None = None


def read_prompts(path: str | Path) -> Prompts:
    """A prompts file: one prompt per line, or JSON lines ``{"prompt": ..., "memorized": true|false}`` (the
    label optional, but on every line or none)."""
    text = read_text(path, "prompts file")
    lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines:
        raise ConfigError(f"{path} holds no prompts: give one prompt per line or JSON lines {{\"prompt\": ...}}")
    if not lines[0][1].lstrip().startswith("{"):
        return Prompts([line.strip() for _, line in lines])
    texts, labels = [], []
    for n, line in lines:
        try:
            record = json.loads(line)
            texts.append(str(record["prompt"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(f"{path} line {n}: not a JSON object with a \"prompt\"") from None
        label = record.get("memorized")
        if label is not None and label not in (True, False):  # 0 and 1 compare equal to them; "no" would be true
            raise ConfigError(f"{path} line {n}: \"memorized\" is {label!r}: give true or false")
        labels.append(label)
    known = [v is not None for v in labels]
    if any(known) and not all(known):
        raise ConfigError(f"{path}: \"memorized\" is given on {sum(known)} of {len(labels)} lines: give it on every line or none")
    return Prompts(texts, np.array([bool(v) for v in labels]) if all(known) else None)


class AttentionEntropy:
    """Cross-attention processors that also record, per sample, the entropy of the attention over the tokens.

    Installed on every cross-attention layer of a diffusers UNet (``with AttentionEntropy(unet) as probe``);
    the attention itself is computed by diffusers' standard processor, unchanged, and the entropy from
    the same query and key projections. ``probe.take()`` returns the mean over layers since the last call.
    """

    def __init__(self, unet):
        self.unet, self.values = unet, []

    def __enter__(self) -> "AttentionEntropy":
        from diffusers.models.attention_processor import AttnProcessor

        self.saved = self.unet.attn_processors
        base = AttnProcessor()
        self.unet.set_attn_processor({name: self._probe(base) if name.endswith("attn2.processor") else proc
                                      for name, proc in self.saved.items()})
        return self

    def __exit__(self, *exc) -> None:
        self.unet.set_attn_processor(self.saved)

    def _probe(self, base):
        def processor(attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kwargs):
            if encoder_hidden_states is not None and hidden_states.dim() == 3:
                context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
                b, tokens = hidden_states.shape[0], context.shape[1]
                mask = attn.prepare_attention_mask(attention_mask, tokens, b)
                probs = attn.get_attention_scores(attn.head_to_batch_dim(attn.to_q(hidden_states)),
                                                  attn.head_to_batch_dim(attn.to_k(context)), mask)
                entropy = -torch.special.xlogy(probs, probs).sum(-1).mean(-1)  # [b * heads]
                self.values.append(entropy.view(b, -1).mean(1).float())
            return base(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        return processor

    def take(self) -> torch.Tensor:
        out = torch.stack(self.values).mean(0)
        self.values = []
        return out


def guided(unet, x: torch.Tensor, t, states: torch.Tensor, mask: torch.Tensor, null: tuple[torch.Tensor, torch.Tensor]):
    """The unconditional and conditional noise predictions of ``x`` at ``t`` (one batched call)."""
    b = len(x)
    ctx = torch.cat([null[0].expand(b, -1, -1), states])
    ctx_mask = torch.cat([null[1].expand(b, -1), mask])
    return unet(torch.cat([x, x]), t, encoder_hidden_states=ctx, encoder_attention_mask=ctx_mask).sample.chunk(2)


@torch.no_grad()
def first_step_scores(unet, scheduler, x: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
                      null: tuple[torch.Tensor, torch.Tensor], guidance: float, first_steps: int,
                      detectors: tuple[str, ...] = DETECTORS) -> dict[str, torch.Tensor]:
    """Each detector's score [B] for prompts ``states`` from starting noise ``x``, over the first ``first_steps``
    steps of ``scheduler`` (DDIM, timesteps set), sampled deterministically with classifier-free ``guidance``."""
    out = {name: torch.zeros(len(x)) for name in detectors}
    probe = AttentionEntropy(unet) if "attention-entropy" in detectors else None
    with probe if probe is not None else nullcontext():
        for t in scheduler.timesteps[:first_steps]:
            uncond, cond = guided(unet, x, t, states, mask, null)
            if "magnitude" in detectors:
                out["magnitude"] += (cond - uncond).flatten(1).norm(dim=1).float().cpu()
            if probe is not None:
                out["attention-entropy"] += probe.take()[len(x):].cpu()  # the conditional half
            x = scheduler.step(uncond + guidance * (cond - uncond), t, x, eta=0.0).prev_sample
    return {k: v / first_steps for k, v in out.items()}


def lower_magnitude(unet, x: torch.Tensor, t, states: torch.Tensor, mask: torch.Tensor,
                    null: tuple[torch.Tensor, torch.Tensor], *, steps: int, lr: float,
                    target: float | None = None) -> torch.Tensor:
    """Wen et al.'s mitigation: the text ``states`` optimised by Adam to lower the magnitude at the first step
    ``t`` from noise ``x``; a prompt stops once its magnitude is at most ``target`` (None: all ``steps``)."""
    with torch.no_grad():
        b = len(x)
        uncond = unet(x, t, encoder_hidden_states=null[0].expand(b, -1, -1), encoder_attention_mask=null[1].expand(b, -1)).sample
    e = states.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([e], lr=lr)
    for _ in range(steps):
        with torch.enable_grad():
            cond = unet(x, t, encoder_hidden_states=e, encoder_attention_mask=mask).sample
            magnitude = (cond - uncond).flatten(1).norm(dim=1)
            active = torch.ones_like(magnitude, dtype=torch.bool) if target is None else magnitude > target
            if not bool(active.any()):
                break
            (grad,) = torch.autograd.grad((magnitude * active).sum(), [e])  # the states' gradient only, not the weights'
        e.grad = grad
        before = e.detach().clone()
        opt.step()
        with torch.no_grad():
            e[~active] = before[~active]  # a finished prompt stays where it stopped (Adam's momentum would carry it on)
    return e.detach()


@torch.no_grad()
def memorized_share(unet, x: torch.Tensor, t: torch.Tensor, states: torch.Tensor, mask: torch.Tensor,
                    null: tuple[torch.Tensor, torch.Tensor], share: float) -> torch.Tensor:
    """[B] bool: which samples to keep when the share ``share`` of the batch with the largest magnitude at
    ``t`` is left out (Wen et al.'s training-time filter; a share, not a fixed level, so it needs no
    threshold on a model whose magnitudes change as it trains)."""
    uncond, cond = guided(unet, x, t, states, mask, null)
    magnitude = (cond - uncond).flatten(1).norm(dim=1)
    keep = torch.ones(len(x), dtype=torch.bool, device=x.device)
    drop = int(share * len(x))
    if drop:
        keep[magnitude.topk(drop).indices] = False
    return keep


def gate_threshold(reference: np.ndarray, fpr: float) -> float:
    """The score above which a share ``fpr`` of the reference prompts (not memorized) would be flagged."""
    check_fpr(fpr)
    return float(np.quantile(np.asarray(reference, dtype=np.float64), 1 - fpr))


def roc(scores: np.ndarray, labels: np.ndarray) -> dict:
    """ROC of ``scores`` (higher: memorized) against boolean ``labels``: AUC, TPR at 1% FPR, and the curve."""
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if not pos or not neg:
        raise ConfigError(f"an ROC needs memorized and other prompts: the labels give {pos} and {neg}")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tpr = np.r_[0.0, np.cumsum(y)[last] / pos]
    fpr = np.r_[0.0, np.cumsum(~y)[last] / neg]
    auc = float((np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2).sum())
    at = float(tpr[fpr <= 0.01].max())  # the most found while at most 1% of the others are flagged
    return {"auc": auc, "tpr_at_1pct_fpr": at, "positives": pos, "negatives": neg,
            "fpr": fpr.round(5).tolist(), "tpr": tpr.round(5).tolist()}


__all__ = ["DETECTORS", "AttentionEntropy", "Prompts", "check_fpr", "first_step_scores",
           "gate_threshold", "guided", "lower_magnitude", "memorized_share", "read_prompts", "roc"]
