"""A Stable Diffusion pipeline the user already has, fine-tuned in its VAE's latent space.

``--pretrained DIR`` names a diffusers folder in the ``save_pretrained`` layout: ``model_index.json``
and the parts ``unet``, ``vae``, ``text_encoder``, ``tokenizer`` and ``scheduler``. Nothing is
downloaded: every part is read from that folder, and a folder that lacks one is refused with
the part's name. The training loop of :mod:`trustlab.replication.training` then runs unchanged
on latents instead of pixels: the images (and dual fusion's auxiliary pool, so images are
mixed in latent space, as the GC&DF authors do) are encoded once by the VAE (the mean of its
posterior, times its scaling factor), captions are encoded by the pipeline's CLIP text encoder,
and generations are decoded by the VAE.

The folder checks (:mod:`trustlab.replication.pipeline_folder`) read only JSON, so a
configuration is validated before torch loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from trustlab.replication.text import TextEncoder

def quiet_loading() -> None:
    """No progress bars or advice from diffusers and transformers while the parts load: the command prints its own."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


class ClipEncoder(TextEncoder):
    """The pipeline's own tokenizer and CLIP text encoder: every token's last hidden state, as the UNet was trained."""

    name = "clip"

    def __init__(self, path: str, device: torch.device | str = "cpu"):
        super().__init__()
        from transformers import CLIPTextModel, CLIPTokenizer

        quiet_loading()
        self.tokenizer = CLIPTokenizer.from_pretrained(path, subfolder="tokenizer")
        self.model = CLIPTextModel.from_pretrained(path, subfolder="text_encoder").eval().to(device)
        self.dim = self.model.config.hidden_size
        self.max_tokens = self.tokenizer.model_max_length

    def _encode(self, captions):
        tok = self.tokenizer(captions, padding="max_length", truncation=True, max_length=self.max_tokens,
                             return_tensors="pt")
        states = self.model(tok.input_ids.to(self.model.device))[0]
        return states.float().cpu(), torch.ones(tok.input_ids.shape, dtype=torch.bool)  # SD attends to every token


def load_unet(path: str):
    from diffusers import UNet2DConditionModel

    quiet_loading()
    return UNet2DConditionModel.from_pretrained(path, subfolder="unet", low_cpu_mem_usage=False)


def load_vae(path: str):
    from diffusers import AutoencoderKL

    quiet_loading()
    return AutoencoderKL.from_pretrained(path, subfolder="vae", low_cpu_mem_usage=False).eval().requires_grad_(False)


def load_scheduler(path: str, kind: str = "ddpm"):
    """The pipeline's noise schedule, as DDPM (training) or DDIM (sampling)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    config = DDPMScheduler.load_config(path, subfolder="scheduler")
    return (DDPMScheduler if kind == "ddpm" else DDIMScheduler).from_config(config)


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, device: torch.device, batch: int = 64) -> torch.Tensor:
    """Images in [-1, 1] -> latents (the posterior mean, scaled as the UNet expects), on the CPU."""
    vae.to(device)
    scale = vae.config.scaling_factor
    return torch.cat([vae.encode(images[i : i + batch].to(device)).latent_dist.mode().cpu() * scale
                      for i in range(0, len(images), batch)])


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> images in [-1, 1]."""
    vae.to(latents.device)
    return vae.decode(latents / vae.config.scaling_factor).sample.clamp(-1, 1)


def save_random_pipeline(path: str | Path, *, unet_widths: tuple[int, ...] = (16, 32), text_dim: int = 32,
                         seed: int = 0) -> Path:
    """Save a Stable Diffusion pipeline of random weights in the ``save_pretrained`` layout and return its folder.

    The parts have SD's architecture at a small size: a CLIP text encoder of 2 layers over a
    vocabulary of letters and digits (16 tokens), a 2-block VAE (latents of 4 channels, half
    the image side) and a UNet with ``unet_widths`` (cross-attention in every level but the
    deepest). It exercises the whole ``--pretrained`` path without any download, for tests and
    for timing the loop on a device.
    """
    quiet_loading()
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    root = Path(path)
    root.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    torch.manual_seed(seed)
    levels = len(unet_widths)
    pipe = StableDiffusionPipeline(
        tokenizer=CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), model_max_length=16),
        text_encoder=CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=text_dim, intermediate_size=37,
                                                  num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16,
                                                  bos_token_id=0, eos_token_id=1, pad_token_id=1)),
        vae=AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                          up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                          norm_num_groups=8, sample_size=16),
        unet=UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=unet_widths,
                                  layers_per_block=1, cross_attention_dim=text_dim, attention_head_dim=8,
                                  norm_num_groups=8, down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
                                  up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1)),
        scheduler=DDPMScheduler(num_train_timesteps=100, beta_schedule="scaled_linear", clip_sample=False, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(root / "pipeline")
    return root / "pipeline"


__all__ = ["ClipEncoder", "decode_latents", "encode_images", "load_scheduler", "load_unet", "load_vae", "save_random_pipeline"]
