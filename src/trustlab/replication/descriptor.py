"""A copy descriptor trained by trustlab on the training folder itself (SSCD-style), offline.

SSCD (Pizzi et al., CVPR 2022) detects copies with a descriptor trained to map an image and its
edited copies (crops, shifts, rotations, flips, colour changes, compression, noise, grey) close
together and every other image far away. Its weights cannot be downloaded here, so this module
trains a small one on the folder a user audits: each training image is its own class, two edited
views of it are the positive pair, the other images of the batch the negatives (InfoNCE at
temperature ``TEMPERATURE``), with SSCD's entropy (KoLeo) term spreading the descriptors so that
look-alikes stay apart. The network sees ``SIDE``×``SIDE`` images, so any folder trains in
minutes on a CPU; the weights are cached under the data folder by the fingerprint of the
training rows and this module's ``VERSION``, so a folder is trained once and a changed folder
(or version) is trained again, never silently reused.

The copy similarity of a query to a training image is the cosine of their descriptors
(``copy_metric="learned"``, :func:`trustlab.replication.metrics.copy_similarity`).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trustlab.data.store import data_root
from trustlab.errors import ConfigError
from trustlab.progress import progress_bar
from trustlab.runs import atomic_write_bytes, load_checkpoint_file

VERSION = 1  # bump when the network, its training or its augmentations change: cached weights are then retrained
SIDE = 32
DIM = 128
TEMPERATURE = 0.1
KOLEO = 0.3  # weight of the entropy term
EPOCHS = 4
MIN_STEPS = 600  # a small folder still trains this many batches
BATCH = 256
LR = 3e-3


class CopyDescriptor(nn.Module):
    """Four conv–BN–ReLU stages (16 to 128 channels, the last three strided), GeM pooling, and a linear map to a
    unit ``DIM``-vector: about 0.3 M parameters, so it trains on a CPU."""

    def __init__(self, dim: int = DIM):
        super().__init__()
        widths, layers, c = (16, 32, 64, 128), [], 3
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, stride=2 if c != 3 else 1, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)  # GeM, p = 3
        return F.normalize(self.head(h), dim=1)


def _as_images(rows: np.ndarray, size: int) -> torch.Tensor:
    """Rows [N, 3*size*size] in [-1, 1] as [N, 3, SIDE, SIDE]."""
    x = torch.as_tensor(np.asarray(rows, dtype=np.float32)).view(-1, 3, size, size)
    return x if size == SIDE else F.interpolate(x, size=(SIDE, SIDE), mode="bilinear", antialias=True, align_corners=False)


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """An edited copy of each image of ``x`` ([-1, 1]): the edits copies undergo, drawn from ``g``."""
    n = len(x)

    def u(lo, hi, shape=(n,)):
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    scale, angle = u(0.6, 1.0), u(-0.35, 0.35)  # keep 60-100% of the side, rotate up to 20 degrees
    flip = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    shift = u(-1, 1, (n, 2)) * (1 - scale)[:, None]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    y = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    mean = y.mean(dim=(1, 2, 3), keepdim=True)
    y = (y - mean) * u(0.6, 1.4).view(-1, 1, 1, 1) + mean + u(-0.3, 0.3).view(-1, 1, 1, 1)  # contrast, brightness
    grey = (torch.rand(n, generator=g) < 0.25).view(-1, 1, 1, 1)
    y = torch.where(grey, y.mean(dim=1, keepdim=True).expand_as(y), y)
    soft = (torch.rand(n, generator=g) < 0.5).view(-1, 1, 1, 1)  # compression and rescaling lose detail
    blurred = F.interpolate(F.avg_pool2d(y, 2), size=y.shape[-2:], mode="bilinear", align_corners=False)
    y = torch.where(soft, blurred, y)
    y = y + torch.randn(y.shape, generator=g) * u(0.0, 0.08).view(-1, 1, 1, 1)
    return y.clamp(-1, 1)


def _koleo(z: torch.Tensor) -> torch.Tensor:
    """Kozachenko–Leonenko entropy estimate (negated): large when some descriptors crowd together."""
    d = torch.cdist(z, z) + torch.eye(len(z)) * 1e3
    return -torch.log(d.min(dim=1).values + 1e-8).mean()


def default_steps(n: int) -> int:
    """Training batches for ``n`` training images: ``EPOCHS`` passes, at least ``MIN_STEPS``."""
    return max(MIN_STEPS, EPOCHS * n // min(BATCH, n))


def fingerprint(rows: np.ndarray, size: int, steps: int) -> str:
    """What the cached weights depend on: this module's version, the rows and the training length."""
    h = hashlib.sha256(f"{VERSION}:{size}:{rows.shape}:{steps}".encode())
    h.update(np.ascontiguousarray(rows, dtype=np.float32).tobytes())
    return h.hexdigest()[:24]


def train_descriptor(rows: np.ndarray, size: int, *, seed: int = 0, steps: int | None = None, quiet: bool = True) -> CopyDescriptor:
    """A descriptor trained on the training ``rows`` ([N, 3*size*size] in [-1, 1]) for ``steps`` batches
    (default :func:`default_steps`), or the cached one of these rows."""
    if len(rows) < 8:
        raise ConfigError(f"the learned copy metric trains on the training images: {len(rows)} are too few (at least 8); "
                          "use --copy-metric aligned")
    steps = default_steps(len(rows)) if steps is None else steps
    path = data_root() / "cache" / "copy-descriptors" / f"{fingerprint(rows, size, steps)}.safetensors"
    model = CopyDescriptor()
    if path.exists():
        tensors, _ = load_checkpoint_file(path)
        model.load_state_dict(tensors)
        return model.eval()
    from safetensors.torch import save

    x = _as_images(rows, size)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    batch = min(BATCH, len(x))
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps, pct_start=0.1)
    model.train()
    with progress_bar(quiet) as bar:
        task = bar.add_task("copy descriptor", total=steps)
        for step in range(steps):
            idx = torch.randperm(len(x), generator=g)[:batch]
            a, b = model(augment(x[idx], g)), model(augment(x[idx], g))
            logits = a @ b.T / TEMPERATURE
            target = torch.arange(len(idx))
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2 + KOLEO * _koleo(a)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update(task, advance=1, description=f"copy descriptor loss {float(loss.detach()):.3f}")
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model


@torch.no_grad()
def describe(model: CopyDescriptor, rows: np.ndarray, size: int, chunk: int = 1024) -> torch.Tensor:
    """Unit descriptors of ``rows``: each the mean of the image's and its mirror image's (a mirrored copy matches)."""
    out = []
    for i in range(0, len(rows), chunk):
        x = _as_images(rows[i : i + chunk], size)
        out.append(F.normalize(model(x) + model(x.flip(3)), dim=1))
    return torch.cat(out) if out else torch.empty(0, DIM)


def learned_nearest(queries: np.ndarray, train: np.ndarray, size: int, *, exclude: tuple[np.ndarray, np.ndarray] | None = None,
                    steps: int | None = None, quiet: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's highest descriptor cosine to a training image, and that image (``exclude`` as in
    :func:`trustlab.replication.registration.aligned_nearest`); the descriptor of :func:`train_descriptor`."""
    model = train_descriptor(train, size, steps=steps, quiet=quiet)
    q, t = describe(model, queries, size), describe(model, train, size)
    score, match = torch.empty(len(q), dtype=torch.float64), torch.empty(len(q), dtype=torch.long)
    ex = None if exclude is None else tuple(torch.as_tensor(np.asarray(e)) for e in exclude)
    for i in range(0, len(q), 1024):
        sim = q[i : i + 1024] @ t.T
        if ex is not None:
            sim = sim.masked_fill(ex[0][i : i + 1024, None] == ex[1][None, :], -math.inf)
        s, m = sim.max(dim=1)
        score[i : i + len(s)], match[i : i + len(s)] = s.double(), m
    return score, match


__all__ = ["CopyDescriptor", "augment", "describe", "fingerprint", "learned_nearest", "train_descriptor"]
