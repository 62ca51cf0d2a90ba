"""Structure learning: LearnSPN (data-driven) and random region graphs (RAT-SPN style).

LearnSPN (Gens & Domingos) recurses on (rows, variables): if the variables split into groups
that a pairwise independence test finds independent, it makes a product of the groups;
otherwise it clusters the rows and makes a sum weighted by cluster sizes. Few rows or one
variable end the recursion in a fully factorised product of leaves. Independence is a
G-test on counts for discrete pairs and a Fisher z-test on the correlation otherwise.

A random region graph splits a random permutation of the variables in halves ``depth`` times
per repetition; every region holds ``sums`` sum nodes (``leaves`` factorised input
distributions at the bottom) and every split the products of all pairs of its halves'
nodes. Its parameters are random; learn them with :meth:`Circuit.em` or
:meth:`Circuit.fit_gradient`.
"""

from __future__ import annotations

import numpy as np

from trustlab.errors import ConfigError
from trustlab.spn.structure import Graph, Leaf, Product, Sum


def _leaf(var: int, card: int, column: np.ndarray, smoothing: float, min_std: float) -> Leaf:
    column = column[~np.isnan(column)]
    if card == 0:
        mean = float(column.mean()) if len(column) else 0.0
        std = float(column.std()) if len(column) > 1 else 1.0
        return Leaf(var, "gaussian", [mean, max(std, min_std)])
    counts = np.bincount(column.astype(np.int64), minlength=card)[:card] + smoothing
    p = counts / counts.sum()
    return Leaf(var, "bernoulli", [float(p[1])]) if card == 2 else Leaf(var, "categorical", [float(v) for v in p])


def _dependency_pvalues(x: np.ndarray, cards: list[int]) -> np.ndarray:
    """Pairwise p-values of independence between the columns of ``x`` (no missing values)."""
    from scipy.stats import chi2, norm

    n, d = x.shape
    pv = np.ones((d, d))
    disc = [j for j in range(d) if cards[j] > 0]
    if len(disc) > 1:
        blocks = [np.eye(cards[j])[x[:, j].astype(np.int64)] for j in disc]
        onehot = np.concatenate(blocks, 1)
        owner = np.repeat(np.arange(len(disc)), [cards[j] for j in disc])
        joint = onehot.T @ onehot
        marg = onehot.sum(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where(joint > 0, joint * np.log(joint * n / np.outer(marg, marg)), 0.0)
        agg = np.zeros((len(owner), len(disc)))
        agg[np.arange(len(owner)), owner] = 1.0
        g = 2 * agg.T @ term @ agg
        k = np.array([cards[j] for j in disc]) - 1
        dof = np.maximum(np.outer(k, k), 1)
        pv[np.ix_(disc, disc)] = chi2.sf(np.maximum(g, 0), dof)
    cont = [j for j in range(d) if cards[j] == 0]
    if cont and n > 3:
        sd = x.std(0)
        z = (x - x.mean(0)) / np.where(sd > 0, sd, 1)
        r = np.clip(z.T @ z / n, -0.999999, 0.999999)
        stat = np.abs(np.arctanh(r)) * np.sqrt(n - 3)
        p = 2 * norm.sf(stat)
        p[sd == 0, :] = 1.0
        p[:, sd == 0] = 1.0
        for j in cont:
            pv[j, :], pv[:, j] = p[j, :], p[:, j]
    np.fill_diagonal(pv, 0.0)
    return pv


def _components(pv: np.ndarray, alpha: float) -> list[np.ndarray]:
    from scipy.sparse.csgraph import connected_components

    count, label = connected_components(pv < alpha, directed=False)
    return [np.flatnonzero(label == c) for c in range(count)]


def learn_spn(x: np.ndarray, cardinality: list[int], *, min_instances: int = 100, alpha: float = 0.001,
              clusters: int = 2, smoothing: float = 0.1, min_std: float = 1e-2, seed: int = 0) -> Graph:
    """Learn structure and parameters from ``x`` [N, d] (discrete columns hold 0..K-1; NaN missing)."""
    from sklearn.cluster import KMeans

    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != len(cardinality):
        raise ConfigError(f"data has shape {x.shape}, expected [N, {len(cardinality)}]")
    if len(x) < 2:
        raise ConfigError("LearnSPN needs at least two rows of data")
    if min_instances < 2 or not 0 < alpha < 1 or clusters < 2:
        raise ConfigError("need min_instances >= 2, 0 < alpha < 1 and clusters >= 2")
    g = Graph(num_vars=len(cardinality), cardinality=list(cardinality))
    filled = np.where(np.isnan(x), np.nanmean(x, 0, keepdims=True), x)  # for tests and clustering only
    filled = np.nan_to_num(filled)
    rng = np.random.default_rng(seed)

    def factorised(rows: np.ndarray, scope: np.ndarray) -> int:
        kids = [g.add(_leaf(int(v), cardinality[v], x[rows, v], smoothing, min_std)) for v in scope]
        return kids[0] if len(kids) == 1 else g.add(Product(kids))

    def build(rows: np.ndarray, scope: np.ndarray, try_split: bool) -> int:
        if len(scope) == 1 or len(rows) < min_instances:
            return factorised(rows, scope)
        if try_split:
            comps = _components(_dependency_pvalues(filled[np.ix_(rows, scope)], [cardinality[v] for v in scope]), alpha)
            if len(comps) > 1:
                return g.add(Product([build(rows, scope[c], False) for c in comps]))
        feats = filled[np.ix_(rows, scope)]
        sd = feats.std(0)
        feats = (feats - feats.mean(0)) / np.where(sd > 0, sd, 1)
        label = KMeans(n_clusters=clusters, n_init=3, random_state=int(rng.integers(2**31))).fit_predict(feats)
        groups = [rows[label == c] for c in range(clusters) if (label == c).any()]
        if len(groups) < 2:
            return factorised(rows, scope)
        kids = [build(r, scope, True) for r in groups]
        return g.add(Sum(kids, [len(r) / len(rows) for r in groups]))

    build(np.arange(len(x)), np.arange(len(cardinality)), True)
    g.validate()
    return g


def random_region_graph(cardinality: list[int], *, depth: int = 2, repetitions: int = 4, sums: int = 4,
                        leaves: int = 4, seed: int = 0) -> Graph:
    """A RAT-SPN-style structure with random (Dirichlet) parameters over ``len(cardinality)`` variables."""
    d = len(cardinality)
    if d < 2 or depth < 1 or 2**depth > d or min(repetitions, sums, leaves) < 1:
        raise ConfigError(f"a region graph of depth {depth} needs at least {2**depth} variables and positive sizes")
    rng = np.random.default_rng(seed)
    g = Graph(num_vars=d, cardinality=list(cardinality))

    def leaf(v: int) -> Leaf:
        card = cardinality[v]
        if card == 0:
            return Leaf(v, "gaussian", [float(rng.normal()), 1.0])
        p = rng.dirichlet(np.ones(card))
        return Leaf(v, "bernoulli", [float(p[1])]) if card == 2 else Leaf(v, "categorical", [float(q) for q in p])

    def region(scope: np.ndarray, level: int, width: int) -> list[int]:
        if level == depth:
            return [g.add(Product([g.add(leaf(int(v))) for v in scope])) if len(scope) > 1 else g.add(leaf(int(scope[0])))
                    for _ in range(leaves)]
        half = len(scope) // 2
        left, right = region(scope[:half], level + 1, sums), region(scope[half:], level + 1, sums)
        prods = [g.add(Product([a, b])) for a in left for b in right]
        return [g.add(Sum(prods, [float(w) for w in rng.dirichlet(np.ones(len(prods)))])) for _ in range(width)]

    tops = [t for _ in range(repetitions) for t in region(rng.permutation(d), 0, 1)]
    if len(tops) > 1:
        g.add(Sum(tops, [float(w) for w in rng.dirichlet(np.ones(len(tops)))]))
    g.validate()
    return g


def with_class_variable(per_class: list[Graph], priors: list[float]) -> Graph:
    """One SPN over (class, x): a root sum over ``1[class = k] * SPN_k(x)``, class as variable 0.

    Classification becomes inference (argmax_k p(class = k, x)) and the tensor-train mapping
    gets the class as its first core.
    """
    k = len(per_class)
    if k < 2 or len(priors) != k:
        raise ConfigError("a class variable needs at least two per-class SPNs and one prior each")
    d = per_class[0].num_vars
    g = Graph(num_vars=d + 1, cardinality=[k, *per_class[0].cardinality])
    tops = []
    for c, sub in enumerate(per_class):
        if sub.num_vars != d:
            raise ConfigError("every per-class SPN must be over the same variables")
        base = len(g.nodes)
        for n in sub.nodes:
            if isinstance(n, Leaf):
                g.add(Leaf(n.var + 1, n.kind, list(n.params)))
            elif isinstance(n, Sum):
                g.add(Sum([base + ch for ch in n.children], list(n.weights)))
            else:
                g.add(Product([base + ch for ch in n.children]))
        onehot = [1.0 if j == c else 0.0 for j in range(k)]
        indicator = g.add(Leaf(0, "bernoulli", [onehot[1]]) if k == 2 else Leaf(0, "categorical", onehot))
        tops.append(g.add(Product([indicator, base + sub.root])))
    total = float(sum(priors))
    g.add(Sum(tops, [p / total for p in priors]))
    g.validate()
    return g


__all__ = ["learn_spn", "random_region_graph", "with_class_variable"]
