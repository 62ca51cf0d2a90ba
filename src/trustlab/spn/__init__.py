"""Sum-product networks and their tensor-train form (tSPN).

* :mod:`~trustlab.spn.config`: the fit and compress settings and defaults (torch-free);
* :mod:`~trustlab.spn.structure`: nodes, validity checks, JSON files;
* :mod:`~trustlab.spn.circuit`: batched log-space inference (joint, marginals, MPE,
  sampling) and learning (EM, gradient);
* :mod:`~trustlab.spn.learn_structure`: LearnSPN, random region graphs, class variable;
* :mod:`~trustlab.spn.tensor_train`: exact SPN -> nonnegative tensor train mapping and inference;
* :mod:`~trustlab.spn.compress`: nonnegative rank truncation and fine-tuning;
* :mod:`~trustlab.spn.classify`, :mod:`~trustlab.spn.data`, :mod:`~trustlab.spn.pipeline`
  (run-folder jobs), :mod:`~trustlab.spn.spflow_bridge` (the same SPN in SPFlow).
"""
