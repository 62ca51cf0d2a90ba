"""Compressing a tSPN: nonnegative rank truncation, then maximum-likelihood fine-tuning.

Truncation sweeps left to right. At cut k it merges cores k and k+1 into the matrix
``W[(a, x_k), (x_{k+1}, b)]``, weights it by the environments (the left part of the train
summed over x_1..x_{k-1} at state ``a``, the right part summed over x_{k+2}..x_d at ``b``) so
that it holds probability mass, and factorises it with a KL-divergence nonnegative matrix
factorisation of rank R (scikit-learn's multiplicative-update NMF), or with alternating
nonnegative least squares (scikit-learn's coordinate-descent NMF, the Frobenius loss).
Dividing the environments back out gives the two new cores. KL is the natural loss here:
for a probability tensor it is the likelihood lost; least squares weighs the large
probabilities and is the classic rounding. Cuts already at rank <= R stay exact.

The truncated train is then fine-tuned by maximising the data log-likelihood over the log
of the cores (positivity for free), with the partition function recomputed every step
(:func:`fine_tune`), or by expectation-maximisation on the train as a hidden Markov model
(:func:`em_fit`).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from trustlab.errors import ConfigError
from trustlab.spn.config import NMF_LOSSES
from trustlab.spn.tensor_train import TensorTrain


def _environments(cores: list[torch.Tensor]) -> list[torch.Tensor]:
    """right[k]: the train from core k on, summed over its variables (a vector over the left rank of core k)."""
    right = [torch.ones(1, dtype=cores[0].dtype)] * (len(cores) + 1)
    for k in range(len(cores) - 1, -1, -1):
        right[k] = cores[k].sum(1) @ right[k + 1]
    return right


def truncate(tt: TensorTrain, rank: int, *, iterations: int = 1500, loss: str = "kl", seed: int = 0) -> TensorTrain:
    """A nonnegative train with every rank at most ``rank``, close to ``tt`` in KL (``loss`` kl) or least squares (als)."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    if rank < 1:
        raise ConfigError(f"rank {rank} is below 1: a tensor train needs rank >= 1")
    if loss not in NMF_LOSSES:
        raise ConfigError(f"rounding '{loss}': use {', '.join(NMF_LOSSES)}")
    with torch.no_grad():
        cores = [c.double().clone() for c in tt.cores()]
    right = _environments(cores)
    left = torch.ones(1, dtype=torch.float64)
    for k in range(len(cores) - 1):
        a, b = cores[k], cores[k + 1]
        r0, n1, r1 = a.shape
        _, n2, r2 = b.shape
        if r1 > rank:
            lw = left.clamp_min(1e-300)
            rw = right[k + 2].clamp_min(1e-300)
            w = torch.einsum("axg,gyb->axyb", a, b) * lw.view(-1, 1, 1, 1) * rw.view(1, 1, 1, -1)
            scale = w.sum()
            mat = (w / scale).reshape(r0 * n1, n2 * r2).numpy()
            keep = min(rank, r0 * n1, n2 * r2)
            if keep == r0 * n1:  # exact: the identity on the left
                u, v = np.eye(keep), mat
            elif keep == n2 * r2:
                u, v = mat, np.eye(keep)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)
                    nmf = NMF(n_components=keep, init="nndsvda", max_iter=iterations, random_state=seed, **NMF_LOSSES[loss])
                    u = nmf.fit_transform(mat)
                v = nmf.components_
            u = torch.from_numpy(np.ascontiguousarray(u)).view(r0, n1, keep) / lw.view(-1, 1, 1)
            v = torch.from_numpy(np.ascontiguousarray(v)).view(keep, n2, r2) / rw.view(1, 1, -1) * scale
            norm = u.sum((0, 1)).clamp_min(1e-300)  # keep the new states' scales balanced
            cores[k], cores[k + 1] = u / norm.view(1, 1, -1), v * norm.view(-1, 1, 1)
        left = left @ cores[k].sum(1)
        left = left / left.sum().clamp_min(1e-300)
    floor = 1e-12  # log-parametrised cores need strictly positive entries
    return TensorTrain([c.clamp_min(floor) for c in cores], tt.order, tt.cardinality)


class _BestOnValid:
    """Early stopping chosen on validation rows (never on the test split): each epoch's cores are
    scored, and the best epoch's are put back at the end."""

    def __init__(self, tt: TensorTrain, valid: torch.Tensor | None):
        self.tt, self.valid, self.best, self.state = tt, valid, -float("inf"), None

    def score(self, entry: dict) -> dict:
        if self.valid is not None:
            entry["valid_ll"] = v = float(self.tt.log_prob(self.valid).mean())
            if v > self.best:
                self.best, self.state = v, [c.detach().clone() for c in self.tt.log_cores]
        return entry

    def restore(self) -> None:
        if self.state is not None:
            with torch.no_grad():
                for c, b in zip(self.tt.log_cores, self.state):
                    c.copy_(b)


def fine_tune(tt: TensorTrain, x: torch.Tensor, *, epochs: int = 5, batch_size: int = 256, lr: float = 0.02,
              class_var: int | None = None, discriminative: float = 0.0, valid: torch.Tensor | None = None,
              seed: int = 0, callback=None) -> list[dict]:
    """Maximise the mean log-likelihood of ``x`` over the (log) cores; returns per epoch ``train_ll``
    (and ``valid_ll``).

    With ``class_var`` and ``discriminative`` = λ > 0 the objective is the hybrid
    ``log p(class, x) + λ log p(class | x)``, which keeps a compressed generative classifier
    discriminative; the returned figure is still the mean joint log-likelihood. With ``valid``
    rows, the train ends holding the cores of the epoch with the best validation likelihood
    (early stopping chosen on validation data, never on the test split).
    """
    x = tt.check_data(x)
    if discriminative and class_var is None:
        raise ConfigError("a discriminative weight needs the class variable")
    opt = torch.optim.Adam(tt.parameters(), lr=lr, fused=True)  # one kernel for all cores: a step has one per variable
    g = torch.Generator().manual_seed(seed)
    history, keep = [], _BestOnValid(tt, valid)
    for epoch in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(x), generator=g).split(batch_size):
            if discriminative:
                joint = tt.log_joint_over(x[idx], class_var)
                own = joint.gather(1, x[idx, class_var].long().unsqueeze(1)).squeeze(1)
                ll = own.mean()
                loss = -ll - discriminative * (own - torch.logsumexp(joint, 1)).mean()
            else:
                ll = tt(x[idx]).mean()
                loss = -ll
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(ll.detach()) * len(idx)
        history.append(keep.score({"train_ll": total / len(x)}))
        if callback is not None:
            callback(epoch, history[-1])
    keep.restore()
    return history


def em_fit(tt: TensorTrain, x: torch.Tensor, *, iterations: int = 50, smoothing: float = 0.01,
           valid: torch.Tensor | None = None, batch_size: int = 4096, callback=None) -> list[dict]:
    """Expectation-maximisation (Baum-Welch) of a nonnegative train; returns per iteration ``train_ll``
    (and ``valid_ll``), keeping the cores of the iteration best on ``valid``.

    With the cores as conditionals (:meth:`TensorTrain.normalise_`) a train is an
    inhomogeneous HMM, and the expected count of each core entry over the rows is the gradient
    of their summed log-likelihood with respect to its log (every path through the train uses
    one entry of each core). The M-step sets each core row to its counts plus ``smoothing``,
    renormalised. One iteration is one pass over all rows and never lowers the likelihood
    (up to the smoothing): no learning rate, no batch order.
    """
    x = tt.check_data(x)
    tt.normalise_()
    history, keep = [], _BestOnValid(tt, valid)
    for it in range(iterations):
        tt.zero_grad(set_to_none=True)
        total = 0.0
        for xb in x.split(batch_size):
            ll = tt._contract(xb).sum()  # normalised train: no partition function to subtract
            ll.backward()
            total += float(ll.detach())
        with torch.no_grad():
            for p in tt.log_cores:
                counts = p.grad.clamp_min(0.0) + smoothing
                p.copy_(torch.log(counts / counts.sum((1, 2), keepdim=True)))
        history.append(keep.score({"train_ll": total / len(x)}))  # train_ll: of the cores before this update
        if callback is not None:
            callback(it, history[-1])
    keep.restore()
    tt.zero_grad(set_to_none=True)
    return history


__all__ = ["em_fit", "fine_tune", "truncate"]
