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

import torch

from trustlab.replication.text import TextEncoder

class ClipEncoder(TextEncoder):
    """The pipeline's own tokenizer and CLIP text encoder: every token's last hidden state, as the UNet was trained."""

    name = "clip"

    def __init__(self, path: str, device: torch.device | str = "cpu"):
        super().__init__()
        from transformers import CLIPTextModel, CLIPTokenizer

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

    return UNet2DConditionModel.from_pretrained(path, subfolder="unet")


def load_vae(path: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(path, subfolder="vae").eval().requires_grad_(False)


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


__all__ = ["ClipEncoder", "decode_latents", "encode_images", "load_scheduler", "load_unet", "load_vae"]
