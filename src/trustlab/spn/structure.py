"""SPN structure: nodes, validity checks and the JSON file format.

A :class:`Graph` is a list of nodes in which every child comes before its parent (so
node ``i`` only points at nodes ``< i``) and the last node is the root. It is the one
exchange format of the area: structure learners produce it, :class:`~trustlab.spn.circuit.Circuit`
compiles it for batched inference and learning, the tensor-train mapping reads it, and JSON
files hold it. Plain Python, so it is easy to build by hand in tests.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from trustlab.errors import ConfigError
from trustlab.runs import atomic_write_text

LEAF_KINDS = ("bernoulli", "categorical", "gaussian")


@dataclass
class Leaf:
    """A univariate distribution over variable ``var``.

    ``params``: Bernoulli ``[p]`` (probability of 1); categorical ``[p_0, ..., p_{K-1}]``;
    Gaussian ``[mean, std]``.
    """

    var: int
    kind: str
    params: list[float]


@dataclass
class Sum:
    """A weighted mixture of children over the same scope (weights sum to one)."""

    children: list[int]
    weights: list[float]


@dataclass
class Product:
    """A factorisation: children over pairwise disjoint scopes."""

    children: list[int]


Node = Leaf | Sum | Product


@dataclass
class Graph:
    """An SPN over ``num_vars`` variables; ``cardinality[v]`` is 0 for a continuous one."""

    nodes: list[Node] = field(default_factory=list)
    num_vars: int = 0
    cardinality: list[int] = field(default_factory=list)

    @property
    def root(self) -> int:
        return len(self.nodes) - 1

    def add(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def scopes(self) -> list[frozenset[int]]:
        out: list[frozenset[int]] = []
        for node in self.nodes:
            out.append(frozenset([node.var]) if isinstance(node, Leaf)
                       else frozenset().union(*(out[c] for c in node.children)))
        return out

    def num_parameters(self) -> int:
        """Free parameters: sum weights and leaf parameters (K-1 per categorical leaf)."""
        n = 0
        for node in self.nodes:
            if isinstance(node, Sum):
                n += len(node.weights)
            elif isinstance(node, Leaf):
                n += {"bernoulli": 1, "gaussian": 2}.get(node.kind, len(node.params) - 1)
        return n

    def counts(self) -> dict[str, int]:
        kinds = [type(n).__name__.lower() for n in self.nodes]
        edges = sum(len(n.children) for n in self.nodes if not isinstance(n, Leaf))
        return {"nodes": len(self.nodes), "sums": kinds.count("sum"), "products": kinds.count("product"),
                "leaves": kinds.count("leaf"), "edges": edges, "parameters": self.num_parameters()}

    # -- validity ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first node that breaks validity.

        Checks: children exist and come first, sum weights are positive and sum to one,
        leaf parameters are distributions of the declared kind over a declared variable,
        sums are complete (children share one scope), products are decomposable
        (children's scopes are disjoint), and the root covers every variable.
        """
        if not self.nodes:
            raise ConfigError("the SPN has no nodes")
        if len(self.cardinality) != self.num_vars:
            raise ConfigError(f"cardinality lists {len(self.cardinality)} variables, num_vars is {self.num_vars}")
        scopes: list[frozenset[int]] = []
        for i, node in enumerate(self.nodes):
            if isinstance(node, Leaf):
                self._check_leaf(i, node)
                scopes.append(frozenset([node.var]))
                continue
            if not node.children:
                raise ConfigError(f"node {i} ({type(node).__name__.lower()}) has no children")
            bad = [c for c in node.children if not 0 <= c < i]
            if bad:
                raise ConfigError(f"node {i} points at node {bad[0]}, which does not come before it")
            child_scopes = [scopes[c] for c in node.children]
            if isinstance(node, Sum):
                self._check_weights(i, node)
                for c, s in zip(node.children, child_scopes):
                    if s != child_scopes[0]:
                        raise ConfigError(f"sum node {i} is not complete: child {c} has scope {sorted(s)}, "
                                          f"child {node.children[0]} has {sorted(child_scopes[0])}")
            else:
                seen: dict[int, int] = {}
                for c, s in zip(node.children, child_scopes):
                    for v in s:
                        if v in seen:
                            raise ConfigError(f"product node {i} is not decomposable: children {seen[v]} and {c} "
                                              f"both contain variable {v}")
                        seen[v] = c
            scopes.append(frozenset().union(*child_scopes))
        missing = set(range(self.num_vars)) - scopes[-1]
        if missing:
            raise ConfigError(f"the root (node {self.root}) does not cover variables {sorted(missing)[:10]}")

    def _check_leaf(self, i: int, leaf: Leaf) -> None:
        if leaf.kind not in LEAF_KINDS:
            raise ConfigError(f"leaf {i} has unknown kind '{leaf.kind}': use one of {', '.join(LEAF_KINDS)}")
        if not 0 <= leaf.var < self.num_vars:
            raise ConfigError(f"leaf {i} is over variable {leaf.var}, outside 0..{self.num_vars - 1}")
        card, p = self.cardinality[leaf.var], leaf.params
        if not all(math.isfinite(v) for v in p):
            raise ConfigError(f"leaf {i} has non-finite parameters {p}")
        if leaf.kind == "gaussian":
            if card != 0 or len(p) != 2 or p[1] <= 0:
                raise ConfigError(f"leaf {i}: a Gaussian leaf needs a continuous variable and [mean, std>0]")
            return
        want = 2 if leaf.kind == "bernoulli" else card
        if card != want or (leaf.kind == "bernoulli" and len(p) != 1) or (leaf.kind == "categorical" and len(p) != card):
            raise ConfigError(f"leaf {i}: a {leaf.kind} leaf over variable {leaf.var} (cardinality {card}) "
                              f"has {len(p)} parameters")
        probs = [1 - p[0], p[0]] if leaf.kind == "bernoulli" else p
        if min(probs) < 0 or abs(sum(probs) - 1) > 1e-6:
            raise ConfigError(f"leaf {i}: parameters {p} are not a probability distribution")

    @staticmethod
    def _check_weights(i: int, node: Sum) -> None:
        if len(node.weights) != len(node.children):
            raise ConfigError(f"sum node {i} has {len(node.children)} children but {len(node.weights)} weights")
        if min(node.weights) <= 0 or abs(sum(node.weights) - 1) > 1e-6:
            raise ConfigError(f"sum node {i}: weights must be positive and sum to one (sum {sum(node.weights):.6g})")

    # -- files ------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def enc(n: Node) -> dict:
            if isinstance(n, Leaf):
                return {"type": "leaf", "var": n.var, "kind": n.kind, "params": n.params}
            if isinstance(n, Sum):
                return {"type": "sum", "children": n.children, "weights": n.weights}
            return {"type": "product", "children": n.children}

        return {"format": "trustlab-spn/1", "num_vars": self.num_vars, "cardinality": self.cardinality,
                "nodes": [enc(n) for n in self.nodes]}

    @classmethod
    def from_dict(cls, d: dict, source: str = "structure") -> "Graph":
        if not isinstance(d, dict) or d.get("format") != "trustlab-spn/1":
            raise ConfigError(f"{source} is not a trustlab SPN file (expected \"format\": \"trustlab-spn/1\")")
        nodes: list[Node] = []
        try:
            for i, n in enumerate(d["nodes"]):
                t = n.get("type")
                if t == "leaf":
                    nodes.append(Leaf(int(n["var"]), str(n["kind"]), [float(v) for v in n["params"]]))
                elif t == "sum":
                    nodes.append(Sum([int(c) for c in n["children"]], [float(w) for w in n["weights"]]))
                elif t == "product":
                    nodes.append(Product([int(c) for c in n["children"]]))
                else:
                    raise ConfigError(f"{source}: node {i} has unknown type {t!r} (leaf, sum or product)")
            g = cls(nodes, int(d["num_vars"]), [int(c) for c in d["cardinality"]])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ConfigError(f"{source} is malformed ({type(e).__name__}: {e}): write it with `trustlab spn fit`") from None
        g.validate()
        return g

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> "Graph":
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"SPN structure file {path} does not exist")
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path} is not JSON ({e}): give a structure written by `trustlab spn fit`") from None
        return cls.from_dict(d, str(path))


__all__ = ["Graph", "LEAF_KINDS", "Leaf", "Node", "Product", "Sum"]
