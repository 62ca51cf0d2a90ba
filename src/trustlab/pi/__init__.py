"""Private inference: fewer ReLUs and shallower networks, and what they cost under secure inference.

* :mod:`~trustlab.pi.config`: every job's settings and defaults (torch-free; the CLI reads them);
  :mod:`~trustlab.pi.methods`: the table of ReLU-reduction methods;
* :mod:`~trustlab.pi.models` / :mod:`~trustlab.pi.training`: ResNet18 / WRN classifiers and the
  all-ReLU teacher run; :mod:`~trustlab.pi.load` rebuilds the model of any PI run folder;
* :mod:`~trustlab.pi.accounting`: ReLUs, MACs and parameters per layer; :mod:`~trustlab.pi.cost`:
  a garbled-circuit cost model of ReLUs;
* :mod:`~trustlab.pi.masks` / :mod:`~trustlab.pi.sensitivity` / :mod:`~trustlab.pi.reductions`:
  partial ReLUs, layer sensitivity, and the reductions (SENet, SNL, layer-drop);
* :mod:`~trustlab.pi.distill`: distillation from the teacher, used by every reduction;
* :mod:`~trustlab.pi.merge` / :mod:`~trustlab.pi.shallow_models`: merging convolutions without a ReLU
  between them, and shallow models that learn to be mergeable;
* :mod:`~trustlab.pi.secure` / :mod:`~trustlab.pi.serve`: two-party secure inference on SPU
  (simulated, and as two real processes); :mod:`~trustlab.pi.probe`: forward-hook helper;
* :mod:`~trustlab.pi.graph`: the traced graph every count, mask, merge and export reads;
  :mod:`~trustlab.pi.factory`: your model from ``FILE.py:FACTORY``;
* :mod:`~trustlab.pi.api`: ``count``, ``reduce``, ``shallow``, ``secure_cost`` and
  ``load_reduced`` on your own model and data, importable from here (``trustlab.pi.reductions(...)``).
"""

_API = ("count", "reduce", "shallow", "secure_cost", "load_reduced")


def __getattr__(name: str):
    """The Python API, imported on first use: the CLI reads this package's torch-free modules at start-up."""
    if name in _API:
        from trustlab.pi import api

        return getattr(api, name)
    raise AttributeError(f"module 'trustlab.pi' has no attribute {name!r}")
