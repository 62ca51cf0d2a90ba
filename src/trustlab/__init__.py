"""trustlab: research methods on trustworthy and efficient ML, usable on your own data.

Areas: ``trustlab.pi`` (private inference), ``trustlab.replication`` (replication in
diffusion models), ``trustlab.spn`` (tensor sum-product networks), ``trustlab.tinyml``
(TinyML security). Shared pieces: ``trustlab.data``, ``trustlab.runs`` (run folders and the life of a job),
``trustlab.train`` (the training loop; its settings in the torch-free ``trustlab.train_config``),
``trustlab.report``.
"""

__version__ = "0.1.0"
