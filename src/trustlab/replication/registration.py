"""Aligned similarity: how alike two images are once the edits a copy undergoes are undone.

A copy rarely leaves the generator pixel for pixel: it is cropped, shifted, rotated a little,
mirrored, re-encoded, turned grey or recoloured. Plain pixel similarity misses the geometric
edits (a crop of 85% of the side is as far from its source as an unrelated image), and a
descriptor trained to ignore them (SSCD) needs weights an offline tool cannot ship. This module
undoes the edits instead, in three steps:

1. **Retrieval.** A query and its mirror image are compared with every training image in 40
   views: the query as it is, shifted by 4% of the side in one of eight directions, or its centre
   zoomed in to undo a copy shown smaller inside a border (a letterboxed copy, at 88% or 80% of
   the side), and the training image as it is or cropped to 85% of its side (about the centre,
   the four corners and the four edges, 7% of the side off centre) and zoomed back. The crop falls
   on the training image, not on the query: a query zoomed out to undo a crop would continue its
   border where the training image has content, and on a set of look-alikes (Fashion-MNIST) that
   lost the source of 12% of the cropped copies (the crop views of every training image are kept,
   2,880 numbers per image). The luminance of each view, blurred and reduced to 8×8, shortlists the 96
   nearest training images, which are ranked again at 16×16 for the ``RETRIEVED`` most similar.
   Each goes on as it is and mirrored: a near-symmetric image (a shirt) is often retrieved in the
   wrong mirror state, and registering that comes close to the copy without reaching it.
2. **Coarse registration.** Each of them is warped onto the query by an affine map (scale up to
   1.4 in each direction, rotation up to 20°, shift up to 15% of the side; the view that found it
   is the start), fitted at half size by the enhanced correlation coefficient (ECC) algorithm of
   Evangelidis and Psarakis (2008): Gauss-Newton steps that maximise the correlation directly, so
   a few steps converge. The ``CANDIDATES`` best go on.
3. **Fine registration** of those at full size, and the similarity of the warped candidate.

Candidates are warped by bicubic interpolation: a bilinear warp blurs a candidate moved by part of
a pixel, which cost shifted, cropped and rotated copies a few thousandths of similarity, and on a
set of look-alike images (Fashion-MNIST) a few thousandths decide. The similarity counts the pixels
the warped candidate covers up to its edge, not the continued border beyond it: counting one pixel
more held a shifted copy's filled border against it wherever the image's content touches its edge.
(``VERSION`` 2 was bilinear; ``VERSION`` 3 cropped the query, not the training images; ``VERSION`` 4
had no zoomed view; ``VERSION`` 5 counted a pixel beyond the edge, registered each retrieved image in
one mirror state, compared colour pixel for pixel, and had one zoomed view, four shifts and crops 5%
off centre: on Fashion-MNIST it found 55% of letterboxed and 78% of shifted copies.)

The similarity is the cosine of mean-centred pixels (so brightness and contrast changes cost
little) over the part of the query the warped candidate covers (a shifted copy's filled border
is not held against it); of the luminance when the query is grey (a grey copy of a colour image).
Colour is compared with its chroma averaged over 3×3 pixels: JPEG stores colour at half resolution
in blocks, and at quality 30, compared pixel for pixel, 14% of emoji copies fell below the copy
threshold (none with the softened chroma, whose colours still tell skin tones apart: each copy is
matched to its own skin tone).
The aligned similarity of a query is the best over its candidates. Training images compare with
each other the same way, which is how the copy threshold is calibrated
(:mod:`trustlab.replication.metrics`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trustlab.progress import progress_bar

VERSION = 6  # bump when the aligned similarity changes: measurements stored by an older version are measured again
RETRIEVED = 24  # training images coarsely registered per query
CANDIDATES = 4  # of those, registered at full size
RETRIEVAL_SIDE = 16
SHORTLIST_SIDE = 8  # the search over all training images runs at this side, then ranks ``SHORTLIST`` at full side
SHORTLIST = 96
CROP = 0.85  # the training images' crop views keep this share of the side
CROP_OFFSET = 0.14  # the off-centre crop views sit this far from the centre, in halves of the side
SHIFT = 0.08  # the shifts undone by the query's views (along each axis and diagonally), in halves of the side
LETTERBOX = (0.88, 0.8)  # the shares of the side at which the zoomed views expect a letterboxed copy (ECC finds the rest)
GREY_TOLERANCE = 0.02  # a query whose channels differ by less than this (of the [-1, 1] range) is grey
# largest |log scale x|, |log scale y|, |rotation|, |shift x|, |shift y| (shifts in halves of the side)
LIMITS = torch.tensor([math.log(1.4), math.log(1.4), math.radians(20), 0.3, 0.3])
STEPS = (6, 6)  # ECC steps at half size (all retrieved), then at full size (the best candidates)


def images(rows: np.ndarray, size: int) -> torch.Tensor:
    """Float rows [N, 3*size*size] as images [N, 3, size, size]."""
    return torch.as_tensor(np.asarray(rows, dtype=np.float32)).view(-1, 3, size, size)


def centred_unit(x: torch.Tensor) -> torch.Tensor:
    """Each image (or row) minus its mean, scaled to unit length: dot products are the pixel similarity."""
    v = x.flatten(1)
    return F.normalize(v - v.mean(1, keepdim=True), dim=1)


def grey(x: torch.Tensor) -> torch.Tensor:
    """[N, 1, S, S] the ITU-R 601 luminance (PIL's grey conversion)."""
    return (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]


def luminance(x: torch.Tensor) -> torch.Tensor:
    """The luminance in all three channels: a colour image as its grey copy shows it."""
    return grey(x).expand(-1, 3, -1, -1)


def is_grey(x: torch.Tensor) -> torch.Tensor:
    """[N] bool: every pixel's channels agree within ``GREY_TOLERANCE``."""
    return (x.amax(1) - x.amin(1)).flatten(1).amax(1) < GREY_TOLERANCE


def _affine(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The affine matrices [N, 2, 3] of parameters ``p`` [N, 5] and their derivatives [N, 6, 5]."""
    lx, ly, th, tx, ty = p.unbind(1)
    c, s = torch.cos(th), torch.sin(th)
    sx, sy = torch.exp(-lx), torch.exp(-ly)
    z, o = torch.zeros_like(c), torch.ones_like(c)
    theta = torch.stack([c * sx, -s * sy, tx, s * sx, c * sy, ty], 1).view(-1, 2, 3)
    d = torch.stack([torch.stack(row, 1) for row in (
        (-c * sx, z, -s * sx, z, z), (z, s * sy, -c * sy, z, z), (z, z, z, o, z),
        (-s * sx, z, c * sx, z, z), (z, -c * sy, -s * sy, z, z), (z, z, z, z, o))], 1)
    return theta, d


def _sample(x: torch.Tensor, p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x`` sampled through the maps of ``p`` (border continued), which output pixels fall inside ``x``
    [N, S, S], and the maps' derivatives."""
    theta, d = _affine(p)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    inside = (grid.abs() <= 1 + 1e-4).all(-1)  # within the image's edge, rounding aside
    return F.grid_sample(x, grid, mode="bicubic", padding_mode="border", align_corners=False), inside, d


def warp(x: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``x`` sampled through the affine map of ``p`` [N, 5] (log scales x, y, rotation, shifts x, y);
    positive log scales zoom in. Outside the image its border continues."""
    return _sample(x, p)[0]


def _masked_centred(x: torch.Tensor, w: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return (x - (x * w).sum(1, keepdim=True) / n) * w


def soft_chroma(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Colour images [N, 3, S, S] with their chroma (each channel minus the luminance) averaged over the 3×3
    pixels around each that ``mask`` [N, S, S] holds: JPEG keeps colour at half resolution and in blocks, so a
    re-encoded copy keeps its colours but not their detail; outside the mask (a shifted copy's filled border)
    is not averaged in. Single-channel images are returned as they are."""
    if x.shape[1] != 3:
        return x
    y, m = grey(x), mask[:, None].to(x.dtype)

    def box(v: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.pad(v, (1, 1, 1, 1), mode="replicate"), 3, 1)

    return y + box((x - y) * m) / box(m).clamp_min(1e-6)


def similarity(q: torch.Tensor, c: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """[P] cosine of mean-centred pixels of ``q`` and ``c`` warped by ``p``, where the warp covers ``q``; colour
    compared with its chroma softened (:func:`soft_chroma`)."""
    w, inside, _ = _sample(c, p)
    q, w = soft_chroma(q, inside), soft_chroma(w, inside)
    m = inside[:, None].expand_as(q).flatten(1).float()
    n = m.sum(1, keepdim=True).clamp_min(1)
    a, b = _masked_centred(q.flatten(1), m, n), _masked_centred(w.flatten(1), m, n)
    return ((a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)).clamp(-1, 1)  # a cosine, rounding aside


def _gradients(x: torch.Tensor) -> torch.Tensor:
    """Central differences of single-channel images [N, 1, S, S] in x and y, per unit of the [-1, 1] grid."""
    s = x.shape[-1]
    px, py = F.pad(x, (1, 1, 0, 0), mode="replicate"), F.pad(x, (0, 0, 1, 1), mode="replicate")
    return torch.cat([px[..., 2:] - px[..., :-2], py[..., 2:, :] - py[..., :-2, :]], 1) * (s / 4)


def ecc(q: torch.Tensor, c: torch.Tensor, p: torch.Tensor, steps: int) -> torch.Tensor:
    """Warp parameters [P, 5] that align single-channel ``c`` onto ``q`` ([P, 1, S, S]), ``steps`` ECC
    iterations from ``p`` (kept within ``LIMITS``; a pair whose correlation would fall stays put)."""
    s = q.shape[-1]
    stack = torch.cat([c, _gradients(c)], 1)
    t0 = q.flatten(1)
    axis = torch.linspace(-1 + 1 / s, 1 - 1 / s, s)
    gy, gx = (g.flatten() for g in torch.meshgrid(axis, axis, indexing="ij"))
    basis = torch.stack([gx, gy, torch.ones_like(gx)])  # [3, S*S]: d(grid)/d(row of theta)
    eye = 1e-6 * torch.eye(5)
    for _ in range(steps):
        w, inside, d = _sample(stack, p)
        m = inside.flatten(1).float()
        n = m.sum(1, keepdim=True).clamp_min(1)
        i, t = _masked_centred(w[:, 0].flatten(1), m, n), _masked_centred(t0, m, n)
        jac = (w[:, 1].flatten(1)[:, None] * (d[:, :3].transpose(1, 2) @ basis)
               + w[:, 2].flatten(1)[:, None] * (d[:, 3:].transpose(1, 2) @ basis))  # [P, 5, S*S]
        jac = _masked_centred(jac, m[:, None], n[:, None])
        hinv = torch.linalg.inv(jac @ jac.transpose(1, 2) + eye)
        ji, jt = (jac @ i[..., None])[..., 0], (jac @ t[..., None])[..., 0]
        hji = (hinv @ ji[..., None])[..., 0]
        num = (i * i).sum(1) - (ji * hji).sum(1)
        den = (i * t).sum(1) - (jt * hji).sum(1)
        ok = den > 0
        lam = torch.where(ok, num / den.clamp_min(1e-12), torch.zeros_like(num))
        step = (hinv @ (jac @ (lam[:, None] * t - i)[..., None]))[..., 0]
        p = torch.where(ok[:, None], p + step, p)
        p = torch.maximum(torch.minimum(p, LIMITS), -LIMITS)
    return p


def _views() -> tuple[list[tuple[bool, torch.Tensor]], list[torch.Tensor]]:
    """The retrieval views, each as (query mirrored, warp parameters that undo the view on the query):
    the query's own views (as it is, shifted and zoomed in, each also mirrored) first, then the crop views (the
    plain query, then its mirror image, against each crop of the training images); and the crops."""
    z, o, d = math.log(CROP), CROP_OFFSET, SHIFT
    offsets = [(0.0, 0.0), (o, o), (-o, o), (o, -o), (-o, -o), (o, 0.0), (-o, 0.0), (0.0, o), (0.0, -o)]
    shifts = [(d, 0.0), (-d, 0.0), (0.0, d), (0.0, -d), (d, d), (-d, d), (d, -d), (-d, -d)]
    crops = [torch.tensor([z, z, 0.0, ox, oy]) for ox, oy in offsets]
    own = [torch.zeros(5), *(torch.tensor([0.0, 0.0, 0.0, ox, oy]) for ox, oy in shifts),
           *(torch.tensor([-math.log(share), -math.log(share), 0.0, 0.0, 0.0]) for share in LETTERBOX)]
    return [(m, p) for m in (False, True) for p in own] + [(m, p) for m in (False, True) for p in crops], crops


VIEWS, CROPS = _views()
OWN_VIEWS = len(VIEWS) - 2 * len(CROPS)  # the plain query is view 0, its mirror image view OWN_VIEWS // 2


def mirror_view(view: torch.Tensor) -> torch.Tensor:
    """The view that differs from ``view`` only in mirroring the query."""
    crop = view - OWN_VIEWS
    return torch.where(view < OWN_VIEWS, (view + OWN_VIEWS // 2) % OWN_VIEWS,
                       OWN_VIEWS + (crop + len(CROPS)) % (2 * len(CROPS)))


def _reduce(lum: torch.Tensor, side: int) -> torch.Tensor:
    """Luminance images [N, 1, S, S] blurred and reduced to ``side``."""
    return F.adaptive_avg_pool2d(F.avg_pool2d(lum, 3, 1, 1, count_include_pad=False), side)


def _vector(lum: torch.Tensor, side: int = RETRIEVAL_SIDE) -> torch.Tensor:
    """The retrieval vector of luminance images [N, 1, S, S]: blurred, reduced to ``side``, centred, unit."""
    return centred_unit(_reduce(lum, side))


def _axis_maps(size: int, p: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A crop view ``p`` (zoom and shift, no rotation) followed by :func:`_reduce`, as two maps [side, size]
    of the rows and of the columns: the warp, the blur and the reduction each act on rows and columns apart
    and keep a constant image constant, so the image whose row (column) ``i`` is one shows column ``i`` of the
    row (column) map. Applying two small maps to every training image costs a fraction of warping it."""
    eye = torch.eye(size)
    rows, cols = eye[:, None, :, None].expand(-1, 1, -1, size), eye[:, None, None, :].expand(-1, 1, size, -1)
    pw = p.expand(size, -1)
    return _reduce(warp(rows, pw), side)[:, 0, :, 0].T, _reduce(warp(cols, pw), side)[:, 0, 0, :].T


def _query_views(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[V, Q, D] retrieval vectors of the query's own views, at the shortlist's side and at full retrieval side."""
    coarse, fine = [], []
    for mirrored, p in VIEWS[:OWN_VIEWS]:
        x = grey(q.flip(-1) if mirrored else q)
        x = warp(x, p.expand(len(x), -1)) if p.any() else x
        coarse.append(_vector(x, SHORTLIST_SIDE))
        fine.append(_vector(x))
    return torch.stack(coarse), torch.stack(fine)


def _pairs(query: torch.Tensor, train: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(query vectors, training vectors) compared in each view, in the order of ``VIEWS``: the query's own
    views against the plain training images, then the plain query and its mirror image against each crop."""
    own = [(query[v], train[0]) for v in range(OWN_VIEWS)]
    return own + [(query[v], train[1 + j]) for v in (0, OWN_VIEWS // 2) for j in range(len(CROPS))]


def retrieve(q: torch.Tensor, train_vectors: tuple[torch.Tensor, torch.Tensor], k: int,
             exclude: tuple[torch.Tensor, torch.Tensor] | None,
             block: int = 2048) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The ``k`` training images (indices [Q, k]) nearest to any view of each query, that view ([Q, k]), and
    whether each is a candidate at all ([Q, k]: False where fewer than ``k`` training images are outside the
    query's group).

    ``train_vectors``: :func:`retrieval_vectors`. The ``SHORTLIST`` nearest at the small side are ranked
    again at the full one, so a search over many training images costs a quarter of a full-side one.
    ``exclude``: (group of each query, group of each training image); a query never retrieves its own group.
    """
    coarse_q, fine_q = _query_views(q)
    coarse_t, fine_t = train_vectors
    best = None
    for t0 in range(0, coarse_t.shape[1], block):
        pairs = _pairs(coarse_q, [v.T.contiguous() for v in coarse_t[:, t0 : t0 + block]])
        value = pairs[0][0] @ pairs[0][1]
        for a, b in pairs[1:]:  # the best view, one product at a time: [Q, block] stays in cache
            torch.maximum(value, a @ b, out=value)
        index = torch.arange(t0, t0 + value.shape[1]).expand(len(q), -1)
        if exclude is not None:
            value = value.masked_fill(exclude[1][index] == exclude[0][:, None], -2.0)
        if best is not None:
            value, index = torch.cat([best[0], value], 1), torch.cat([best[1], index], 1)
        top = value.topk(min(SHORTLIST, value.shape[1]), 1)
        best = (top.values, index.gather(1, top.indices))
    shortlist, excluded = best[1], best[0] <= -2.0
    sims = torch.stack([torch.einsum("qd,qsd->qs", a, b[shortlist]) for a, b in _pairs(fine_q, list(fine_t))])
    value, view = sims.max(0)
    top = value.masked_fill(excluded, -3.0).topk(min(k, value.shape[1]), 1).indices
    return shortlist.gather(1, top), view.gather(1, top), ~excluded.gather(1, top)


def _candidate_warp(p: torch.Tensor) -> torch.Tensor:
    """The warp of a candidate [..., 5] that undoes a query view ``p``: where the view zooms the query out by
    1/zoom, the candidate is zoomed in instead."""
    p = p.clone()
    zoom = torch.exp(p[..., :1])
    p[..., :2] = -p[..., :2]
    p[..., 3:] = -p[..., 3:] * zoom
    return p


def retrieval_vectors(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images' retrieval vectors [1 + crops, T, D], as they are and in each crop view, at the
    shortlist's side and at full retrieval side (luminance: the same for a colour image and its grey copy)."""
    lum = grey(t)
    n, size = len(t), t.shape[-1]
    out = []
    for side in (SHORTLIST_SIDE, RETRIEVAL_SIDE):
        views = [_vector(lum, side)]
        for p in CROPS:  # rows @ image @ cols.T for every image, as two large products
            rows, cols = _axis_maps(size, _candidate_warp(p), side)
            x = (lum.reshape(-1, size) @ cols.T).view(n, size, side)
            views.append(centred_unit((x.transpose(1, 2).reshape(-1, size) @ rows.T).view(n, side, side).transpose(1, 2)))
        out.append(torch.stack(views))
    return out[0], out[1]


def _start(view: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair: whether the query is mirrored, and the candidate's warp that undoes the view's crop or shift."""
    mirrored = torch.tensor([m for m, _ in VIEWS])[view]
    return mirrored, _candidate_warp(torch.stack([v for _, v in VIEWS])[view])


def register(q: torch.Tensor, c: torch.Tensor, start: torch.Tensor, keep: int,
             valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Register each query's candidates onto it: ``q`` [Q, 3, S, S], ``c`` [Q, K, 3, S, S], ``start`` [Q, K, 5];
    ``valid`` [Q, K] False for padding (a query with fewer candidates).

    Returns the aligned similarity [Q, keep] of the ``keep`` candidates best after the coarse step
    (-2 for padding), and their positions among the K.
    """
    nq, k = c.shape[:2]
    qq = q.repeat_interleave(k, 0)
    cc = c.flatten(0, 1)
    half_q, half_c = F.avg_pool2d(grey(qq), 2), F.avg_pool2d(grey(cc), 2)
    p = ecc(half_q, half_c, start.flatten(0, 1), STEPS[0])
    coarse = similarity(half_q, half_c, p).view(nq, k).masked_fill(~valid, -3.0)
    top = coarse.topk(min(keep, k), 1).indices
    pick = (top + k * torch.arange(nq)[:, None]).flatten()
    qq, cc, p = qq[pick], cc[pick], p[pick]
    p = ecc(grey(qq), grey(cc), p, STEPS[1])
    return similarity(qq, cc, p).view(nq, -1).masked_fill(~valid.gather(1, top), -2.0), top


@dataclass
class AlignedIndex:
    """Training images ready to be searched and registered: as images, and their retrieval vectors (the crop views
    of every image included), built once for all the queries against one training set."""

    images: torch.Tensor
    vectors: tuple[torch.Tensor, torch.Tensor]


def aligned_index(train: np.ndarray, size: int) -> AlignedIndex:
    """The :class:`AlignedIndex` of training rows [N, 3*size*size]."""
    t = images(train, size)
    return AlignedIndex(t, retrieval_vectors(t))


def aligned_nearest(queries: np.ndarray, train: np.ndarray, size: int, *, exclude: tuple[np.ndarray, np.ndarray] | None = None,
                    index: AlignedIndex | None = None, chunk: int = 256, quiet: bool = True,
                    what: str = "registration") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each query's highest aligned similarity to a training image, that image, and whether the query was grey.

    Rows are [N, 3*size*size] in [-1, 1]. ``exclude``: (group of each query, group of each training
    image): a query is never compared with a training image of its own group (training images
    measured against the others, duplicates of each other excluded). ``index``: ``aligned_index(train,
    size)`` when the caller searches the same training set again.
    """
    ix = index if index is not None else aligned_index(train, size)
    t, vectors = ix.images, ix.vectors
    ex = None if exclude is None else tuple(torch.as_tensor(np.asarray(e)) for e in exclude)
    score, nearest, was_grey = torch.empty(len(queries)), torch.empty(len(queries), dtype=torch.long), torch.empty(len(queries), dtype=torch.bool)
    with progress_bar(quiet) as bar, torch.no_grad():
        task = bar.add_task(what, total=len(queries))
        for i in range(0, len(queries), chunk):
            q = images(queries[i : i + chunk], size)
            g = is_grey(q)
            cand, view, valid = retrieve(q, vectors, RETRIEVED, None if ex is None else (ex[0][i : i + chunk], ex[1]))
            # each retrieved image as it is and mirrored: a near-symmetric one (a shirt) may be retrieved in the
            # wrong mirror state, and registering that can get close to the copy but never reach it
            cand, view, valid = torch.cat([cand, cand], 1), torch.cat([view, mirror_view(view)], 1), valid.repeat(1, 2)
            mirrored, start = _start(view.flatten())
            mirrored = mirrored.view(cand.shape)
            c = t[cand]  # [Q, K, 3, S, S]
            c = torch.where(g[:, None, None, None, None], luminance(c.flatten(0, 1)).view(c.shape), c)
            c = torch.where(mirrored[..., None, None, None], c.flip(-1), c)  # mirror the candidate, not the query
            start[:, 3] = torch.where(mirrored.flatten(), -start[:, 3], start[:, 3])
            start[:, 2] = torch.where(mirrored.flatten(), -start[:, 2], start[:, 2])
            sims, top = register(q, c, start.view(*cand.shape, 5), CANDIDATES, valid)
            best = sims.max(1)
            score[i : i + chunk] = best.values
            nearest[i : i + chunk] = cand.gather(1, top.gather(1, best.indices[:, None]))[:, 0]
            was_grey[i : i + chunk] = g
            bar.update(task, advance=len(q))
    return score, nearest, was_grey


__all__ = ["CANDIDATES", "RETRIEVED", "VERSION", "AlignedIndex", "aligned_index", "aligned_nearest", "centred_unit", "ecc", "grey", "images", "is_grey", "luminance",
           "mirror_view", "register", "retrieve", "similarity", "soft_chroma", "warp"]
