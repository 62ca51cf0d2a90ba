"""TinyML security: device taxonomy, CVSS-scored attack catalog, defenses, threat assessment.

Quick use::

    from trustlab.tinyml import load_profile, assess, render
    print(render(assess(load_profile("esp32-s3")), "md"))
"""

from trustlab.tinyml.assess import assess
from trustlab.tinyml.profile import load_profile
from trustlab.tinyml.render import render
from trustlab.tinyml.taxonomy import classify

__all__ = ["assess", "classify", "load_profile", "render"]
