"""Aligned similarity: how alike two images are once the edits a copy undergoes are undone.

A copy rarely leaves the generator pixel for pixel: it is cropped, shifted, rotated a little,
mirrored, re-encoded, turned grey or recoloured. Plain pixel similarity misses the geometric
edits (a crop of 85% of the side is as far from its source as an unrelated image), and a
descriptor trained to ignore them (SSCD) needs weights an offline tool cannot ship. This module
undoes the edits instead, in two steps:

1. **Retrieval.** Each query is seen in 12 views (itself, its mirror image, and five crops of 85%
   of the side undone — zoomed out about the centre and the four corners — each mirrored too),
   blurred and reduced to 16×16; the ``CANDIDATES`` training images most similar to any view are
   kept, with the view that found them.
2. **Registration.** Each candidate is warped onto the query by an affine map (scale up to 1.4 in
   each direction, rotation up to 20°, shift up to 15% of the side; the found view is the start),
   fitted by gradient ascent on the similarity, first on blurred images, then at full size.

The similarity is the cosine of mean-centred pixels (so brightness and contrast changes cost
little), of the luminance when the query is grey (a grey copy of a colour image), and the aligned
similarity of a query is the best over its candidates. Training images compare with each other
the same way, which is how the copy threshold is calibrated (:mod:`trustlab.replication.metrics`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from trustlab.progress import progress_bar

CANDIDATES = 6  # training images registered per query
RETRIEVAL_SIDE = 16
CROP = 0.85  # the crops undone by the retrieval views keep this share of the side
GREY_TOLERANCE = 0.02  # a query whose channels differ by less than this (of the [-1, 1] range) is grey
# largest |log scale x|, |log scale y|, |rotation|, |shift x|, |shift y| (shifts in halves of the side)
LIMITS = torch.tensor([math.log(1.4), math.log(1.4), math.radians(20), 0.3, 0.3])
STEPS = (15, 15)  # gradient steps on blurred images, then at full size
RATE = 0.03


def images(rows: np.ndarray, size: int) -> torch.Tensor:
    """Float rows [N, 3*size*size] as images [N, 3, size, size]."""
    return torch.as_tensor(np.asarray(rows, dtype=np.float32)).view(-1, 3, size, size)


def centred_unit(x: torch.Tensor) -> torch.Tensor:
    v = x.flatten(1)
    return F.normalize(v - v.mean(1, keepdim=True), dim=1)


def luminance(x: torch.Tensor) -> torch.Tensor:
    """The ITU-R 601 luminance (PIL's grey conversion) in all three channels."""
    y = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    return y[:, None].expand(-1, 3, -1, -1)


def is_grey(x: torch.Tensor) -> torch.Tensor:
    """[N] bool: every pixel's channels agree within ``GREY_TOLERANCE``."""
    return (x.amax(1) - x.amin(1)).flatten(1).amax(1) < GREY_TOLERANCE


def warp(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``x`` sampled through the affine map of ``p`` [N, 5] (log scales x, y, rotation, shifts x, y);
    positive log scales zoom in. Outside the image its border continues."""
    lx, ly, th, tx, ty = p.unbind(1)
    c, s = torch.cos(th), torch.sin(th)
    sx, sy = torch.exp(-lx), torch.exp(-ly)
    theta = torch.stack([torch.stack([c * sx, -s * sy, tx], 1), torch.stack([s * sx, c * sy, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def _views() -> list[tuple[bool, torch.Tensor]]:
    """(mirrored, warp parameters of the query) of each retrieval view."""
    out = []
    offsets = [(0.0, 0.0), (0.1, 0.1), (-0.1, 0.1), (0.1, -0.1), (-0.1, -0.1)]
    for mirrored in (False, True):
        out.append((mirrored, torch.zeros(5)))
        for ox, oy in offsets:
            out.append((mirrored, torch.tensor([math.log(CROP), math.log(CROP), 0.0, ox, oy])))
    return out


VIEWS = _views()


def _retrieval(x: torch.Tensor) -> torch.Tensor:
    return centred_unit(F.adaptive_avg_pool2d(F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), RETRIEVAL_SIDE))


def _query_views(q: torch.Tensor) -> torch.Tensor:
    """[V, Q, D] retrieval vectors of every view of every query."""
    out = []
    for mirrored, p in VIEWS:
        x = q.flip(-1) if mirrored else q
        out.append(_retrieval(warp(x, p.expand(len(x), -1)) if p.any() else x))
    return torch.stack(out)


def retrieve(q: torch.Tensor, train_vectors: torch.Tensor, k: int, exclude: tuple[torch.Tensor, torch.Tensor] | None,
             block: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` training images (indices [Q, k]) nearest to any view of each query, and that view ([Q, k]).

    ``exclude``: (group of each query, group of each training image); a query never retrieves its own group.
    """
    qv = _query_views(q)
    best = None
    for t0 in range(0, len(train_vectors), block):
        sims = torch.einsum("vqd,nd->vqn", qv, train_vectors[t0 : t0 + block])
        value, view = sims.max(0)
        index = torch.arange(t0, t0 + sims.shape[2]).expand(len(q), -1)
        if exclude is not None:
            value = value.masked_fill(exclude[1][index] == exclude[0][:, None], -2.0)
        if best is not None:
            value, index, view = (torch.cat([b, v], 1) for b, v in zip(best, (value, index, view)))
        top = value.topk(min(k, value.shape[1]), 1)
        best = (top.values, index.gather(1, top.indices), view.gather(1, top.indices))
    return best[1], best[2]


def _start(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: whether the query is mirrored, and the candidate's warp that undoes the view's crop."""
    mirrored = torch.tensor([m for m, _ in VIEWS])[view]
    p = torch.stack([v for _, v in VIEWS])[view].clone()
    zoom = torch.exp(p[:, 0])  # the view zoomed the query out by 1/zoom: zoom the candidate in instead
    p[:, :2] = -p[:, :2]
    p[:, 3:] = -p[:, 3:] * zoom[:, None]
    return mirrored, p


def register(q: torch.Tensor, c: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """[P] the highest similarity of candidate ``c`` warped onto query ``q`` (pairs [P, 3, S, S]), fitted from ``start``."""
    p = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([p], lr=RATE)
    best = (centred_unit(warp(c, start)) * centred_unit(q)).sum(1)
    for stage, steps in enumerate(STEPS):
        qs, cs = (F.avg_pool2d(q, 2), F.avg_pool2d(c, 2)) if stage == 0 else (q, c)
        qu = centred_unit(qs)
        for _ in range(steps):
            sim = (centred_unit(warp(cs, p)) * qu).sum(1)
            opt.zero_grad()
            (-sim.sum()).backward()
            opt.step()
            with torch.no_grad():
                p.copy_(torch.maximum(torch.minimum(p, LIMITS), -LIMITS))
    with torch.no_grad():
        return torch.maximum(best, (centred_unit(warp(c, p)) * centred_unit(q)).sum(1))


def aligned_nearest(queries: np.ndarray, train: np.ndarray, size: int, *, exclude: tuple[np.ndarray, np.ndarray] | None = None,
                    k: int = CANDIDATES, chunk: int = 512, quiet: bool = True,
                    what: str = "registration") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query's highest aligned similarity to a training image, that image, and whether the query was grey.

    Rows are [N, 3*size*size] in [-1, 1]. ``exclude``: (group of each query, group of each training
    image): a query is never compared with a training image of its own group (training images
    measured against the others, duplicates of each other excluded).
    """
    t = images(train, size)
    with torch.no_grad():
        colour_vectors = _retrieval(t)
    grey_vectors = None
    ex = None if exclude is None else tuple(torch.as_tensor(np.asarray(e)) for e in exclude)
    score, nearest, grey = torch.empty(len(queries)), torch.empty(len(queries), dtype=torch.long), torch.empty(len(queries), dtype=torch.bool)
    with progress_bar(quiet) as bar:
        task = bar.add_task(what, total=len(queries))
        for i in range(0, len(queries), chunk):
            q = images(queries[i : i + chunk], size)
            g = is_grey(q)
            part = None if ex is None else (ex[0][i : i + chunk], ex[1])
            with torch.no_grad():
                cand, view = retrieve(q, colour_vectors, k, part)
                if g.any():
                    if grey_vectors is None:
                        grey_vectors = _retrieval(luminance(t))
                    gc, gv = retrieve(luminance(q), grey_vectors, k, part)
                    cand, view = torch.where(g[:, None], gc, cand), torch.where(g[:, None], gv, view)
            n = cand.shape[1]
            mirrored, start = _start(view.flatten())
            qq = q.repeat_interleave(n, 0)
            qq = torch.where(mirrored[:, None, None, None], qq.flip(-1), qq)
            cc = t[cand.flatten()]
            gg = g.repeat_interleave(n)
            cc = torch.where(gg[:, None, None, None], luminance(cc), cc)
            sims = register(qq, cc, start).view(len(q), n)
            best = sims.max(1)
            score[i : i + chunk], nearest[i : i + chunk], grey[i : i + chunk] = best.values, cand.gather(1, best.indices[:, None])[:, 0], g
            bar.update(task, advance=len(q))
    return score, nearest, grey


__all__ = ["CANDIDATES", "aligned_nearest", "centred_unit", "images", "is_grey", "luminance", "register", "retrieve", "warp"]
