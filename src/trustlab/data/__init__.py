"""Offline datasets: one registry, ``load_dataset(name, split)``, cached as ``.npz``.

See :mod:`trustlab.data.registry` for the list and :mod:`trustlab.data.readers` for formats.
"""

from trustlab.data.registry import (
    DATASETS,
    ClassificationData,
    Dataset,
    dataset_status,
    fetch_dataset,
    get_spec,
    load_classification,
    load_dataset,
)
from trustlab.data.store import data_root

__all__ = ["DATASETS", "ClassificationData", "load_classification", "Dataset", "data_root", "dataset_status", "fetch_dataset", "get_spec", "load_dataset"]
