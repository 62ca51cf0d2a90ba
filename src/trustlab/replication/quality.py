"""Quality of generations: FID and precision/recall in a fixed feature space, caption consistency.

No Inception weights can be downloaded here, so the default feature space is a **proxy**: a
small CNN that trustlab trains once per (dataset, size) to classify the images of the dataset
(fixed seed and recipe) and caches under ``$TRUSTLAB_DATA/cache``; its penultimate layer gives
128-d features. "Proxy FID" is the Fréchet distance in that space: comparable between runs of
the testbed, **not** comparable with published Inception FIDs. With ``--inception PATH`` (a
TorchScript Inception-v3 returning 2048-d pool features) the standard FID is computed too.

Precision/recall are the k-nearest-neighbour manifold estimates (Kynkäänniemi et al. 2019,
k = 3). Caption consistency retrieves, for each generation, the caption of its nearest
training image in the proxy space and reports how often it is the prompt.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from trustlab.data import load_dataset
from trustlab.data.registry import get_spec
from trustlab.data.store import data_root
from trustlab.runs import atomic_write_bytes


class ProxyEncoder(nn.Module):
    """A small CNN classifier whose 128-d penultimate layer is the proxy feature space."""

    def __init__(self, classes: int):
        super().__init__()
        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(), nn.MaxPool2d(2))
        self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 128), nn.AdaptiveAvgPool2d(1),
                                      nn.Flatten(), nn.Linear(128, 128), nn.ReLU())
        self.head = nn.Linear(128, classes)

    def forward(self, x):
        return self.head(self.features(x))

    @torch.no_grad()
    def embed(self, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
        self.eval()
        return torch.cat([self.features(x[i : i + batch]) for i in range(0, len(x), batch)]).double()


def proxy_encoder(dataset: str = "emoji", size: int = 32, epochs: int = 8, seed: int = 0) -> ProxyEncoder:
    """The proxy feature extractor for (``dataset``, ``size``), trained once and cached."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, save


    spec = get_spec(dataset)
    d = load_dataset(dataset, spec.splits[0], size=size)
    model = ProxyEncoder(len(d.classes))
    path = data_root() / "cache" / f"proxy-encoder-{dataset}-{size}-e{epochs}-s{seed}.safetensors"
    if path.exists():
        try:
            model.load_state_dict(load_file(str(path)))
            return model.eval()
        except (OSError, RuntimeError, ValueError, SafetensorError):
            pass  # a damaged or foreign cache file: retrain it below and replace it
    torch.manual_seed(seed)
    x = d.images.float() / 127.5 - 1
    y = d.labels
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(128):
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    return model.eval()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [n, d].

    ``tr √(Σ1 Σ2)`` is computed as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix ``Σ1^½ Σ2 Σ1^½`` (the same eigenvalues as ``Σ1 Σ2``): two symmetric
    eigendecompositions, stable for the singular covariances of fewer samples than dimensions,
    and independent of ``scipy.linalg.sqrtm``, whose signature changed in SciPy 1.18.
    """
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    w, v = np.linalg.eigh(s1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    trace_covmean = float(np.sqrt(np.clip(inner, 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * trace_covmean)


def precision_recall(real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict:
    """k-NN manifold precision (fakes inside the real manifold) and recall (reals inside the fake one)."""
    def radii(x):
        d = torch.cdist(x, x)
        return d.topk(min(k + 1, len(x)), 1, largest=False).values[:, -1]

    r_real, r_fake = radii(real), radii(fake)
    precision = (torch.cdist(fake, real) <= r_real.unsqueeze(0)).any(1).double().mean()
    recall = (torch.cdist(real, fake) <= r_fake.unsqueeze(0)).any(1).double().mean()
    return {"precision": float(precision), "recall": float(recall)}


def quality(gen: torch.Tensor, train: torch.Tensor, prompts: list[str], train_captions: list[str], *,
            dataset: str = "emoji", inception=None, device: str | torch.device = "cpu") -> dict:
    """Proxy FID, precision/recall and caption consistency of ``gen`` against ``train`` (embedded on ``device``)."""
    enc = proxy_encoder(dataset, train.shape[-1]).to(device)
    fg, ft = enc.embed(gen.to(device)).cpu(), enc.embed(train.to(device)).cpu()
    nearest = torch.cdist(fg, ft).argmin(1)
    out = {"proxy_fid": frechet_distance(fg.numpy(), ft.numpy()), **precision_recall(ft, fg),
           "caption_match": float(np.mean([train_captions[int(j)] == p for j, p in zip(nearest, prompts)]))}
    if inception is not None:
        out["fid"] = frechet_distance(inception.embed(gen).double().numpy(), inception.embed(train).double().numpy())
    return out


__all__ = ["ProxyEncoder", "frechet_distance", "precision_recall", "proxy_encoder", "quality"]
