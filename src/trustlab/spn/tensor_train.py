"""tSPN: an SPN over discrete variables as a nonnegative tensor train, and its inference.

A tensor train ``P[x1..xd] = G1[x1] G2[x2] ... Gd[xd]`` with nonnegative cores is itself a
deep SPN: each core is a layer of sum nodes over products. :func:`spn_to_tensor_train`
builds, for a valid SPN and a variable order, the train that represents exactly the same
distribution, bottom-up over the graph:

* a leaf is a rank-1 train: its probability vector at its variable, ones elsewhere;
* a sum is the direct sum of its children's trains (ranks add) inside their common span
  (first to last position of the scope in the order), with the weights folded into the first
  core; outside the span every train is rank 1 and the sum collapses;
* a product is the Kronecker (Hadamard) product of its children's cores (ranks multiply),
  but only children whose span straddles a cut contribute rank there.

Positions outside a node's span are implicit all-ones cores, so no node stores more than its
span. The order matters for the ranks: the default visits variables as a depth-first walk of
the SPN first reaches them (:func:`dfs_order`).

Inference contracts the cores left to right for a batch: each step is one matrix product
``[B, r] @ [r, n*r']`` and a gather of the observed value (or the core summed over its values
for a missing one), with a running scale so long trains do not underflow.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn

from trustlab.errors import ConfigError
from trustlab.spn.structure import Graph, Leaf, Sum


class TensorTrain(nn.Module):
    """A nonnegative tensor train over discrete variables (cores stored as logs, so they stay positive)."""

    def __init__(self, cores: list[torch.Tensor], order: list[int], cardinality: list[int]):
        super().__init__()
        if len(cores) != len(order) or sorted(order) != list(range(len(order))):
            raise ConfigError("a tensor train needs one core per variable and an order that is a permutation")
        for k, c in enumerate(cores):
            if c.ndim != 3 or c.shape[1] != cardinality[order[k]] or (k and c.shape[0] != cores[k - 1].shape[2]):
                raise ConfigError(f"core {k} has shape {tuple(c.shape)}, which does not chain with its neighbours")
            if bool((c < 0).any()):
                raise ConfigError(f"core {k} has negative entries: a tSPN needs nonnegative cores")
        if cores[0].shape[0] != 1 or cores[-1].shape[2] != 1:
            raise ConfigError("the first and last cores must have outer rank 1")
        self.order = list(order)
        self.cardinality = list(cardinality)
        self.log_cores = nn.ParameterList([nn.Parameter(torch.log(c)) for c in cores])

    @property
    def num_vars(self) -> int:
        return len(self.order)

    def cores(self) -> list[torch.Tensor]:
        return [c.exp() for c in self.log_cores]

    def ranks(self) -> list[int]:
        return [int(c.shape[2]) for c in self.log_cores[:-1]]

    def num_parameters(self) -> int:
        return sum(c.numel() for c in self.log_cores)

    def log_partition(self) -> torch.Tensor:
        """log of the sum of the train over every assignment (0 for an exact map of a normalised SPN):
        one vector through the cores summed over their values, scaled as in :meth:`_sweep`."""
        v, scales = self.log_cores[0].new_ones(1, 1), []
        for log_core in self.log_cores:
            v = v @ log_core.exp().sum(1)
            scales.append(v.detach().sum(1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny))
            v = v / scales[-1]
        return torch.log(torch.cat(scales, 1)).sum() + torch.log(v.squeeze())

    @torch.no_grad()
    def normalise_(self) -> "TensorTrain":
        """Rescale the cores in place, same distribution, so that each one is a set of conditionals.

        After it, every core sums to 1 over its value and right state for each left state
        (``G_k[a, x, b]`` = p(x_k = x, next state b | state a)), as in a hidden Markov model
        with position-dependent tables: the train is normalised (partition function 1) and
        each row of a core is the weight vector of a sum node, which is what EM re-estimates.
        One sweep right to left pushes each core's row sums into its left neighbour, divided by
        their largest (a common factor only scales the whole train, and a long one overflows).
        """
        carry = self.log_cores[-1].new_ones(1)
        for log_core in reversed(self.log_cores):
            core = log_core.exp() * carry.view(1, 1, -1)
            sums = core.sum((1, 2)).clamp_min(torch.finfo(core.dtype).tiny)
            log_core.copy_(torch.log(core / sums.view(-1, 1, 1)))
            carry = sums / sums.max()
        return self

    def _sweep(self, x: torch.Tensor, positions: range, reverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Contract the cores at ``positions`` for each row of ``x`` (NaN = summed out).

        Left to right the result is a row vector per example over the right rank of the last
        core; right to left, a column vector over the left rank of the first. Returned
        normalised, with the log of the scale taken out ([B, r], [B]). The scales are constants
        to autograd: dividing a row by a number that the log adds back leaves the gradient of
        the log-likelihood unchanged, and the backward pass skips their bookkeeping (a training
        step is then mostly the matrix products).
        """
        b = len(x)
        dtype = self.log_cores[0].dtype
        seq = list(reversed(positions) if reverse else positions)
        size = 1 if not seq else (self.log_cores[seq[0]].shape[2] if reverse else self.log_cores[seq[0]].shape[0])
        v = torch.ones(b, size, dtype=dtype, device=x.device)
        if not seq:
            return v, torch.zeros(b, dtype=dtype, device=x.device)
        cols = x[:, [self.order[k] for k in seq]]
        missing = torch.isnan(cols)
        partial = bool(missing.any())
        card = torch.tensor([self.cardinality[self.order[k]] for k in seq], device=x.device)
        if partial:  # value n of a variable with n values = summed out
            cols = torch.where(missing, card.to(cols.dtype), cols)
        # row i's value at step j, as a row of the [B * n, r'] product: one index_select per core
        values = card + partial
        picks = (cols.long() + torch.arange(b, device=x.device).unsqueeze(1) * values).T.contiguous()
        scales = []
        for j, k in enumerate(seq):
            core = self.log_cores[k].exp()
            if reverse:
                core = core.permute(2, 1, 0)
            if partial:
                core = torch.cat([core, core.sum(1, keepdim=True)], 1)
            r, n, r2 = core.shape
            v = (v @ core.reshape(r, n * r2)).view(b * n, r2).index_select(0, picks[j])
            s = v.detach().sum(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
            v = v / s
            scales.append(s)
        return v, torch.log(torch.cat(scales, 1)).sum(1)

    def _contract(self, x: torch.Tensor) -> torch.Tensor:
        """log of the unnormalised train at each row of ``x`` (NaN = summed out) [B]."""
        v, log_scale = self._sweep(x, range(self.num_vars), reverse=False)
        return log_scale + torch.log(v.squeeze(1).clamp_min(0.0))

    def log_joint_over(self, x: torch.Tensor, var: int) -> torch.Tensor:
        """log p(var = k, rest of x) for every value k [B, K], from one left and one right sweep.

        The value of ``var`` in ``x`` is ignored; NaN elsewhere is summed out. With the class
        as a variable this is the generative classifier's joint, at the cost of one pass.
        """
        pos = self.order.index(var)
        left, ls = self._sweep(x, range(pos), reverse=False)
        right, rs = self._sweep(x, range(pos + 1, self.num_vars), reverse=True)
        core = self.log_cores[pos].exp()
        joint = torch.einsum("ba,akc,bc->bk", left, core, right).clamp_min(torch.finfo(core.dtype).tiny)
        return torch.log(joint) + (ls + rs).unsqueeze(1) - self.log_partition()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised log-probability of each row (NaN entries marginalised).

        The partition function rides in the same sweep as one more row, every variable summed
        out: in training each operation also costs a node of the backward pass, and this saves
        a second chain of them (about a fifth of a step). Inference without gradients takes
        :meth:`log_partition` once per call instead, which is cheaper than widening every core.
        """
        both = self._contract(torch.cat([x, x.new_full((1, self.num_vars), float("nan"))]))
        return both[:-1] - both[-1]

    def check_data(self, x) -> torch.Tensor:
        x = torch.as_tensor(x, dtype=self.log_cores[0].dtype)
        if x.ndim != 2 or x.shape[1] != self.num_vars:
            raise ConfigError(f"data has shape {tuple(x.shape)}, the tSPN is over {self.num_vars} variables")
        card = torch.tensor(self.cardinality, dtype=x.dtype)
        ok = torch.isnan(x) | ((x == x.round()) & (x >= 0) & (x < card))
        if not bool(ok.all()):
            row, var = (~ok).nonzero()[0].tolist()
            raise ConfigError(f"row {row}, variable {var} holds {x[row, var].item():g}: this variable takes values "
                              f"0..{self.cardinality[var] - 1} (binarize the data, or mark missing as NaN)")
        return x

    @torch.no_grad()
    def log_prob(self, x, batch_size: int = 4096) -> torch.Tensor:
        x = self.check_data(x)
        z = self.log_partition()
        return torch.cat([self._contract(x[i : i + batch_size]) - z for i in range(0, len(x), batch_size)])

    def to_state(self) -> tuple[dict[str, torch.Tensor], dict]:
        tensors = {f"core{k}": c.detach().exp() for k, c in enumerate(self.log_cores)}
        return tensors, {"order": self.order, "cardinality": self.cardinality}

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict) -> "TensorTrain":
        cores = [tensors[f"core{k}"] for k in range(len(meta["order"]))]
        return cls(cores, meta["order"], meta["cardinality"])

    @classmethod
    def random(cls, order: list[int], cardinality: list[int], rank: int, *, seed: int = 0) -> "TensorTrain":
        """A train of ``rank`` (capped where fewer states suffice) with positive random cores, to be fitted.

        Entries are uniform on [0.5, 1.5): every state starts in use, and no ratio between
        entries is large enough for one path to dominate before training.
        """
        card = [cardinality[v] for v in order]
        ranks = [1, *capped_ranks(card, rank), 1]
        g = torch.Generator().manual_seed(seed)
        return cls([torch.rand(ranks[k], card[k], ranks[k + 1], generator=g) + 0.5 for k in range(len(card))],
                   order, cardinality)


def capped_ranks(card: list[int], rank: int) -> list[int]:
    """``rank`` at each cut, lowered where the variables on one side have fewer joint states."""
    d = len(card)
    left = [math.prod(card[: k + 1]) for k in range(d - 1)]
    right = [math.prod(card[k + 1 :]) for k in range(d - 1)]
    return [min(rank, a, b) for a, b in zip(left, right)]


# -- mapping an SPN onto a tensor train ------------------------------------------------------
def dfs_order(graph: Graph) -> list[int]:
    """Variables in the order a depth-first walk from the root first reaches their leaves."""
    seen_nodes, order, seen_vars = set(), [], set()
    stack = [graph.root]
    while stack:
        i = stack.pop()
        if i in seen_nodes:
            continue
        seen_nodes.add(i)
        node = graph.nodes[i]
        if isinstance(node, Leaf):
            if node.var not in seen_vars:
                seen_vars.add(node.var)
                order.append(node.var)
        else:
            stack.extend(reversed(node.children))
    return order


def mutual_information_order(x: torch.Tensor, cardinality: list[int]) -> list[int]:
    """Variables ordered so that dependent ones sit side by side, from the rows ``x``.

    A train's rank at a cut has to carry all the dependence between the variables left and
    right of it, so an order that keeps strongly dependent variables close needs smaller
    ranks for the same likelihood. The order sorts the Fiedler vector (the eigenvector of
    the second-smallest eigenvalue) of the Laplacian of the graph whose edge weights are
    the pairwise mutual information: the relaxed minimiser of sum_ij MI_ij (pos_i - pos_j)^2.
    """
    rows = x.long().numpy()
    onehot = np.concatenate([np.eye(k)[rows[:, v]] for v, k in enumerate(cardinality)], axis=1)
    counts = onehot.T @ onehot
    bounds = np.cumsum([0, *cardinality])
    d = len(cardinality)
    mi = np.zeros((d, d))
    for i in range(d):
        for j in range(i + 1, d):
            p = counts[bounds[i]:bounds[i + 1], bounds[j]:bounds[j + 1]] + 0.5  # smoothed pair table
            p = p / p.sum()
            mi[i, j] = mi[j, i] = float((p * np.log(p / np.outer(p.sum(1), p.sum(0)))).sum())
    laplacian = np.diag(mi.sum(1)) - mi
    fiedler = np.linalg.eigh(laplacian)[1][:, 1] if d > 1 else np.zeros(1)
    return [int(v) for v in np.argsort(fiedler, kind="stable")]


def _spans(graph: Graph, position: list[int]) -> list[tuple[int, int]]:
    spans = []
    for n in graph.nodes:
        if isinstance(n, Leaf):
            spans.append((position[n.var], position[n.var]))
        else:
            spans.append((min(spans[c][0] for c in n.children), max(spans[c][1] for c in n.children)))
    return spans


def exact_ranks(graph: Graph, order: list[int]) -> list[int]:
    """Ranks of the exact train for ``order``, computed from the structure alone (no cores built)."""
    d = graph.num_vars
    position = [0] * d
    for k, v in enumerate(order):
        position[v] = k
    spans = _spans(graph, position)
    ranks: list[np.ndarray] = []  # per node: rank at cuts 0..d-2 (cut k between positions k and k+1)
    for i, n in enumerate(graph.nodes):
        a, b = spans[i]
        r = np.ones(d - 1, dtype=object)
        if not isinstance(n, Leaf) and b > a:
            inside = slice(a, b)
            if isinstance(n, Sum):
                r[inside] = sum(ranks[c][inside] for c in n.children)
            else:
                r[inside] = np.prod([ranks[c][inside] for c in n.children], axis=0)
        ranks.append(r)
    return [int(v) for v in ranks[-1]]


def spn_to_tensor_train(graph: Graph, order: list[int] | None = None, *, max_rank: int = 4096,
                        dtype: torch.dtype = torch.float64) -> TensorTrain:
    """The tensor train that represents exactly the distribution of ``graph`` (discrete leaves only)."""
    graph.validate()
    if any(c == 0 for c in graph.cardinality):
        raise ConfigError("a tSPN needs discrete variables: this SPN has continuous (Gaussian) ones")
    d = graph.num_vars
    order = dfs_order(graph) if order is None else list(order)
    if sorted(order) != list(range(d)):
        raise ConfigError(f"the variable order must be a permutation of 0..{d - 1}")
    if d < 2:
        raise ConfigError("a tensor train needs at least two variables")
    need = exact_ranks(graph, order)
    if max(need) > max_rank:
        raise ConfigError(f"the exact tensor train needs rank {max(need):,} (> --max-rank {max_rank}) in this "
                          "variable order: learn a smaller SPN, or raise --max-rank")
    position = [0] * d
    for k, v in enumerate(order):
        position[v] = k
    spans = _spans(graph, position)
    card = [graph.cardinality[v] for v in order]

    def ones(k: int) -> torch.Tensor:
        return torch.ones(1, card[k], 1, dtype=dtype)

    last_use = [0] * len(graph.nodes)
    for i, n in enumerate(graph.nodes):
        for c in getattr(n, "children", []):
            last_use[c] = i
    built: list[dict[int, torch.Tensor]] = []  # per node: position -> core, over its span only
    for i, n in enumerate(graph.nodes):
        a, b = spans[i]
        if isinstance(n, Leaf):
            p = [1 - n.params[0], n.params[0]] if n.kind == "bernoulli" else n.params
            built.append({a: torch.tensor(p, dtype=dtype).view(1, -1, 1)})
            continue
        kids = [built[c] for c in n.children]
        cores: dict[int, torch.Tensor] = {}
        if isinstance(n, Sum):
            w = torch.tensor(n.weights, dtype=dtype)
            for k in range(a, b + 1):
                parts = [kid[k] for kid in kids]
                if a == b:
                    cores[k] = sum(wj * p for wj, p in zip(w, parts))
                elif k == a:
                    cores[k] = torch.cat([wj * p for wj, p in zip(w, parts)], 2)
                elif k == b:
                    cores[k] = torch.cat(parts, 0)
                else:
                    cores[k] = _block_diagonal(parts)
        else:
            for k in range(a, b + 1):
                core = torch.ones(1, card[k], 1, dtype=dtype)
                for kid in kids:
                    if k in kid:  # children whose span misses k are all-ones there
                        core = _kron(core, kid[k])
                cores[k] = core
        built.append(cores)
        for c in n.children:  # free a child's cores once its last parent is built
            if last_use[c] == i:
                built[c] = {}
    root = built[-1]
    return TensorTrain([root.get(k, ones(k)) for k in range(d)], order, list(graph.cardinality))


def _block_diagonal(parts: list[torch.Tensor]) -> torch.Tensor:
    """Cores [r_j, n, s_j] -> one core [sum r_j, n, sum s_j], block diagonal in the ranks."""
    n = parts[0].shape[1]
    out = parts[0].new_zeros(sum(p.shape[0] for p in parts), n, sum(p.shape[2] for p in parts))
    r = s = 0
    for p in parts:
        out[r : r + p.shape[0], :, s : s + p.shape[2]] = p
        r, s = r + p.shape[0], s + p.shape[2]
    return out


def _kron(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cores [r, n, s] and [p, n, q] -> [r*p, n, s*q] with entries a[i,x,j] * b[k,x,l]."""
    r, n, s = a.shape
    p, _, q = b.shape
    return torch.einsum("ixj,kxl->ikxjl", a, b).reshape(r * p, n, s * q)


__all__ = ["TensorTrain", "capped_ranks", "dfs_order", "exact_ranks", "mutual_information_order", "spn_to_tensor_train"]
