"""Your own model from a Python file: ``path/to/file.py:factory``.

The command line reaches any model a user can build in Python through a *factory spec*: the
file is imported (it is the user's own code, run as such) and ``factory`` is called, with
``num_classes`` and ``in_channels`` where its signature takes them. Run folders record the
spec with the file's absolute path, so the run's model is rebuilt the same way later.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from pathlib import Path

from trustlab.errors import ConfigError


def is_factory_spec(text: str) -> bool:
    path, sep, name = text.rpartition(":")
    return bool(sep) and path.endswith(".py") and name.isidentifier()


def resolve_spec(text: str) -> str:
    """``file.py:factory`` with the file's absolute path (checked to exist)."""
    if not is_factory_spec(text):
        raise ConfigError(f"--model '{text}' is neither a built-in model nor FILE.py:FACTORY")
    path, _, name = text.rpartition(":")
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--model {text}: {p} is not a file")
    return f"{p.resolve()}:{name}"


def load_factory(spec: str, num_classes: int | None = None, in_channels: int | None = None):
    """The ``nn.Module`` that ``factory`` in ``file.py`` returns (one-line errors for every failure)."""
    import torch.nn as nn

    spec = resolve_spec(spec)
    path, _, name = spec.rpartition(":")
    module_name = f"trustlab_user_{hashlib.sha1(path.encode()).hexdigest()[:10]}"
    if module_name not in sys.modules:
        loader = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(loader)
        try:
            loader.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001 - the user's file failed to import
            first = (str(e).strip().splitlines() or [""])[0][:160]
            raise ConfigError(f"--model {spec}: {path} does not import ({type(e).__name__}: {first})") from None
        sys.modules[module_name] = module
    factory = getattr(sys.modules[module_name], name, None)
    if not callable(factory):
        raise ConfigError(f"--model {spec}: {path} defines no callable '{name}'")
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
              if v is not None and (takes_any or k in params)}
    try:
        model = factory(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        first = (str(e).strip().splitlines() or [""])[0][:160]
        raise ConfigError(f"--model {spec}: {name}({', '.join(f'{k}={v}' for k, v in kwargs.items())}) failed "
                          f"({type(e).__name__}: {first})") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--model {spec}: {name}() returned a {type(model).__name__}, not a torch.nn.Module")
    return model
