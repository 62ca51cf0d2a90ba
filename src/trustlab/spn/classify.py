"""SPNs and tSPNs as generative classifiers: the class is a variable of the model.

:func:`~trustlab.spn.learn_structure.with_class_variable` puts the class at variable 0 of one
SPN; the posterior is then ``p(class | x) ∝ p(class, x)``. A tSPN gets every class's joint
from one left and one right sweep; a circuit evaluates the batch once per class.
"""

from __future__ import annotations

import torch

from trustlab.spn.circuit import Circuit
from trustlab.spn.tensor_train import TensorTrain


def class_log_joint(model: Circuit | TensorTrain, x: torch.Tensor, class_var: int = 0) -> torch.Tensor:
    """log p(class = k, x) [B, K] for each row of ``x`` (its class column is ignored)."""
    k = model.cardinality[class_var]
    if isinstance(model, TensorTrain):
        return model.log_joint_over(x, class_var)
    rows = x.repeat_interleave(k, 0).clone()
    rows[:, class_var] = torch.arange(k, dtype=x.dtype).repeat(len(x))
    return model(rows).view(len(x), k)


@torch.no_grad()
def accuracy(model: Circuit | TensorTrain, x, class_var: int = 0, batch_size: int = 1024) -> float:
    """Share of rows whose most probable class is the one in their ``class_var`` column."""
    x = model.check_data(x)
    hits = 0
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size]
        hits += int((class_log_joint(model, xb, class_var).argmax(1) == xb[:, class_var].long()).sum())
    return hits / max(len(x), 1)


__all__ = ["accuracy", "class_log_joint"]
