"""``export``: a run's training images and generations as two folders of PNG files, as other tools take them.

``train/`` holds the distinct training images with ``captions.jsonl``; ``generated/`` holds a
samples file's generations with ``prompts.jsonl`` (each generation's prompt). These are the
folders ``replication audit`` reads, so a testbed run can be audited exactly as a user's own
model would be, and the images can be looked at or handed to any other copy detector.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from trustlab.replication.config import DiffusionConfig
from trustlab.replication.data import load_captioned
from trustlab.replication.sampling import latest_samples, load_samples
from trustlab.runs import RunDir, atomic_write_bytes, atomic_write_text, config_from_dict


def _write_pngs(images: torch.Tensor, captions: list[str], folder: Path, prefix: str, index: str) -> None:
    import io

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    lines = []
    for i, (rgb, caption) in enumerate(zip(pixels, captions)):
        name = f"{prefix}{i:05d}.png"
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(rgb), "RGB").save(buf, format="PNG")
        atomic_write_bytes(folder / name, buf.getvalue())
        lines.append(json.dumps({"file": name, "caption": caption}))
    atomic_write_text(folder / index, "\n".join(lines) + "\n")


def export_run(run_dir: str | Path, out: str | Path, *, samples: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``out/train`` and ``out/generated``; returns both folders."""
    run = RunDir.open(run_dir, kind=DiffusionConfig.kind)
    cfg = config_from_dict(DiffusionConfig, run.config)
    gen, meta = load_samples(Path(samples) if samples else latest_samples(run))
    data = load_captioned(cfg.data)
    out = Path(out)
    captions = data.captions_for(meta.get("prompt_captions", "training"))  # the captions the prompts were drawn from
    _write_pngs(data.images[: data.distinct], captions[: data.distinct], out / "train", "train", "captions.jsonl")
    _write_pngs(gen, meta["prompts"], out / "generated", "gen", "prompts.jsonl")
    return out / "train", out / "generated"


__all__ = ["export_run"]
