"""What a ``--pretrained`` folder must hold, read from its JSON alone (torch-free, for config validation).

A diffusers pipeline folder in the ``save_pretrained`` layout: ``model_index.json`` and one
folder per part, each with its config. The UNet's config gives the skip layout RAU-Net's
``--rau-skips`` name; the VAE's gives how many image pixels a latent pixel spans.
"""

from __future__ import annotations

import json
from pathlib import Path

from trustlab.errors import ConfigError

PARTS = {"unet": "config.json", "vae": "config.json", "text_encoder": "config.json",
         "scheduler": "scheduler_config.json", "tokenizer": None}  # part folder: the file that must be there
WEIGHTED = ("unet", "vae", "text_encoder")


def check_pipeline(path: str) -> dict:
    """The UNet's, VAE's and scheduler's configs of the diffusers pipeline at ``path``; a one-line error naming
    what is missing."""
    root = Path(path)
    if not (root / "model_index.json").is_file():
        raise ConfigError(f"--pretrained {path}: not a diffusers pipeline folder (no model_index.json); "
                          "give the folder a pipeline's save_pretrained() wrote")
    configs = {}
    for part, config in PARTS.items():
        folder = root / part
        if not folder.is_dir() or (config and not (folder / config).is_file()):
            raise ConfigError(f"--pretrained {path} lacks its {part} ({folder / (config or '')}): the pipeline "
                              "needs unet, vae, text_encoder, tokenizer and scheduler")
        if part in WEIGHTED and not any(f.suffix in (".safetensors", ".bin") for f in folder.iterdir()):
            raise ConfigError(f"--pretrained {path}: its {part} folder has a config but no weights (.safetensors or .bin)")
        if config:
            try:
                configs[part] = json.loads((folder / config).read_text())
            except (OSError, ValueError) as e:
                raise ConfigError(f"{folder / config} is not readable JSON ({e})") from None
    return configs


def vae_factor(vae_config: dict) -> int:
    """How many image pixels one latent pixel spans (2 per VAE down block after the first)."""
    return 2 ** (len(vae_config.get("block_out_channels", (0,))) - 1)


__all__ = ["PARTS", "check_pipeline", "vae_factor"]
