"""The attack and defense catalogs: YAML data shipped in the package, checked on load.

Attack entry fields: ``id, name, class, layer (hardware|software|model), description,
preconditions`` (profile conditions that must all hold, see :data:`profile.CONDITIONS`),
``tags``, ``exploit_maturity`` (CVSS E: H/F/P/U for 3.1 — H, P, U for 4.0 map likewise),
``cvss31`` and ``cvss40`` (``vector`` plus a ``rationale`` for every base metric),
``atlas`` (MITRE ATLAS technique IDs; ``TLX-*`` are trustlab's own IDs for what ATLAS lacks),
``owasp_ml``, ``nist_ai_100_2`` and ``references``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import yaml

from trustlab.errors import ConfigError
from trustlab.tinyml.profile import CONDITIONS
from trustlab.tinyml.scoring import base_metrics

# MITRE ATLAS has no technique for hardware side channels or fault injection on the device.
OWN_TECHNIQUES = {
    "TLX-0001": "Power side-channel analysis of on-device inference",
    "TLX-0002": "Electromagnetic side-channel analysis of on-device inference",
    "TLX-0003": "Timing side-channel analysis of inference",
    "TLX-0004": "Fault injection during inference (glitch, EM, laser)",
    "TLX-0005": "Flash readout through debug interface",
    "TLX-0006": "Readout-protection bypass",
    "TLX-0007": "Targeted weight bit flips",
}
BASE_31 = ("AV", "AC", "PR", "UI", "S", "C", "I", "A")
BASE_40 = ("AV", "AC", "AT", "PR", "UI", "VC", "VI", "VA", "SC", "SI", "SA")
LAYERS = ("hardware", "software", "model")


@dataclass(frozen=True)
class Attack:
    id: str
    name: str
    attack_class: str
    layer: str
    description: str
    preconditions: tuple[str, ...]
    tags: tuple[str, ...]
    exploit_maturity: str
    cvss31: dict
    cvss40: dict
    atlas: tuple[str, ...]
    owasp_ml: tuple[str, ...]
    nist_ai_100_2: tuple[str, ...]
    references: tuple[str, ...]


@dataclass(frozen=True)
class Defense:
    id: str
    name: str
    mitigates: dict
    ram_kb: float
    flash_kb: float
    cpu: float
    energy: float
    classes: tuple[str, ...]
    why: str
    requires: tuple[str, ...] = ()
    ram_kb_from_model: bool = False
    references: tuple[str, ...] = ()


def _check_attack(e: dict, where: str) -> Attack:
    need = ("id", "name", "class", "layer", "description", "preconditions", "cvss31", "cvss40", "atlas", "owasp_ml",
            "nist_ai_100_2", "references", "exploit_maturity")
    missing = [k for k in need if k not in e]
    if missing:
        raise ConfigError(f"{where}: entry {e.get('id', '?')} lacks {', '.join(missing)}")
    for key in ("atlas", "owasp_ml", "nist_ai_100_2", "references", "preconditions"):
        if not all(isinstance(v, str) for v in e[key]):
            raise ConfigError(f"{where}: {e['id']}.{key} must be a list of strings (quote items that contain ': ')")
    if e["layer"] not in LAYERS:
        raise ConfigError(f"{where}: {e['id']}.layer must be one of {', '.join(LAYERS)}")
    for c in e["preconditions"]:
        if c not in CONDITIONS:
            raise ConfigError(f"{where}: {e['id']} has unknown precondition '{c}'")
    for key, base, prefix in (("cvss31", BASE_31, "CVSS:3.1/"), ("cvss40", BASE_40, "CVSS:4.0/")):
        if not isinstance(e[key], dict) or not str(e[key].get("vector", "")).startswith(prefix):
            raise ConfigError(f"{where}: {e['id']}.{key} must be a mapping whose vector starts with {prefix}")
        metrics = base_metrics(e[key]["vector"])
        undocumented = [m for m in base if m not in e[key].get("rationale", {})]
        if set(base) - set(metrics) or undocumented:
            raise ConfigError(f"{where}: {e['id']}.{key} needs every base metric with a rationale (missing {', '.join(undocumented) or 'metrics'})")
    return Attack(e["id"], e["name"], e["class"], e["layer"], " ".join(str(e["description"]).split()),
                  tuple(e["preconditions"]), tuple(e.get("tags", ())), e["exploit_maturity"], e["cvss31"], e["cvss40"],
                  tuple(e["atlas"]), tuple(e["owasp_ml"]), tuple(e["nist_ai_100_2"]), tuple(e["references"]))


@lru_cache(maxsize=1)
def attacks() -> tuple[Attack, ...]:
    out = []
    folder = resources.files("trustlab.tinyml").joinpath("catalog")
    for layer in LAYERS:
        path = folder.joinpath(f"{layer}.yaml")
        for e in yaml.safe_load(path.read_text()):
            out.append(_check_attack(e, f"catalog/{layer}.yaml"))
    ids = [a.id for a in out]
    if len(set(ids)) != len(ids):
        raise ConfigError("attack catalog has duplicate ids")
    return tuple(out)


@lru_cache(maxsize=1)
def defenses() -> tuple[Defense, ...]:
    docs = yaml.safe_load(resources.files("trustlab.tinyml").joinpath("defenses.yaml").read_text())
    known = {a.id for a in attacks()}
    out = []
    for d in docs:
        unknown = set(d["mitigates"]) - known
        if unknown:
            raise ConfigError(f"defenses.yaml: {d['id']} mitigates unknown attacks {', '.join(sorted(unknown))}")
        out.append(Defense(d["id"], d["name"], dict(d["mitigates"]), float(d["ram_kb"]), float(d["flash_kb"]),
                           float(d["cpu"]), float(d["energy"]), tuple(d["classes"]), d["why"],
                           tuple(d.get("requires", ())), bool(d.get("ram_kb_from_model", False)),
                           tuple(d.get("references", ()))))
    return tuple(out)


def attack(attack_id: str) -> Attack:
    for a in attacks():
        if a.id == attack_id:
            return a
    raise ConfigError(f"unknown attack id '{attack_id}'")
