"""Training a small text-conditional diffusion model on captioned images.

The model is diffusers' ``UNet2DConditionModel`` (small config, cross-attention on the text
states), trained with diffusers' ``DDPMScheduler`` (epsilon prediction, MSE), AdamW, caption
dropout for classifier-free guidance, and an exponential moving average of the weights (the
copy sampling uses). With ``rau_skips`` the U-Net gets information transfer blocks on those
skips (RAU-Net); with ``tau`` > 0 as well, a plain U-Net and a RAU-Net are trained as one
LoyalDiffusion pair, each on its own timesteps (see ``rau``). Every random draw of step ``s`` comes from a generator seeded by
``(seed, s)``, so a run killed and resumed from its checkpoint continues exactly.

With ``pretrained`` the same loop fine-tunes a Stable Diffusion folder's UNet on the latents of
its VAE, with its CLIP text encoder and its noise schedule (:mod:`trustlab.replication.pretrained`).
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F

from trustlab.errors import ConfigError, RunError
from trustlab.progress import progress_bar
from trustlab.replication.config import DiffusionConfig
from trustlab.replication import pretrained
from trustlab.replication.data import load_captioned
from trustlab.replication.fusion import aux_pool, fuse_captions, fuse_images, fuse_states
from trustlab.replication.memorization import memorized_share
from trustlab.replication.mitigations import parse, vocabulary
from trustlab.replication.rau import RAUNet, TimestepRouter
from trustlab.replication.text import TextEncoder, make_encoder
from trustlab.report import render_report
from trustlab.runs import Job, RunDir, config_from_dict
from trustlab.train import (average_gradients, broadcast_state, init_distributed, load_state_tensors, local_share,
                            make_optimizer, mean_over_processes, resolve_device, state_tensors)
from trustlab.train_config import TrainConfig


def build_unet(cfg: DiffusionConfig, text_dim: int):
    """The diffusers conditional U-Net of ``cfg``: the pretrained one, or three levels with cross-attention in the
    lower two."""
    from diffusers import UNet2DConditionModel

    if cfg.pretrained:
        return pretrained.load_unet(cfg.pretrained)
    return UNet2DConditionModel(
        sample_size=cfg.data.size, in_channels=3, out_channels=3, block_out_channels=tuple(cfg.channels),
        layers_per_block=cfg.layers_per_block, cross_attention_dim=text_dim, attention_head_dim=cfg.head_dim,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)


def build_denoiser(cfg: DiffusionConfig, text_dim: int) -> torch.nn.Module:
    """The model of ``cfg``: the plain U-Net, a RAU-Net, or the LoyalDiffusion pair (plain below tau)."""
    if not cfg.rau_skips:
        return build_unet(cfg, text_dim)
    kinds = cfg.itb_kinds()
    if not cfg.tau:
        return RAUNet(build_unet(cfg, text_dim), kinds, cfg.itb_frozen)
    low = build_unet(cfg, text_dim)
    return TimestepRouter(low, RAUNet(build_unet(cfg, text_dim), kinds, cfg.itb_frozen), cfg.tau)


def make_scheduler(cfg: DiffusionConfig, kind: str = "ddpm"):
    """The noise schedule as DDPM (training) or DDIM (sampling): the pretrained pipeline's, or the testbed's."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if cfg.pretrained:
        return pretrained.load_scheduler(cfg.pretrained, kind)
    cls = DDPMScheduler if kind == "ddpm" else DDIMScheduler
    return cls(num_train_timesteps=cfg.timesteps, beta_schedule="squaredcos_cap_v2", prediction_type="epsilon",
               clip_sample=True)


def text_encoder_for(cfg: DiffusionConfig, device: torch.device | str = "cpu") -> TextEncoder:
    """The encoder of the captions: the pretrained pipeline's CLIP, or the testbed's ``encoder``."""
    return pretrained.ClipEncoder(cfg.pretrained, device) if cfg.pretrained else make_encoder(cfg.encoder)


def latent_vae(cfg: DiffusionConfig, device: torch.device | str = "cpu"):
    """The pretrained pipeline's VAE (the denoiser works on its latents), or None for the pixel-space testbed."""
    return pretrained.load_vae(cfg.pretrained).to(device) if cfg.pretrained else None


def noise_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the denoiser learns to predict: the noise, or the velocity for v-prediction pipelines (SD 2.x 768)."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(x0, noise, t)
    raise ConfigError(f"the pipeline's scheduler predicts '{kind}': trustlab trains epsilon or v_prediction models")


def ema_update(ema: dict[str, torch.Tensor], model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k].mul_(decay).add_(v, alpha=1 - decay)
            else:
                ema[k].copy_(v)


def train_diffusion(cfg: DiffusionConfig, out: str | Path, *, resume: bool = False, quiet: bool = False,
                    max_steps: int | None = None) -> RunDir:
    """Train into the run folder ``out``; checkpoints every ``cfg.checkpoint_every`` steps."""

    job = Job(cfg, out, resume)
    cfg = job.config
    data = load_captioned(cfg.data)
    device = resolve_device(cfg.device)
    encoder = text_encoder_for(cfg, device)
    rank, world_size = init_distributed(device)
    local = local_share(cfg.batch_size, world_size)
    lo, hi = rank * local, (rank + 1) * local  # this process's slice of every global batch
    torch.manual_seed(cfg.seed)
    unet = build_denoiser(cfg, encoder.dim).to(device).train()
    trainable = [p for p in unet.parameters() if p.requires_grad]  # frozen ITBs stay as initialized
    optimizer = make_optimizer(TrainConfig(optimizer="adamw", lr=cfg.lr, weight_decay=0.0), trainable)
    ema = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    run = job.start()
    step, seconds = 0, 0.0
    if resume and run.has_checkpoint():
        tensors, meta = run.load_checkpoint()
        load_state_tensors(unet, tensors, optimizer, meta)
        ema = {k[4:]: v.to(device) for k, v in tensors.items() if k.startswith("ema.")}
        step, seconds = meta["step"], meta.get("seconds", 0.0)
        if rank == 0:
            run.truncate_metrics(step)
    broadcast_state(unet)
    scheduler = make_scheduler(cfg)
    mit = parse(cfg.mitigations, cfg.mitigation_p, cfg.mitigation_sigma)
    vocab = vocabulary(data.captions)
    vae = latent_vae(cfg, device)
    x0_all = (data.images if vae is None else pretrained.encode_images(vae, data.images, device)).to(device)
    pool = aux_pool(cfg.fusion, cfg.data.size, cfg.seed)
    if pool is not None and vae is not None:  # dual fusion mixes in latent space
        pool = pretrained.encode_images(vae, pool, device)
    del vae
    end = cfg.steps if max_steps is None else min(cfg.steps, max_steps)
    timesteps = scheduler.config.num_train_timesteps  # the schedule's length (the pipeline's, for --pretrained)
    if "wen-filter" in mit.names:  # the magnitude is read where detection reads it: the first of 50 sampling steps
        null = tuple(v.to(device) for v in encoder.encode([""]))
        t_first = torch.tensor(timesteps - timesteps // 50, device=device)

    def checkpoint() -> None:
        if rank != 0:
            return
        tensors, meta = state_tensors(unet, optimizer)
        tensors.update({f"ema.{k}": v for k, v in ema.items()})
        run.save_checkpoint(tensors, {**meta, "step": step, "seconds": seconds, "done": step >= cfg.steps})

    with progress_bar(quiet or rank != 0) as bar:
        task = bar.add_task("train", total=cfg.steps, completed=step)
        window = []
        while step < end:
            t0 = time.perf_counter()
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            rng = random.Random(cfg.seed * 1_000_003 + step)
            idx = torch.randint(len(data), (cfg.batch_size,), generator=g)
            classes = [data.classes[int(data.labels[i])] for i in idx.tolist()]
            captions = mit.captions([data.captions[i] for i in idx.tolist()], vocab, rng)
            drop = torch.rand(cfg.batch_size, generator=g) < cfg.caption_dropout
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
            captions = fuse_captions(cfg.fusion, captions, classes)
            states, mask = encoder.encode(captions)
            states, mask = fuse_states(cfg.fusion, states, mask, captions, classes, encoder)
            states = mit.states(states, g)
            x0 = x0_all[idx]
            noise = torch.randn(x0.shape, generator=g)
            t = torch.randint(0, timesteps, (cfg.batch_size,), generator=g)
            x0 = fuse_images(cfg.fusion, x0, pool, g)
            noise, t = noise.to(device), t.to(device)
            xt = scheduler.add_noise(x0, noise, t)
            target = noise_target(scheduler, x0, noise, t)
            # every draw above is for the global batch; this process trains on its slice of it
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                pred = unet(xt[lo:hi], t[lo:hi], encoder_hidden_states=states[lo:hi].to(device),
                            encoder_attention_mask=mask[lo:hi].to(device)).sample
            if "wen-filter" in mit.names:
                keep = memorized_share(unet, scheduler.add_noise(x0, noise, t_first.expand(len(x0)))[lo:hi], t_first,
                                       states[lo:hi].to(device), mask[lo:hi].to(device), null, mit.p)
                per_sample = (pred.float() - target[lo:hi]).pow(2).flatten(1).mean(1)
                loss = (per_sample * keep).sum() / keep.sum().clamp_min(1)
            else:
                loss = F.mse_loss(pred.float(), target[lo:hi])
            lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(trainable)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            ema_update(ema, unet, min(cfg.ema_decay, (1 + step) / (10 + step)))
            step += 1
            seconds += time.perf_counter() - t0
            window.append(float(mean_over_processes(loss.detach())))
            bar.update(task, advance=1, description=f"step {step}/{cfg.steps} loss {window[-1]:.4f}")
            if (step % 50 == 0 or step == cfg.steps) and rank == 0:
                run.log(step, loss=sum(window) / len(window), minutes=seconds / 60)
                window = []
            if (cfg.checkpoint_every and step % cfg.checkpoint_every == 0) or step == cfg.steps:  # 0: at the end only
                checkpoint()
    if step >= cfg.steps and rank == 0:
        if cfg.rau_skips:
            where = f"t >= {cfg.tau} (plain U-Net below)" if cfg.tau else "every timestep"
            kinds = cfg.itb_kinds()
            run.write_table("rau-net", [{"skip": s.index, "from": s.origin, "channels": s.channels, "side": s.side,
                                         "itb": kinds[s.index], "weights": "frozen random" if cfg.itb_frozen else "trained",
                                         "timesteps": where} for s in cfg.skips() if s.index in cfg.rau_skips],
                            title=f"{'LoyalDiffusion' if cfg.tau else 'RAU-Net'}: information transfer blocks")
        run.write_summary({"steps": step, "minutes": seconds / 60, "device": str(device), "images": len(data), "data": data.source,
                           "parameters": sum(p.numel() for p in unet.parameters()), "encoder": encoder.name,
                           "pretrained": cfg.pretrained or None,
                           "mitigations": list(mit.names), "fusion": asdict(cfg.fusion), "architecture": cfg.architecture(),
                           "rau_skips": list(cfg.rau_skips), "itb": cfg.itb if cfg.rau_skips else None,
                           "tau": cfg.tau, "final_loss": run.metrics()[-1]["loss"]})
        render_report(run.path)
    return run


def load_trained(run_dir: str | Path, weights: str = "ema"):
    """The U-Net of a finished ``replication-train`` run (EMA weights by default), its config and data."""

    run = RunDir.open(run_dir, kind=DiffusionConfig.kind)
    cfg = config_from_dict(DiffusionConfig, run.config)
    if not run.has_checkpoint():
        raise RunError(f"{run.path} has no checkpoint yet: train it first (or --resume)")
    tensors, meta = run.load_checkpoint()
    encoder = text_encoder_for(cfg)
    unet = build_denoiser(cfg, encoder.dim)
    prefix = "ema." if weights == "ema" else "model."
    try:
        load_state_tensors(unet, {"model." + k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    except RunError as e:
        raise RunError(f"{run.path}: {e}") from None
    return unet.eval(), cfg, encoder, run


__all__ = ["build_denoiser", "build_unet", "latent_vae", "load_trained", "make_scheduler", "noise_target",
           "text_encoder_for", "train_diffusion"]
