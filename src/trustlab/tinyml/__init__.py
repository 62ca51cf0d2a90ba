"""TinyML security: device taxonomy, CVSS-scored attack catalog, defenses, threat assessment.

Quick use::

    from trustlab.tinyml import load_profile, assess, render
    print(render(assess(load_profile("esp32-s3")), "md"))

The four names load their modules (:mod:`~trustlab.tinyml.assessment`,
:mod:`~trustlab.tinyml.rendering`, :mod:`~trustlab.tinyml.profile`,
:mod:`~trustlab.tinyml.taxonomy`) on first use, so ``trustlab tinyml score`` reads the scoring
module alone, not the catalog, the profiles and the report renderer.
"""

from importlib import import_module

_HOMES = {"assess": "assessment", "classify": "taxonomy", "load_profile": "profile", "render": "rendering"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(import_module(f"trustlab.tinyml.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'trustlab.tinyml' has no attribute {name!r}")


__all__ = ["assess", "classify", "load_profile", "render"]
