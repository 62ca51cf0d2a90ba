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
from pathlib import Path

import numpy as np
import torch

from trustlab.errors import ConfigError, RunError
from trustlab.progress import progress_bar
from trustlab.replication.data import load_captioned
from trustlab.replication.mitigations import INFERENCE, Mitigations, parse, vocabulary
from trustlab.replication import pretrained
from trustlab.replication.pipeline_folder import vae_factor
from trustlab.replication.training import latent_vae, load_trained, make_scheduler
from trustlab.runs import RunDir, atomic_write_bytes, load_checkpoint_file
from trustlab.train import resolve_device


def sample_run(run_dir: str | Path, *, n: int = 256, seed: int = 0, steps: int = 50, guidance: float = 2.0,
               eta: float = 1.0, mitigations: str = "", mitigation_p: float = 0.1, mitigation_sigma: float = 0.1,
               batch_size: int = 64, name: str | None = None, quiet: bool = False, device: str = "auto",
               prompts: str = "training") -> Path:
    """Generate ``n`` images for training captions drawn with ``seed``; returns the samples file."""
    mit = parse(mitigations, mitigation_p, mitigation_sigma).check(INFERENCE, "inference")
    check_prompts(prompts)
    dev = resolve_device(device)
    unet, cfg, encoder, run = load_trained(run_dir)
    images, meta = generate(unet, cfg, encoder, n=n, seed=seed, steps=steps, guidance=guidance, eta=eta,
                            mitigations=mit, batch_size=batch_size, quiet=quiet, device=str(dev), prompts=prompts)
    name = name or f"seed{seed}" + (f"-{'+'.join(mit.names)}" if mit.names else "") + ("-original" if prompts == "original" else "")
    return save_samples(run.path / "samples" / f"{name}.safetensors", images, meta)


def generate(unet, cfg, encoder, *, n: int = 256, seed: int = 0, steps: int = 50, guidance: float = 2.0,
             eta: float = 1.0, mitigations: Mitigations | None = None, batch_size: int = 64,
             quiet: bool = False, device: str = "cpu", prompts: str = "training") -> tuple[torch.Tensor, dict]:
    """``n`` uint8 generations of ``unet`` (any denoiser of the testbed) for training captions, and their metadata.

    The noise is drawn on the CPU from ``seed`` and moved to ``device``, so a seed names the same
    starting noise on every device. ``prompts``: ``training`` (the captions the model was
    trained with) or ``original`` (for a model trained on generalized captions, the captions
    before generalization: the GC&DF authors evaluate with both).
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
    used = mit.captions(chosen, vocabulary(captions), random.Random(seed))
    scheduler = make_scheduler(cfg, "ddim")
    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    dev = resolve_device(device)
    unet.to(dev)
    vae = latent_vae(cfg, dev)  # a pretrained pipeline denoises latents; its VAE decodes them
    shape = (3, cfg.data.size, cfg.data.size) if vae is None else \
        (vae.config.latent_channels, *[cfg.data.size // vae_factor(vae.config)] * 2)
    started = time.perf_counter()
    null_states, null_mask = (t.to(dev) for t in encoder.encode([""]))
    out = []
    with torch.no_grad(), progress_bar(quiet) as bar:
        task = bar.add_task("sample", total=n)
        for i in range(0, n, batch_size):
            batch = used[i : i + batch_size]
            b = len(batch)
            states, mask = encoder.encode(batch)
            states = mit.states(states, g)
            ctx = torch.cat([null_states.expand(b, -1, -1), states.to(dev)])
            ctx_mask = torch.cat([null_mask.expand(b, -1), mask.to(dev)])
            x = torch.randn((b, *shape), generator=g).to(dev)
            for t in scheduler.timesteps:
                eps = unet(torch.cat([x, x]), t, encoder_hidden_states=ctx, encoder_attention_mask=ctx_mask).sample
                uncond, cond = eps.chunk(2)
                x = scheduler.step(uncond + guidance * (cond - uncond), t, x, eta=eta, generator=g).prev_sample
            x = x if vae is None else pretrained.decode_latents(vae, x)
            out.append(((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu())
            bar.update(task, advance=b)
    meta = {"prompts": chosen, "prompt_captions": prompts, "used_prompts": used, "train_index": pick.tolist(),
            "seed": seed, "steps": steps,
            "guidance": guidance, "eta": eta, "mitigations": list(mit.names), "device": str(dev),
            "seconds": time.perf_counter() - started}
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


__all__ = ["check_prompts", "generate", "latest_samples", "load_samples", "sample_run", "save_samples"]
