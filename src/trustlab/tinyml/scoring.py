"""CVSS scoring through the ``cvss`` package (RedHat), pinned; no formula is re-implemented.

Each catalog vector is scored as given (the base score). The assessment adds metrics that the
device profile decides (environmental ``M*`` metrics) and the exploit maturity (threat/temporal
``E``), and reports that score beside the base score.

Note for readers of the scores: in CVSS 3.1 an attack that needs physical access (``AV:P``)
scores at most 6.8 (Medium) with scope unchanged, and at most 7.6 with a scope change, even
when it reads every secret of the device. Physical access is the core TinyML concern, so the
reports say so next to those scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustlab.errors import ConfigError

AV_P_NOTE = ("CVSS 3.1 caps physical-access attacks (AV:P) at 6.8 (Medium) with scope unchanged: "
             "a Medium here can still mean full readout of a device an attacker can hold.")


BASE31 = {"AV", "AC", "PR", "UI", "S", "C", "I", "A"}


@dataclass(frozen=True)
class Score:
    version: str  # "3.1" | "4.0"
    vector: str
    score: float
    severity: str

    def to_dict(self) -> dict:
        return {"version": self.version, "vector": self.vector, "score": self.score, "severity": self.severity}


def parse_version(vector: str) -> str:
    head = vector.split("/", 1)[0]
    if head == "CVSS:3.1":
        return "3.1"
    if head == "CVSS:4.0":
        return "4.0"
    raise ConfigError(f"invalid CVSS vector '{vector}': it must start with CVSS:3.1/ or CVSS:4.0/")


def score_vector(vector: str) -> Score:
    """Score a CVSS 3.1 or 4.0 vector; the score includes whatever metric groups it has.

    A malformed vector raises ``ConfigError`` naming the metric, from the ``cvss`` package's
    own message.
    """
    from cvss import CVSS3, CVSS4
    from cvss.exceptions import CVSSError

    version = parse_version(vector.strip())
    try:
        if version == "3.1":
            c = CVSS3(vector.strip())
            # with temporal/environmental metrics the environmental score is the one that applies
            # (3.1's environmental formula differs from the base one even without them)
            i = 2 if set(base_metrics(vector)) - BASE31 else 0
            return Score(version, c.clean_vector(), float(c.scores()[i]), c.severities()[i])
        c4 = CVSS4(vector.strip())
        return Score(version, c4.clean_vector(), float(c4.base_score), str(c4.severity))
    except CVSSError as e:
        raise ConfigError(f"invalid CVSS {version} vector: {e}") from None


def base_metrics(vector: str) -> dict[str, str]:
    """Metric -> value of a vector's parts (after the version prefix)."""
    parts = vector.split("/")[1:]
    out = {}
    for p in parts:
        if ":" not in p:
            raise ConfigError(f"invalid CVSS vector '{vector}': part '{p}' is not METRIC:VALUE")
        k, v = p.split(":", 1)
        out[k] = v
    return out


def with_metrics(vector: str, extra: dict[str, str]) -> str:
    """The vector with ``extra`` metrics appended (replacing any already present)."""
    head, metrics = vector.split("/", 1)[0], base_metrics(vector)
    metrics.update(extra)
    return head + "/" + "/".join(f"{k}:{v}" for k, v in metrics.items())
