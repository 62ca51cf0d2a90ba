"""Threat assessment of a device profile: applicable attacks, adjusted scores, defenses to buy.

1. An attack applies when all its preconditions hold on the profile; the others are listed with
   the condition that ruled them out.
2. Each applicable attack keeps its catalog base scores (CVSS 3.1 and 4.0) and gets an adjusted
   score with metrics the profile decides (see :func:`profile_metrics`) plus its exploit
   maturity. The adjusted 3.1 score is the risk figure used for ranking.
3. Defenses that fit the device class and the profile's budget are chosen greedily by marginal
   risk reduction per unit of cost, where several defenses on one attack combine as
   ``1 - Π(1 - effectiveness)`` and cost is the sum of RAM, flash, CPU and energy overheads,
   each as a fraction of what the budget allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trustlab.tinyml.catalog import Attack, Defense, attacks, defenses
from trustlab.tinyml.profile import CONDITIONS, DeviceProfile, holds
from trustlab.tinyml.scoring import AV_P_NOTE, Score, base_metrics, score_vector, with_metrics
from trustlab.tinyml.taxonomy import Classification, classify

MATURITY_31 = {"H": "H", "F": "F", "P": "P", "U": "U"}
MATURITY_40 = {"H": "A", "F": "A", "P": "P", "U": "U"}


@dataclass
class Finding:
    attack: Attack
    base31: Score
    base40: Score
    adjusted31: Score
    adjusted40: Score
    adjustments: list[str]

    @property
    def risk(self) -> float:
        return self.adjusted31.score


@dataclass
class Recommendation:
    defense: Defense
    ram_kb: float
    flash_kb: float
    risk_reduction: float  # marginal, when it was chosen
    reduces: dict[str, float]


@dataclass
class Assessment:
    profile: DeviceProfile
    classification: Classification
    findings: list[Finding]
    ruled_out: list[tuple[Attack, list[str]]]
    recommendations: list[Recommendation]
    not_fitting: list[tuple[Defense, str]]
    residual: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def total_risk(self) -> float:
        return round(sum(f.risk for f in self.findings), 2)

    @property
    def residual_risk(self) -> float:
        return round(sum(self.residual.values()), 2)


def profile_metrics(profile: DeviceProfile, attack: Attack) -> tuple[dict, dict, list[str]]:
    """Environmental and threat metrics for ``attack`` on this device, and why each applies."""
    m31 = {"E": MATURITY_31[attack.exploit_maturity]}
    m40 = {"E": MATURITY_40[attack.exploit_maturity]}
    why = [f"exploit maturity {attack.exploit_maturity} (E:{m31['E']} in 3.1, E:{m40['E']} in 4.0)"]
    av31 = base_metrics(attack.cvss31["vector"])["AV"]
    exposure = profile.get("physical_exposure")
    remote_inputs = "sensor_input" in attack.tags and holds(profile, "network_queries")
    if remote_inputs:
        m31["MAV"] = m40["MAV"] = "N"
        why.append("inputs can be sent over the network, not only through the sensor (MAV:N)")
    elif av31 == "P" and exposure in ("restricted", "secured"):
        level = "L" if exposure == "restricted" else "H"
        m31["MPR"] = m40["MPR"] = level
        why.append(f"physical exposure '{exposure}': reaching the device needs {'authorised' if level == 'L' else 'privileged'} access (MPR:{level})")
    if "query" in attack.tags and profile.get("model.query_interface") == "local" and av31 == "N":
        m31["MAV"] = m40["MAV"] = "L"
        why.append("the query interface is local only (MAV:L)")
    if "score_leak" in attack.tags and profile.get("model.returns") == "label":
        m31["MAC"] = "H"
        m40["MAT"] = "P"
        why.append("only labels are returned: label-only attacks need far more queries (MAC:H, MAT:P)")
    if "weights_at_rest" in attack.tags and profile.get("model.weights_encrypted"):
        m31["MC"] = m40["MVC"] = "L"
        why.append("weights are encrypted at rest: a dump yields firmware but not the model (MC:L, MVC:L)")
    return m31, m40, why


def _finding(profile: DeviceProfile, attack: Attack) -> Finding:
    m31, m40, why = profile_metrics(profile, attack)
    return Finding(attack, score_vector(attack.cvss31["vector"]), score_vector(attack.cvss40["vector"]),
                   score_vector(with_metrics(attack.cvss31["vector"], m31)),
                   score_vector(with_metrics(attack.cvss40["vector"], m40)), why)


def _budget(profile: DeviceProfile) -> dict[str, float]:
    return {"ram_kb": profile.get("budget.ram_kb", profile.free_ram_kb()),
            "flash_kb": profile.get("budget.flash_kb", profile.free_flash_kb()),
            "cpu": profile.get("budget.cpu_overhead", 0.5), "energy": profile.get("budget.energy_overhead", 0.5)}


def _cost(defense: Defense, profile: DeviceProfile) -> dict[str, float]:
    ram = defense.ram_kb + (profile.get("model.flash_kb", 0) if defense.ram_kb_from_model else 0)
    return {"ram_kb": ram, "flash_kb": defense.flash_kb, "cpu": defense.cpu, "energy": defense.energy}


def _fits(cost: dict, left: dict) -> str | None:
    over = [k for k in cost if cost[k] > left[k] + 1e-9]
    return None if not over else ", ".join(f"{k} {cost[k]:g} > {left[k]:g} left" for k in over)


def assess(profile: DeviceProfile) -> Assessment:
    cls = classify(profile)
    findings, ruled_out = [], []
    for a in attacks():
        missing = [c for c in a.preconditions if not holds(profile, c)]
        if missing:
            ruled_out.append((a, [CONDITIONS[c][0] for c in missing]))
        else:
            findings.append(_finding(profile, a))
    findings.sort(key=lambda f: (-f.risk, f.attack.id))
    residual = {f.attack.id: f.risk for f in findings}

    candidates, not_fitting = [], []
    budget = _budget(profile)
    for d in defenses():
        unmet = [c for c in d.requires if not holds(profile, c)]
        if cls.device_class not in d.classes:
            not_fitting.append((d, f"not practical on {cls.device_class} devices"))
        elif unmet:
            not_fitting.append((d, "needs: " + "; ".join(CONDITIONS[c][0] for c in unmet)))
        elif not any(a in residual for a in d.mitigates):
            continue
        elif (why := _fits(_cost(d, profile), budget)) is not None:
            not_fitting.append((d, f"over budget: {why}"))
        else:
            candidates.append(d)

    chosen: list[Recommendation] = []
    left = dict(budget)
    while candidates:
        def gain(d: Defense) -> dict[str, float]:
            return {a: residual[a] * e for a, e in d.mitigates.items() if a in residual}

        def value(d: Defense) -> float:
            c = _cost(d, profile)
            norm = sum(c[k] / budget[k] if budget[k] > 0 else (0 if c[k] == 0 else float("inf")) for k in c)
            return sum(gain(d).values()) / (norm + 0.05)

        fitting = [d for d in candidates if _fits(_cost(d, profile), left) is None]
        if not fitting:
            not_fitting += [(d, "budget used by the defenses above") for d in candidates]
            break
        best = max(fitting, key=lambda d: (value(d), d.id))
        g = gain(best)
        if sum(g.values()) < 0.05:
            break
        c = _cost(best, profile)
        chosen.append(Recommendation(best, c["ram_kb"], c["flash_kb"], round(sum(g.values()), 2), {k: round(v, 2) for k, v in g.items()}))
        for a, v in g.items():
            residual[a] -= v
        for k in left:
            left[k] -= c[k]
        candidates.remove(best)
    notes = []
    if any(base_metrics(f.attack.cvss31["vector"])["AV"] == "P" for f in findings):
        notes.append(AV_P_NOTE)
    notes += list(cls.notes)
    return Assessment(profile, cls, findings, ruled_out, chosen, not_fitting,
                      {k: round(v, 2) for k, v in residual.items()}, notes)
