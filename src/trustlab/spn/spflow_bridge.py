"""The same SPN as SPFlow modules (PyPI ``spflow``), for cross-checks and speed comparisons.

SPFlow 1.x builds a circuit from ``Sum``, ``Product`` and leaf modules; one module per node
of a :class:`~trustlab.spn.structure.Graph` gives the identical distribution, evaluated by
SPFlow's own recursive ``log_likelihood``.
"""

from __future__ import annotations

import torch

from trustlab.errors import ConfigError
from trustlab.spn.structure import Graph, Leaf, Sum


def to_spflow(graph: Graph, dtype: torch.dtype = torch.float32):
    """An SPFlow module computing the same log-likelihood as ``graph``."""
    try:
        from spflow.meta.data.scope import Scope
        from spflow.modules.leaves import Bernoulli, Categorical, Normal
        from spflow.modules.products import Product as SPProduct
        from spflow.modules.sums import Sum as SPSum
    except ImportError:
        raise ConfigError("SPFlow is not installed: pip install 'trustlab[spn]'") from None
    graph.validate()
    mods = []
    for n in graph.nodes:
        if isinstance(n, Leaf):
            scope = Scope([n.var])
            if n.kind == "bernoulli":
                mods.append(Bernoulli(scope=scope, probs=torch.tensor([[[n.params[0]]]], dtype=dtype)))
            elif n.kind == "categorical":
                probs = torch.tensor(n.params, dtype=dtype).clamp_min(1e-30)
                mods.append(Categorical(scope=scope, K=len(n.params), probs=(probs / probs.sum()).view(1, 1, 1, -1)))
            else:
                mods.append(Normal(scope=scope, loc=torch.tensor([[[n.params[0]]]], dtype=dtype),
                                   scale=torch.tensor([[[n.params[1]]]], dtype=dtype)))
        elif isinstance(n, Sum):
            w = torch.tensor(n.weights, dtype=dtype).view(1, -1, 1, 1)
            mods.append(SPSum([mods[c] for c in n.children], weights=w))
        else:
            mods.append(SPProduct([mods[c] for c in n.children]))
    return mods[-1]


def spflow_log_prob(module, x: torch.Tensor) -> torch.Tensor:
    """log p(x) [B] from an SPFlow module built by :func:`to_spflow`."""
    return module.log_likelihood(x).reshape(len(x))


__all__ = ["spflow_log_prob", "to_spflow"]
