"""Your data as trustlab's :class:`~trustlab.data.ClassificationData`: tensors, a torch
``Dataset`` or ``DataLoader``, or an image folder in the ImageFolder convention.

The training loop works on whole tensors (exact resume needs the data order to be a function
of the seed and step), so a ``Dataset`` or ``DataLoader`` is read once into memory. Images are
float N×C×H×W (uint8 images are scaled to [0, 1]); labels are integers from 0.
"""

from __future__ import annotations

from pathlib import Path

from trustlab.data.readers import fixed_split
from trustlab.data.registry import ClassificationData, load_classification
from trustlab.errors import ConfigError


def _tensors(obj, what: str):
    import torch

    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        x, y = obj
    elif isinstance(obj, torch.utils.data.DataLoader):
        batches = list(obj)
        if not batches:
            raise ConfigError(f"{what}: the DataLoader yields no batches")
        x, y = torch.cat([torch.as_tensor(b[0]) for b in batches]), torch.cat([torch.as_tensor(b[1]) for b in batches])
    elif hasattr(obj, "__getitem__") and hasattr(obj, "__len__"):
        if len(obj) == 0:
            raise ConfigError(f"{what}: the dataset is empty")
        items = [obj[i] for i in range(len(obj))]
        if not all(isinstance(it, (tuple, list)) and len(it) >= 2 for it in items[:1]):
            raise ConfigError(f"{what}: a dataset's items must be (image, label) pairs")
        x, y = torch.stack([torch.as_tensor(it[0]) for it in items]), torch.as_tensor([int(it[1]) for it in items])
    else:
        raise ConfigError(f"{what}: give (images, labels) tensors, a torch Dataset or DataLoader, or an image folder, "
                          f"not {type(obj).__name__}")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.dim() == 3:
        x = x.unsqueeze(1)  # N×H×W grey images
    if x.dim() != 4:
        raise ConfigError(f"{what}: images must be N×C×H×W, not of shape {tuple(x.shape)}")
    if y.dim() != 1 or len(y) != len(x) or y.dtype.is_floating_point:
        raise ConfigError(f"{what}: labels must be {len(x)} integers, one per image (got shape {tuple(y.shape)}, {y.dtype})")
    if int(y.min()) < 0:
        raise ConfigError(f"{what}: labels must be 0, 1, ... (found {int(y.min())})")
    return x.contiguous(), y.long(), getattr(obj, "classes", None)


def classification_data(data, test=None) -> ClassificationData:
    """Train and test data from whatever the user has. Without ``test``, every 5th example of each
    class is held out (as for MNIST); an image folder brings its own split."""
    if isinstance(data, ClassificationData):
        return data
    if isinstance(data, (str, Path)):
        if test is not None:
            raise ConfigError("an image folder brings its own test split (train/ and test/, or every 5th image): drop test=")
        return load_classification("folder", data_dir=data)
    x, y, classes = _tensors(data, "data")
    if test is None:
        tr, te = fixed_split(y.numpy())
        if len(te) == 0:
            raise ConfigError("data: too few examples for a held-out split (every 5th of each class): give test= or more data")
        x, y, xt, yt = x[tr], y[tr], x[te], y[te]
    else:
        xt, yt, _ = _tensors(test, "test")
        if xt.shape[1:] != x.shape[1:]:
            raise ConfigError(f"test images are {tuple(xt.shape[1:])}, training images {tuple(x.shape[1:])}")
    n = int(max(int(y.max()), int(yt.max())) + 1)
    if n < 2:
        raise ConfigError("data: a classifier needs at least two classes")
    names = [str(c) for c in classes] if classes is not None and len(classes) >= n else [str(i) for i in range(n)]
    return ClassificationData(x, y, xt, yt, names)


__all__ = ["classification_data"]
