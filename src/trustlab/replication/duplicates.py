"""Near-duplicate groups inside a training folder, found before the copy threshold is calibrated.

The copy threshold is the 99th percentile of how close a training image comes to its nearest
*other* training image. A folder in which 1% of the images have a near-identical twin pushes that
percentile to the twins' similarity (0.99999), and every edited copy falls below it. So the
duplicates are found first and the calibration uses one image per group:

over the whole folder, pairs whose pixel similarity (mean-centred cosine at the compared size,
the mirror image too) reaches ``level`` are duplicates; candidates come from an 8×8 search, each
checked at full size. (Images that only the aligned copy metric brings to that level are left as
distinct: on Fashion-MNIST, where many distinct garments are that close once registered, grouping
them too made the calibration looser than the test images' nearest neighbours, 17% false copies
against 2%.)

Duplicated training data is a finding in itself (duplication is the first cause of replication),
so the groups are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from trustlab.progress import progress_bar
from trustlab.replication.config import DUPLICATE_LEVEL
from trustlab.replication.registration import centred_unit, images

COARSE = 8  # side of the candidate search
COARSE_MARGIN = 0.02  # a pair is checked at full size when its 8x8 similarity is within this of the level
NEIGHBOURS = 8  # candidates per image


@dataclass
class Duplicates:
    """``group[i]``: the group of training image ``i`` (its smallest member's index)."""

    group: np.ndarray
    level: float

    def merge(self, a: np.ndarray, b: np.ndarray) -> None:
        """Join the groups of images ``a[j]`` and ``b[j]``."""
        parent = self.group.copy()

        def root(i: int) -> int:
            while parent[i] != i:
                parent[i] = parent[parent[i]]
                i = parent[i]
            return i

        for i, j in zip(np.asarray(a).tolist(), np.asarray(b).tolist()):
            ri, rj = root(i), root(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
        self.group = np.array([root(i) for i in range(len(parent))])

    def representatives(self) -> np.ndarray:
        """One image per group (its first)."""
        return np.flatnonzero(self.group == np.arange(len(self.group)))

    def groups(self) -> list[list[int]]:
        """The groups of two or more images, largest first."""
        order = np.argsort(self.group, kind="stable")
        cut = np.flatnonzero(np.diff(self.group[order])) + 1
        found = [g.tolist() for g in np.split(order, cut) if len(g) > 1]
        return sorted(found, key=lambda g: (-len(g), g[0]))

    def summary(self, files: list[str] | None = None, largest: int = 10) -> dict:
        """What a report says: how many groups and images, and the largest groups."""
        groups = self.groups()
        name = (lambda i: files[i]) if files is not None else (lambda i: i)
        return {"level": self.level, "groups": len(groups), "images_in_groups": sum(map(len, groups)),
                "images_left_out_of_calibration": sum(len(g) - 1 for g in groups),
                "largest": [[name(i) for i in g[:8]] + ([f"... {len(g) - 8} more"] if len(g) > 8 else []) for g in groups[:largest]]}


def find_duplicates(rows: np.ndarray, size: int, level: float = DUPLICATE_LEVEL, *, block: int = 4096,
                    quiet: bool = True) -> Duplicates:
    """The groups of training rows ([N, 3*size*size] in [-1, 1]) whose pixel similarity, mirrored too, reaches ``level``."""
    x = images(rows, size)
    coarse = centred_unit(F.adaptive_avg_pool2d(x, COARSE))
    mirrored = centred_unit(F.adaptive_avg_pool2d(x.flip(-1), COARSE))
    a, b = [], []
    with progress_bar(quiet) as bar:
        task = bar.add_task("duplicates in the training images", total=len(x))
        for q0 in range(0, len(x), block):
            q = slice(q0, q0 + block)
            sim = torch.maximum(coarse[q] @ coarse.T, mirrored[q] @ coarse.T)
            rows_q = torch.arange(q0, q0 + len(sim))
            sim[torch.arange(len(sim)), rows_q] = -2.0
            top = sim.topk(min(NEIGHBOURS, sim.shape[1]), 1)
            qi, k = torch.nonzero(top.values >= level - COARSE_MARGIN, as_tuple=True)
            a.append(rows_q[qi])
            b.append(top.indices[qi, k])
            bar.update(task, advance=len(sim))
    a, b = torch.cat(a), torch.cat(b)
    dup = Duplicates(np.arange(len(x)), level)
    keep = torch.zeros(len(a), dtype=torch.bool)
    for i in range(0, len(a), block):
        xa, fb = x[a[i : i + block]], centred_unit(x[b[i : i + block]])
        full = torch.maximum((centred_unit(xa) * fb).sum(1), (centred_unit(xa.flip(-1)) * fb).sum(1))
        keep[i : i + block] = full >= level
    dup.merge(a[keep].numpy(), b[keep].numpy())
    return dup


__all__ = ["Duplicates", "find_duplicates"]
