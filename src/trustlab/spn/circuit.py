"""Batched, layer-wise SPN inference and learning in log space.

:class:`Circuit` compiles a :class:`~trustlab.spn.structure.Graph` once: leaves are grouped
by kind, inner nodes by depth, and each depth becomes one gather of its edges' child values
followed by a segment sum (products) or a segment ``logsumexp`` (sums) into its nodes. Values
are held node-major ([nodes, batch]), so a gather copies whole rows, and the edges are a flat
list, so a layer costs its edges, not its widest node times its node count. Any DAG structure
(LearnSPN trees, random region graphs) therefore runs as a handful of tensor ops per layer,
on CPU or GPU, with autograd. Top-down passes (MPE, sampling) read the same layers through
padded child-index matrices. Missing values are NaN: a missing variable's leaves evaluate to log 1,
which marginalises it exactly in a valid SPN.

Two learners share the forward pass: :meth:`Circuit.em` reads expected counts off the
gradients of the log-likelihood with respect to the normalised log-weights and the leaf
log-probabilities (the classical identity ``n_ij = w_ij * dlogP/dw_ij``), and
:meth:`Circuit.fit_gradient` runs Adam on the unnormalised parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from trustlab.errors import ConfigError
from trustlab.spn.structure import Graph, Leaf, Product, Sum

_ZERO, _NEG_INF = 0, 1  # positions of the constants log 1 and log 0 in the value matrix
VALUES_PER_BATCH = 2**28  # the most values one batch holds in a layer: large SPNs are evaluated in fewer rows at a time


@dataclass
class _Layer:
    """One group of same-type inner nodes whose values land at ``start:start+len(children)``."""

    kind: str  # "sum" or "product"
    nodes: list[int]
    start: int
    children: torch.Tensor  # [m, F] value positions, padded (top-down passes)
    edges: torch.Tensor  # [3, E]: parent row in the layer, child value position, slot in the parent's padded row
    shared: torch.Tensor | None  # sums only: [G, F] child positions when the layer is G groups of sums over shared children


class Circuit(nn.Module):
    """A compiled SPN: ``forward(x)`` gives log p(x) for a float batch [B, num_vars]."""

    def __init__(self, graph: Graph, dtype: torch.dtype = torch.float32):
        super().__init__()
        graph.validate()
        self.num_vars, self.cardinality = graph.num_vars, list(graph.cardinality)
        nodes = graph.nodes
        depth = [0] * len(nodes)
        for i, n in enumerate(nodes):
            if not isinstance(n, Leaf):
                depth[i] = 1 + max(depth[c] for c in n.children)
        disc = [i for i, n in enumerate(nodes) if isinstance(n, Leaf) and n.kind != "gaussian"]
        gauss = [i for i, n in enumerate(nodes) if isinstance(n, Leaf) and n.kind == "gaussian"]
        pos: dict[int, int] = {}
        for i in disc + gauss:
            pos[i] = 2 + len(pos)
        self.leaf_nodes = disc + gauss
        self._leaf_kinds = [nodes[i].kind for i in self.leaf_nodes]

        # discrete leaves: a log-probability table padded to the largest cardinality
        kmax = max([self.cardinality[nodes[i].var] for i in disc], default=2)
        table = torch.full((len(disc), kmax), -math.inf, dtype=torch.float64)
        for j, i in enumerate(disc):
            n = nodes[i]
            probs = [1 - n.params[0], n.params[0]] if n.kind == "bernoulli" else n.params
            table[j, : len(probs)] = torch.log(torch.tensor(probs, dtype=torch.float64).clamp_min(1e-300))
        self.register_buffer("disc_var", torch.tensor([nodes[i].var for i in disc], dtype=torch.long))
        cards = torch.tensor([self.cardinality[nodes[i].var] for i in disc], dtype=torch.long)
        self.register_buffer("disc_pad", torch.arange(kmax) >= cards.unsqueeze(1))
        self.leaf_logits = nn.Parameter(table.masked_fill(self.disc_pad, 0.0).to(dtype))
        self.register_buffer("gauss_var", torch.tensor([nodes[i].var for i in gauss], dtype=torch.long))
        self.gauss_mean = nn.Parameter(torch.tensor([nodes[i].params[0] for i in gauss], dtype=dtype))
        self.gauss_log_std = nn.Parameter(torch.tensor([math.log(nodes[i].params[1]) for i in gauss], dtype=dtype))

        # inner nodes: one layer per (depth, type)
        self.layers: list[_Layer] = []
        self.sum_logits = nn.ParameterList()
        sum_masks = []
        for d in range(1, max(depth) + 1):
            for kind, cls in (("sum", Sum), ("product", Product)):
                ids = [i for i in range(len(nodes)) if depth[i] == d and isinstance(nodes[i], cls)]
                if not ids:
                    continue
                groups: dict[tuple, list[int]] = {}
                for i in ids:
                    groups.setdefault(tuple(nodes[i].children), []).append(i)
                shapes = {(len(g), len(c)) for c, g in groups.items()}
                shared = kind == "sum" and len(shapes) == 1 and min(shapes)[0] > 1
                if shared:  # a region's sums over the same products (random region graphs): rows in group order
                    ids = [i for g in groups.values() for i in g]
                fan = max(len(nodes[i].children) for i in ids)
                pad = _NEG_INF if kind == "sum" else _ZERO
                ch = torch.full((len(ids), fan), pad, dtype=torch.long)
                for r, i in enumerate(ids):
                    ch[r, : len(nodes[i].children)] = torch.tensor([pos[c] for c in nodes[i].children])
                start = 2 + len(pos)
                for r, i in enumerate(ids):
                    pos[i] = start + r
                edges = (ch >= 2).nonzero().T  # positions 0 and 1 are the padding constants
                edges = torch.stack([edges[0], ch[edges[0], edges[1]], edges[1]])
                self.layers.append(_Layer(kind, ids, start, ch, edges, ch[:: len(ids) // len(groups)] if shared else None))
                if kind == "sum":
                    logits = torch.zeros(len(ids), fan, dtype=torch.float64)
                    mask = torch.ones(len(ids), fan, dtype=torch.bool)
                    for r, i in enumerate(ids):
                        k = len(nodes[i].children)
                        logits[r, :k] = torch.log(torch.tensor(nodes[i].weights, dtype=torch.float64))
                        mask[r, :k] = False
                    self.sum_logits.append(nn.Parameter(logits.to(dtype)))
                    sum_masks.append(mask)
        for j, m in enumerate(sum_masks):
            self.register_buffer(f"_sum_pad{j}", m)
        for j, layer in enumerate(self.layers):
            self.register_buffer(f"_children{j}", layer.children)
            self.register_buffer(f"_edges{j}", layer.edges)
            self.register_buffer(f"_shared{j}", layer.shared)
        self.root_pos = pos[graph.root]
        self.num_positions = 2 + len(pos)
        self._width = {"up": max([self.num_positions] + [layer.edges.shape[1] for layer in self.layers]),
                       "down": max([self.num_positions] + [layer.children.numel() for layer in self.layers])}
        self._graph_shape = graph  # kept for to_graph(): the structure, not the parameters

    # -- parameters ---------------------------------------------------------------------------
    def _children(self, j: int) -> torch.Tensor:
        return getattr(self, f"_children{j}")

    def rows_per_batch(self, most: int, direction: str = "up") -> int:
        """At most ``most`` rows, fewer where a layer of this SPN would hold more than ``VALUES_PER_BATCH`` values
        (``up``: the bottom-up pass; ``down``: MPE and sampling, which read padded child lists)."""
        return max(1, min(most, VALUES_PER_BATCH // self._width[direction]))

    def _edges(self, j: int) -> torch.Tensor:
        return getattr(self, f"_edges{j}")

    def _shared(self, j: int) -> torch.Tensor | None:
        return getattr(self, f"_shared{j}")

    def log_weights(self) -> list[torch.Tensor]:
        """Normalised log-weights of every sum layer (padding at -inf)."""
        return [F.log_softmax(p.masked_fill(getattr(self, f"_sum_pad{j}"), -math.inf), dim=1)
                for j, p in enumerate(self.sum_logits)]

    def leaf_table(self) -> torch.Tensor:
        """Normalised log-probabilities of the discrete leaves [L, K] (padding at -inf)."""
        return F.log_softmax(self.leaf_logits.masked_fill(self.disc_pad, -math.inf), dim=1)

    # -- evaluation ---------------------------------------------------------------------------
    def check_data(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as float [B, num_vars]; discrete variables must hold 0..K-1 or NaN."""
        x = torch.as_tensor(x, dtype=self.leaf_logits.dtype)
        if x.ndim != 2 or x.shape[1] != self.num_vars:
            raise ConfigError(f"data has shape {tuple(x.shape)}, the SPN is over {self.num_vars} variables")
        card = torch.tensor(self.cardinality, dtype=x.dtype)
        disc = card > 0
        obs = x[:, disc]
        ok = torch.isnan(obs) | ((obs == obs.round()) & (obs >= 0) & (obs < card[disc]))
        if not bool(ok.all()):
            row, col = (~ok).nonzero()[0].tolist()
            var = int(disc.nonzero()[col])
            raise ConfigError(f"row {row}, variable {var} holds {obs[row, col].item():g}: this variable takes "
                              f"values 0..{self.cardinality[var] - 1} (binarize the data, or mark missing as NaN)")
        return x

    def leaf_values(self, x: torch.Tensor, mode: str = "sum", table: torch.Tensor | None = None) -> torch.Tensor:
        """Log-values of every leaf [B, L]; a missing variable gives log 1 (``sum``) or the mode (``max``)."""
        table = self.leaf_table() if table is None else table
        xd = x[:, self.disc_var]
        miss = torch.isnan(xd)
        idx = xd.nan_to_num(0).long()
        vals = table.unsqueeze(0).expand(len(x), -1, -1).gather(2, idx.unsqueeze(2)).squeeze(2)
        fill = table.max(1).values.expand_as(vals) if mode == "max" else torch.zeros_like(vals)
        out = [torch.where(miss, fill, vals)]
        if len(self.gauss_var):
            xg = x[:, self.gauss_var]
            std = self.gauss_log_std.exp()
            lp = -0.5 * ((xg - self.gauss_mean) / std) ** 2 - self.gauss_log_std - 0.5 * math.log(2 * math.pi)
            peak = (-self.gauss_log_std - 0.5 * math.log(2 * math.pi)).expand_as(lp)
            out.append(torch.where(torch.isnan(xg), peak if mode == "max" else torch.zeros_like(lp), lp))
        return torch.cat(out, 1)

    def values(self, x: torch.Tensor, mode: str = "sum", *, leaves: torch.Tensor | None = None,
               log_weights: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Log-values of every node [B, 2 + nodes] (positions as compiled); ``mode`` sum or max.

        Computed node-major and returned as a transposed view. A sum's ``logsumexp`` shifts by
        its children's largest value, taken without gradient: the result does not depend on
        the shift, so neither does its gradient. Groups of sums over the same children (a
        random region graph's regions) are one batched matrix product in linear space, shifted
        per group, so their children are read once per group rather than once per edge.
        """
        leaves = self.leaf_values(x, mode) if leaves is None else leaves
        lw = self.log_weights() if log_weights is None else log_weights
        b = len(leaves)
        v = leaves.new_empty(self.num_positions, b)  # written layer by layer, never re-copied
        v[_ZERO], v[_NEG_INF] = 0.0, -math.inf
        v[2 : 2 + leaves.shape[1]] = leaves.T
        s = 0
        for j, layer in enumerate(self.layers):
            m = len(layer.nodes)
            if layer.kind == "sum" and self._shared(j) is not None:
                v[layer.start : layer.start + m] = self._shared_sums(v, self._shared(j), lw[s], mode)
                s += 1
                continue
            parent, child, slot = self._edges(j)
            t = v[child]  # [E, B]
            if layer.kind == "product":
                out = t.new_zeros(m, b).index_add_(0, parent, t)
            else:
                t = t + lw[s][parent, slot].unsqueeze(1)
                s += 1
                with torch.no_grad():
                    top = t.new_full((m, b), -math.inf).scatter_reduce_(0, parent.unsqueeze(1).expand_as(t), t, "amax")
                if mode == "max":
                    out = top
                else:
                    top = top.masked_fill(torch.isinf(top), 0.0)
                    out = torch.log(t.new_zeros(m, b).index_add_(0, parent, torch.exp(t - top[parent]))) + top
            v[layer.start : layer.start + m] = out
        return v.T

    @staticmethod
    def _shared_sums(v: torch.Tensor, children: torch.Tensor, log_weights: torch.Tensor, mode: str) -> torch.Tensor:
        """Sums in G groups of k over the same F children ([G, F] positions): their values [G*k, B]."""
        (g, f), b = children.shape, v.shape[1]
        t = v[children.reshape(-1)].view(g, f, b)
        w = log_weights.view(g, -1, f)
        if mode == "max":
            return (t.unsqueeze(1) + w.unsqueeze(3)).amax(2).reshape(-1, b)
        with torch.no_grad():
            top = t.amax(1, keepdim=True)
            top = top.masked_fill(torch.isinf(top), 0.0)
        return (torch.log(torch.bmm(w.exp(), torch.exp(t - top))) + top).reshape(-1, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.values(x)[:, self.root_pos]

    @torch.no_grad()
    def log_prob(self, x, batch_size: int = 4096) -> torch.Tensor:
        """log p(x) of each row (NaN entries marginalised), in batches."""
        x = self.check_data(x)
        b = self.rows_per_batch(batch_size)
        return torch.cat([self(x[i : i + b]) for i in range(0, len(x), b)]) if len(x) else x[:, 0]

    # -- MPE and sampling ---------------------------------------------------------------------
    @torch.no_grad()
    def mpe(self, x) -> torch.Tensor:
        """Fill every NaN with its value in the most probable explanation given the rest."""
        return self._top_down_batches(self.check_data(x), "max", None)

    @torch.no_grad()
    def sample(self, n: int | None = None, *, evidence=None, seed: int = 0) -> torch.Tensor:
        """Draw ``n`` samples, or complete the NaNs of ``evidence`` by sampling p(missing | observed)."""
        dtype = self.leaf_logits.dtype
        x = torch.full((n, self.num_vars), math.nan, dtype=dtype) if evidence is None else self.check_data(evidence)
        return self._top_down_batches(x, "sum", torch.Generator().manual_seed(seed))

    def _top_down_batches(self, x: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
        """:meth:`_top_down` over ``x`` in batches of at most 2048 rows (fewer for large SPNs)."""
        b = self.rows_per_batch(2048, "down")
        return torch.cat([self._top_down(x[i : i + b], mode, generator) for i in range(0, len(x), b)])

    def _top_down(self, x: torch.Tensor, mode: str, generator: torch.Generator | None) -> torch.Tensor:
        def gumbel(shape):
            if generator is None:
                return 0.0
            u = torch.rand(shape, generator=generator).clamp(1e-12, 1 - 1e-12)
            return -torch.log(-torch.log(u))

        v = self.values(x, mode)
        lw = self.log_weights()
        active = torch.zeros_like(v)
        active[:, self.root_pos] = 1.0
        s = len(lw)
        for j in reversed(range(len(self.layers))):
            layer, ch = self.layers[j], self._children(j)
            act = active[:, layer.start : layer.start + len(ch)].clone()
            idx = ch.unsqueeze(0).expand(len(x), -1, -1)
            if layer.kind == "sum":
                s -= 1
                score = v[:, ch] + lw[s] + gumbel(idx.shape)
                pick = idx.gather(2, score.argmax(2, keepdim=True)).squeeze(2)
                active.scatter_add_(1, pick, act)
            else:
                active.scatter_add_(1, idx.reshape(len(x), -1), act.repeat_interleave(ch.shape[1], 1))
        # in a valid SPN exactly one leaf per variable is active: find it, then draw only that one
        on = (active[:, 2 : 2 + len(self.leaf_nodes)] > 0).long()
        var = torch.cat([self.disc_var, self.gauss_var]).expand(len(x), -1)
        which = torch.zeros_like(x, dtype=torch.long).scatter_add_(1, var, on * torch.arange(1, on.shape[1] + 1)) - 1
        out = x.clone()
        nd = len(self.disc_var)
        disc = torch.tensor([c > 0 for c in self.cardinality])
        if nd:
            j = which[:, disc].clamp_min(0)
            logits = self.leaf_table()[j]
            out[:, disc] = (logits + gumbel(logits.shape)).argmax(2).to(x.dtype)
        if len(self.gauss_var):
            j = (which[:, ~disc] - nd).clamp_min(0)
            noise = torch.randn(j.shape, generator=generator, dtype=x.dtype) if generator is not None else 0.0
            out[:, ~disc] = (self.gauss_mean[j] + noise * self.gauss_log_std.exp()[j]).to(x.dtype)
        return torch.where(torch.isnan(x), out, x)

    # -- learning -----------------------------------------------------------------------------
    def em(self, x, *, iterations: int = 10, batch_size: int = 2048, smoothing: float = 0.1,
           min_std: float = 1e-2, valid=None, callback=None) -> list[float]:
        """Expectation-maximisation over the whole of ``x``; returns the mean log-likelihood per iteration.

        Expected counts come from one backward pass per batch; missing values add no counts.
        ``smoothing`` is a Dirichlet pseudo-count for discrete leaves. With ``valid`` rows, the
        parameters of the iteration with the best validation likelihood are kept: a large
        random structure overfits after a few iterations, and the number of iterations is then
        chosen on held-out rows rather than on the training rows.
        """
        x = self.check_data(x)
        valid = None if valid is None or not len(valid) else self.check_data(valid)
        batch_size = self.rows_per_batch(batch_size)
        history = []
        best = (-math.inf, None)
        for it in range(iterations):
            lw = [w.detach().requires_grad_() for w in self.log_weights()]
            counts = [torch.zeros_like(w) for w in lw]
            table = self.leaf_table().detach()
            leaf_counts = torch.zeros_like(table)
            g_w = torch.zeros(len(self.gauss_var))
            g_x = torch.zeros(len(self.gauss_var))
            g_xx = torch.zeros(len(self.gauss_var))
            total = 0.0
            for i in range(0, len(x), batch_size):
                xb = x[i : i + batch_size]
                leaves = self.leaf_values(xb, table=table).detach().requires_grad_()
                ll = self.values(xb, leaves=leaves, log_weights=lw)[:, self.root_pos].sum()
                grads = torch.autograd.grad(ll, [leaves, *lw])
                total += float(ll.detach())
                for c, g in zip(counts, grads[1:]):
                    c += g.nan_to_num(0.0)
                resp = grads[0].nan_to_num(0.0)
                nd = len(self.disc_var)
                xd = xb[:, self.disc_var]
                seen = ~torch.isnan(xd)
                leaf_counts.scatter_add_(1, xd.nan_to_num(0).long().T, (resp[:, :nd] * seen).T)
                if len(self.gauss_var):
                    xg = xb[:, self.gauss_var]
                    r = resp[:, nd:] * ~torch.isnan(xg)
                    xg = xg.nan_to_num(0.0)
                    g_w += r.sum(0)
                    g_x += (r * xg).sum(0)
                    g_xx += (r * xg * xg).sum(0)
            with torch.no_grad():
                for p, c, j in zip(self.sum_logits, counts, range(len(counts))):
                    p.copy_(torch.log(c.clamp_min(1e-12)).masked_fill(getattr(self, f"_sum_pad{j}"), 0.0))
                probs = (leaf_counts + smoothing).masked_fill(self.disc_pad, 0.0)
                self.leaf_logits.copy_(torch.log(probs.clamp_min(1e-30)).masked_fill(self.disc_pad, 0.0))
                if len(self.gauss_var):
                    has = g_w > 1e-8
                    mean = torch.where(has, g_x / g_w.clamp_min(1e-8), self.gauss_mean)
                    var = torch.where(has, g_xx / g_w.clamp_min(1e-8) - mean**2, self.gauss_log_std.exp() ** 2)
                    self.gauss_mean.copy_(mean)
                    self.gauss_log_std.copy_(0.5 * torch.log(var.clamp_min(min_std**2)))
            history.append(total / len(x))
            if valid is not None:
                with torch.no_grad():
                    score = float(self.log_prob(valid).mean())
                if score > best[0]:
                    best = (score, {k: v.clone() for k, v in self.state_dict().items()})
            if callback is not None:
                callback(it, history[-1])
        if best[1] is not None:
            self.load_state_dict(best[1])
        return history

    def fit_gradient(self, x, *, epochs: int = 10, batch_size: int = 256, lr: float = 0.05, seed: int = 0,
                     callback=None) -> list[float]:
        """Maximum likelihood by Adam on the unnormalised parameters; mean log-likelihood per epoch."""
        x = self.check_data(x)
        opt = torch.optim.Adam(self.parameters(), lr=lr)
        g = torch.Generator().manual_seed(seed)
        history = []
        for epoch in range(epochs):
            total = 0.0
            for idx in torch.randperm(len(x), generator=g).split(batch_size):
                loss = -self(x[idx]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            history.append(-total / len(x))
            if callback is not None:
                callback(epoch, history[-1])
        return history

    # -- export -------------------------------------------------------------------------------
    @torch.no_grad()
    def to_graph(self) -> Graph:
        """The structure with the current parameters, as a :class:`Graph`."""
        src = self._graph_shape
        nodes = list(src.nodes)
        table = self.leaf_table().double().exp()
        nd = len(self.disc_var)
        for j, i in enumerate(self.leaf_nodes):
            n = src.nodes[i]
            if n.kind == "gaussian":
                k = j - nd
                nodes[i] = Leaf(n.var, n.kind, [float(self.gauss_mean[k]), float(self.gauss_log_std[k].exp())])
            else:
                p = table[j, : self.cardinality[n.var]]
                p = (p / p.sum()).tolist()
                nodes[i] = Leaf(n.var, n.kind, [p[1]] if n.kind == "bernoulli" else p)
        s = 0
        lw = self.log_weights()
        for layer in self.layers:
            if layer.kind != "sum":
                continue
            w = lw[s].double().exp()
            s += 1
            for r, i in enumerate(layer.nodes):
                k = len(src.nodes[i].children)
                wr = (w[r, :k] / w[r, :k].sum()).clamp_min(1e-300)
                wr = (wr / wr.sum()).tolist()
                nodes[i] = Sum(list(src.nodes[i].children), wr)
        return Graph(nodes, src.num_vars, list(src.cardinality))


__all__ = ["Circuit"]
