"""Sampling a trained testbed model: DDIM with classifier-free guidance, prompts from the training captions.

The defaults (guidance 2, η = 1) suit the small testbed U-Net: with deterministic DDIM (η = 0)
and guidance 3 its errors accumulate into saturated, noisy images (on the benchmark protocol only
38% of 32 generations passed the pixel threshold, against 100% at guidance 2, η = 1), which
would make the replication metrics measure the sampler rather than memorization.

Generations are stored in the run folder as ``samples/<name>.safetensors`` (uint8 images plus
the prompts in the header), so measuring them later needs neither the model nor the encoder.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from trustlab.errors import ConfigError, RunError
from trustlab.progress import progress_bar
from trustlab.replication.data import load_captioned
from trustlab.replication.config import DETECTORS, check_detector
from trustlab.replication.memorization import (check_fpr, first_step_scores, gate_threshold, guided, lower_magnitude,
                                               read_prompts)
from trustlab.replication.mitigations import INFERENCE, Mitigations, parse, vocabulary
from trustlab.replication import pretrained
from trustlab.replication.pipeline_folder import vae_factor
from trustlab.replication.training import latent_vae, load_trained, make_scheduler
from trustlab.runs import RunDir, atomic_write_bytes, load_checkpoint_file
from trustlab.train import resolve_device


MITIGATION_SEED = 7_919  # mitigation draws come from their own generator (seed + this), so a gated-out prompt's
# generation draws exactly what it draws without mitigation


@dataclass(frozen=True)
class Gate:
    """Mitigate only the prompts whose ``detector`` score, read from the generation's own first ``first_steps``
    steps, exceeds ``threshold`` (chosen as a false-positive rate on reference prompts: :func:`gate_for`)."""

    detector: str
    threshold: float
    first_steps: int = 1
    fpr: float | None = None
    reference: str | None = None


def sample_run(run_dir: str | Path, *, n: int = 256, seed: int = 0, steps: int = 50, guidance: float = 2.0,
               eta: float = 1.0, mitigations: str = "", mitigation_p: float = 0.1, mitigation_sigma: float = 0.1,
               mitigation_steps: int = Mitigations.steps, mitigation_lr: float = Mitigations.lr,
               mitigation_delay: float = Mitigations.delay,
               gate_fpr: float | None = None, gate_reference: str | None = None, gate_detector: str = "magnitude",
               batch_size: int = 64, name: str | None = None, quiet: bool = False, device: str = "auto",
               prompts: str = "training") -> Path:
    """Generate ``n`` images for training captions drawn with ``seed``; returns the samples file.

    With ``gate_fpr`` and ``gate_reference`` (a prompts file of prompts the model was not trained on)
    the mitigations apply only to prompts that ``gate_detector`` flags at that false-positive rate.
    """
    mit = parse(mitigations, mitigation_p, mitigation_sigma, steps=mitigation_steps, lr=mitigation_lr,
                delay=mitigation_delay).check(INFERENCE, "inference")
    check_prompts(prompts)
    if (gate_fpr is None) != (gate_reference is None):
        raise ConfigError("a gate needs both --gate-fpr and --gate-reference (prompts the model was not trained on)")
    if gate_fpr is not None:
        check_fpr(gate_fpr)
        check_detector(gate_detector)
        if not mit.names:
            raise ConfigError("--gate-fpr gates mitigations: give them with --mitigation")
    dev = resolve_device(device)
    unet, cfg, encoder, run = load_trained(run_dir)
    gate = None if gate_fpr is None else gate_for(unet, cfg, encoder, read_prompts(gate_reference).texts, fpr=gate_fpr,
                                                  detector=gate_detector, guidance=guidance, steps=steps,
                                                  device=str(dev), reference_name=str(gate_reference))
    images, meta = generate(unet, cfg, encoder, n=n, seed=seed, steps=steps, guidance=guidance, eta=eta,
                            mitigations=mit, batch_size=batch_size, quiet=quiet, device=str(dev), prompts=prompts, gate=gate)
    name = name or f"seed{seed}" + (f"-{'+'.join(mit.names)}" if mit.names else "") + ("-gated" if gate else "") + \
        ("-original" if prompts == "original" else "")
    return save_samples(run.path / "samples" / f"{name}.safetensors", images, meta)


def _setup(unet, cfg, steps: int, device):
    """The DDIM schedule of ``steps`` steps, the shape the denoiser works in, and the VAE that decodes it (or None)."""
    scheduler = make_scheduler(cfg, "ddim")
    scheduler.set_timesteps(steps)
    unet.to(device)
    vae = latent_vae(cfg, device)  # a pretrained pipeline denoises latents; its VAE decodes them
    shape = (3, cfg.data.size, cfg.data.size) if vae is None else \
        (vae.config.latent_channels, *[cfg.data.size // vae_factor(vae.config)] * 2)
    return scheduler, shape, vae


def score_prompts(unet, cfg, encoder, prompts: list[str], *, seeds: int = 4, first_steps: int = 1, steps: int = 50,
                  guidance: float = 2.0, detectors: tuple[str, ...] = DETECTORS, batch_size: int = 64,
                  device: str = "cpu", quiet: bool = True) -> dict[str, np.ndarray]:
    """Each detector's memorization score of each prompt (:mod:`trustlab.replication.memorization`): the mean
    over ``seeds`` starting noises (noise ``s`` is the same for every prompt) of the first ``first_steps`` of
    ``steps`` DDIM steps at ``guidance``."""
    if seeds < 1 or not 1 <= first_steps <= steps:
        raise ConfigError(f"--seeds must be >= 1 and --first-steps in 1..{steps} (the sampling steps)")
    dev = resolve_device(device)
    scheduler, shape, _ = _setup(unet, cfg, steps, dev)
    null = tuple(t.to(dev) for t in encoder.encode([""]))
    total = {d: np.zeros(len(prompts)) for d in detectors}
    with progress_bar(quiet) as bar:
        task = bar.add_task("detect", total=seeds * len(prompts))
        for s in range(seeds):
            noise = torch.randn((1, *shape), generator=torch.Generator().manual_seed(s))
            for i in range(0, len(prompts), batch_size):
                states, mask = (t.to(dev) for t in encoder.encode(prompts[i : i + batch_size]))
                x = noise.expand(len(states), *shape).to(dev)
                for d, v in first_step_scores(unet, scheduler, x, states, mask, null, guidance, first_steps, detectors).items():
                    total[d][i : i + len(states)] += v.double().numpy()
                bar.update(task, advance=len(states))
    return {d: v / seeds for d, v in total.items()}


def gate_for(unet, cfg, encoder, reference: list[str], *, fpr: float, detector: str = "magnitude", first_steps: int = 1,
             guidance: float = 2.0, steps: int = 50, device: str = "cpu", reference_name: str | None = None,
             reference_seeds: int = 4) -> Gate:
    """The gate that flags a share ``fpr`` of the ``reference`` prompts (prompts the model was not trained on)."""
    if len(reference) < 2:
        raise ConfigError("a gate's reference set needs at least 2 prompts (the model was not trained on)")
    scores = score_prompts(unet, cfg, encoder, reference, seeds=reference_seeds, first_steps=first_steps, steps=steps,
                           guidance=guidance, detectors=(detector,), device=device)[detector]
    return Gate(detector, gate_threshold(scores, fpr), first_steps, fpr, reference_name)


def generate(unet, cfg, encoder, *, n: int = 256, seed: int = 0, steps: int = 50, guidance: float = 2.0,
             eta: float = 1.0, mitigations: Mitigations | None = None, batch_size: int = 64,
             quiet: bool = False, device: str = "cpu", prompts: str = "training",
             gate: Gate | None = None) -> tuple[torch.Tensor, dict]:
    """``n`` uint8 generations of ``unet`` (any denoiser of the testbed) for training captions, and their metadata.

    The noise is drawn on the CPU from ``seed`` and moved to ``device``, so a seed names the same
    starting noise on every device. ``prompts``: ``training`` (the captions the model was
    trained with) or ``original`` (for a model trained on generalized captions, the captions
    before generalization: the GC&DF authors evaluate with both). With a ``gate`` the mitigations
    apply only to the prompts it flags from their generation's starting noise; the others draw and
    sample exactly as without mitigation.
    """

    if n < 1 or steps < 1 or guidance < 0 or not 0 <= eta <= 1:
        raise ConfigError("--n and --steps must be positive, --guidance >= 0 and --eta in [0, 1]")
    check_prompts(prompts)
    mit = mitigations if mitigations is not None else parse("")
    data = load_captioned(cfg.data)
    captions = data.captions_for(prompts)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(data), size=n, replace=n > len(data))
    chosen = [captions[i] for i in pick]
    rewritten = mit.captions(chosen, vocabulary(captions), random.Random(seed))
    g = torch.Generator().manual_seed(seed)
    gm = torch.Generator().manual_seed(seed + MITIGATION_SEED)
    dev = resolve_device(device)
    scheduler, shape, vae = _setup(unet, cfg, steps, dev)
    early = round(mit.delay * steps) if "opposite-guidance" in mit.names else 0
    started = time.perf_counter()
    null = tuple(t.to(dev) for t in encoder.encode([""]))
    out, flags, scores, used = [], [], [], []
    with torch.no_grad(), progress_bar(quiet) as bar:
        task = bar.add_task("sample", total=n)
        for i in range(0, n, batch_size):
            b = len(chosen[i : i + batch_size])
            x = torch.randn((b, *shape), generator=g).to(dev)
            flagged, plain = torch.ones(b, dtype=torch.bool), None
            if gate is not None:
                plain = tuple(t.to(dev) for t in encoder.encode(chosen[i : i + b]))
                score = first_step_scores(unet, scheduler, x, *plain, null, guidance, gate.first_steps, (gate.detector,))
                scores += score[gate.detector].tolist()
                flagged = score[gate.detector] > gate.threshold
            batch = [r if f else c for r, c, f in zip(rewritten[i : i + b], chosen[i : i + b], flagged.tolist())]
            used += batch
            same = plain is not None and batch == chosen[i : i + b]  # the gate's encoding serves unless a caption changed
            states, mask = plain if same else (t.to(dev) for t in encoder.encode(batch))
            states = torch.where(flagged.to(dev)[:, None, None], mit.states(states, gm).to(states), states)
            if "wen-optimize" in mit.names and flagged.any():
                f = flagged.to(dev)
                target = gate.threshold if gate is not None and gate.detector == "magnitude" else None
                states[f] = lower_magnitude(unet, x[f], scheduler.timesteps[0], states[f], mask[f], null,
                                            steps=mit.steps, lr=mit.lr, target=target)
            scale = torch.where(flagged, -guidance, guidance).to(dev).view(-1, *[1] * len(shape))
            for k, t in enumerate(scheduler.timesteps):
                uncond, cond = guided(unet, x, t, states, mask, null)
                w = scale if k < early else guidance
                x = scheduler.step(uncond + w * (cond - uncond), t, x, eta=eta, generator=g).prev_sample
            x = x if vae is None else pretrained.decode_latents(vae, x)
            out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
            flags += flagged.tolist()
            bar.update(task, advance=b)
    meta = {"prompts": chosen, "prompt_captions": prompts, "used_prompts": used, "train_index": pick.tolist(),
            "seed": seed, "steps": steps,
            "guidance": guidance, "eta": eta, "mitigations": list(mit.names), "device": str(dev),
            "mitigation_settings": {"p": mit.p, "sigma": mit.sigma, "steps": mit.steps, "lr": mit.lr, "delay": mit.delay},
            "seconds": time.perf_counter() - started}
    if gate is not None:
        meta["gate"] = {**asdict(gate), "flagged": flags, "scores": scores}
    return torch.cat(out), meta


def check_prompts(prompts: str) -> None:
    if prompts not in ("training", "original"):
        raise ConfigError(f"--prompts {prompts}: use training or original")


def save_samples(path: Path, images: torch.Tensor, meta: dict) -> Path:
    from safetensors.torch import save

    atomic_write_bytes(path, save({"images": images.contiguous()}, metadata={"trustlab": json.dumps(meta)}))
    return path


def load_samples(path: str | Path) -> tuple[torch.Tensor, dict]:
    """Generations (float in [-1, 1]) and their metadata from a samples file."""

    path = Path(path)
    if not path.exists():
        raise RunError(f"samples file {path} does not exist: run `trustlab replication sample` first")
    tensors, meta = load_checkpoint_file(path)
    images = tensors.get("images")
    if images is None or images.dim() != 4 or images.shape[1] != 3 or not isinstance(meta.get("prompts"), list) \
            or len(meta["prompts"]) != len(images):
        raise RunError(f"{path} is not a trustlab samples file (uint8 images with their prompts): "
                       "run `trustlab replication sample` again")
    return images.float() / 127.5 - 1, meta


def latest_samples(run: RunDir) -> Path:
    files = sorted((run.path / "samples").glob("*.safetensors"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise RunError(f"{run.path} has no samples: run `trustlab replication sample {run.path}` first")
    return files[-1]


__all__ = ["Gate", "check_prompts", "gate_for", "generate", "score_prompts", "latest_samples", "load_samples", "sample_run", "save_samples"]
