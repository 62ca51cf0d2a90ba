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
TEMPORAL31 = {"E", "RL", "RC"}
ENVIRONMENTAL31 = {"CR", "IR", "AR", "MAV", "MAC", "MPR", "MUI", "MS", "MC", "MI", "MA"}
THREAT40 = {"E"}
ENVIRONMENTAL40 = {"CR", "IR", "AR", "MAV", "MAC", "MAT", "MPR", "MUI", "MVC", "MVI", "MVA", "MSC", "MSI", "MSA"}


@dataclass(frozen=True)
class Score:
    """A scored vector. ``score``/``severity`` are the figures a report ranks by (``ranked_by``).

    CVSS 3.1 defines three scores (specification section 7): base, temporal (base times the
    exploit maturity, remediation level and report confidence) and environmental (recomputed
    with the modified metrics). The one that applies is the most specific group with a defined
    value: a metric set to ``X`` ("not defined") does not count, so ``.../RL:X`` keeps the base
    score. For CVSS 4.0 the one score already includes whatever groups the vector has.
    """

    version: str  # "3.0" | "3.1" | "4.0"
    vector: str
    score: float
    severity: str
    ranked_by: str = "base"  # 3.1: base | temporal | environmental; 4.0: CVSS-B | CVSS-BT | CVSS-BE | CVSS-BTE
    base: float | None = None
    temporal: float | None = None
    environmental: float | None = None

    def to_dict(self) -> dict:
        out = {"version": self.version, "vector": self.vector, "score": self.score, "severity": self.severity,
               "ranked_by": self.ranked_by}
        if self.version != "4.0":
            out.update(base=self.base, temporal=self.temporal, environmental=self.environmental)
        return out


def parse_version(vector: str) -> str:
    head = vector.split("/", 1)[0]
    if head in ("CVSS:3.0", "CVSS:3.1", "CVSS:4.0"):  # 3.0: the same metrics, scored by the cvss package's 3.0 rounding
        return head[len("CVSS:"):]
    raise ConfigError(f"invalid CVSS vector '{vector}': it must start with CVSS:3.1/, CVSS:3.0/ or CVSS:4.0/")


def score_vector(vector: str) -> Score:
    """Score a CVSS 3.1, 3.0 or 4.0 vector, including whatever metric groups it has.

    A malformed vector raises ``ConfigError`` naming the metric, from the ``cvss`` package's
    own message.
    """
    from cvss import CVSS3, CVSS4
    from cvss.exceptions import CVSSError

    version = parse_version(vector.strip())
    try:
        if version in ("3.0", "3.1"):
            c = CVSS3(vector.strip())
            defined = {k for k, v in base_metrics(vector.strip()).items() if v != "X"}
            i = 2 if defined & ENVIRONMENTAL31 else 1 if defined & TEMPORAL31 else 0
            scores = [float(x) for x in c.scores()]
            return Score(version, c.clean_vector(), scores[i], c.severities()[i],
                         ("base", "temporal", "environmental")[i], *scores)
        c4 = CVSS4(vector.strip())
        defined = {k for k, v in base_metrics(vector.strip()).items() if v != "X"}
        name = "CVSS-B" + ("T" if defined & THREAT40 else "") + ("E" if defined & ENVIRONMENTAL40 else "")
        return Score(version, c4.clean_vector(), float(c4.base_score), str(c4.severity), name)
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
