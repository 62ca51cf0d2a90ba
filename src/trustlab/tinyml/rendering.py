"""An assessment as JSON, Markdown, SARIF 2.1.0 or HTML.

SARIF: one rule per catalog attack, one result per applicable attack, located at the profile
file; the adjusted CVSS 3.1 score goes in ``properties.security-severity`` (as a string, the
form code-scanning tools read) and the SARIF level follows the severity.
"""

from __future__ import annotations

import html
import json

from trustlab import __version__
from trustlab.report import STYLE
from trustlab.tinyml.assessment import Assessment
from trustlab.tinyml.catalog import OWN_TECHNIQUES, attacks

LEVEL = {"Critical": "error", "High": "error", "Medium": "warning", "Low": "note", "None": "none"}


def to_dict(a: Assessment) -> dict:
    return {
        "device": a.profile.name,
        "profile": a.profile.source,
        "classification": a.classification.to_dict(),
        "total_risk": a.total_risk,
        "residual_risk_after_recommendations": a.residual_risk,
        "notes": a.notes,
        "findings": [{
            "id": f.attack.id, "name": f.attack.name, "class": f.attack.attack_class, "layer": f.attack.layer,
            "cvss31_base": f.base31.to_dict(), "cvss40_base": f.base40.to_dict(),
            "cvss31_adjusted": f.adjusted31.to_dict(), "cvss40_adjusted": f.adjusted40.to_dict(),
            "adjustments": f.adjustments, "atlas": list(f.attack.atlas), "owasp_ml": list(f.attack.owasp_ml),
            "nist_ai_100_2": list(f.attack.nist_ai_100_2), "residual_risk": a.residual.get(f.attack.id),
        } for f in a.findings],
        "ruled_out": [{"id": at.id, "name": at.name, "because_not": why} for at, why in a.ruled_out],
        "recommendations": [{
            "id": r.defense.id, "name": r.defense.name, "risk_reduction": r.risk_reduction, "reduces": r.reduces,
            "ram_kb": r.ram_kb, "flash_kb": r.flash_kb, "cpu_overhead": r.defense.cpu,
            "energy_overhead": r.defense.energy, "why": r.defense.why,
        } for r in a.recommendations],
        "not_fitting": [{"id": d.id, "name": d.name, "reason": why} for d, why in a.not_fitting],
    }


def to_markdown(a: Assessment) -> str:
    c = a.classification
    lines = [f"# Threat assessment: {a.profile.name}", "",
             f"Device class: **{c.device_class}**. Total risk {a.total_risk} (sum of adjusted CVSS 3.1 scores of "
             f"{len(a.findings)} applicable attacks); {a.residual_risk} after the recommended defenses.", "",
             "| criterion | value | points to | decisive |", "|---|---|---|---|"]
    lines += [f"| {k.name} | {k.value} | {k.points_to} | {'yes' if k.decisive else ''} |" for k in c.criteria]
    if a.notes:
        lines += [""] + [f"> {n}" for n in a.notes]
    lines += ["", "## Applicable attacks", "",
              "Attacks are ranked by the adjusted CVSS 3.1 score: the environmental score where the profile sets a "
              "modified metric, else the temporal score where an exploit maturity is set, else the base score "
              "(CVSS 3.1 specification, section 7); the three are listed apart.", "",
              "| id | attack | layer | CVSS 3.1 base | temporal | environmental | adjusted (ranked by) | CVSS 4.0 base | adjusted | ATLAS |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for f in a.findings:
        adj = f.adjusted31
        lines.append(f"| {f.attack.id} | {f.attack.name} | {f.attack.layer} | {f.base31.score} {f.base31.severity} | "
                     f"{adj.temporal} | {adj.environmental} | {adj.score} {adj.severity} ({adj.ranked_by}) | "
                     f"{f.base40.score} {f.base40.severity} | {f.adjusted40.score} {f.adjusted40.severity} ({f.adjusted40.ranked_by}) | "
                     f"{', '.join(f.attack.atlas)} |")
    lines += ["", "Adjustments from the profile:", ""]
    lines += [f"- **{f.attack.id}**: {'; '.join(f.adjustments)}" for f in a.findings]
    lines += ["", "## Recommended defenses (within budget, by risk reduction per cost)", "",
              "| defense | risk reduction | RAM KB | flash KB | CPU | energy | why |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.defense.name} | {r.risk_reduction} | {r.ram_kb:g} | {r.flash_kb:g} | +{r.defense.cpu:.0%} | "
              f"+{r.defense.energy:.0%} | {r.defense.why} |" for r in a.recommendations]
    if a.not_fitting:
        lines += ["", "Not recommended here:", ""] + [f"- {d.name}: {why}" for d, why in a.not_fitting]
    if a.ruled_out:
        lines += ["", "## Not applicable", ""] + [f"- {at.id} {at.name}: not {'; not '.join(why)}" for at, why in a.ruled_out]
    return "\n".join(lines) + "\n"


def to_sarif(a: Assessment) -> dict:
    rules = []
    for at in attacks():
        techniques = [f"{t} ({OWN_TECHNIQUES[t]}, trustlab's own ID)" if t in OWN_TECHNIQUES else t for t in at.atlas]
        rules.append({
            "id": at.id, "name": "".join(w.capitalize() for w in at.name.replace("/", " ").split()),
            "shortDescription": {"text": at.name}, "fullDescription": {"text": at.description},
            "help": {"text": f"References: {'; '.join(at.references)}. ATLAS: {', '.join(techniques)}."},
            "properties": {"tags": ["security", at.layer, at.attack_class], "cvss31": at.cvss31["vector"],
                           "cvss40": at.cvss40["vector"]},
        })
    index = {at.id: i for i, at in enumerate(attacks())}
    results = [{
        "ruleId": f.attack.id, "ruleIndex": index[f.attack.id], "level": LEVEL.get(f.adjusted31.severity, "warning"),
        "message": {"text": f"{f.attack.name}: CVSS 3.1 {f.adjusted31.score} ({f.adjusted31.severity}) on {a.profile.name}; "
                            f"{'; '.join(f.adjustments)}"},
        "locations": [{"physicalLocation": {"artifactLocation": {"uri": a.profile.source}}}],
        "properties": {"security-severity": f"{f.adjusted31.score:.1f}", "cvss31": f.adjusted31.vector,
                       "cvss40": f.adjusted40.vector, "cvss40_score": f.adjusted40.score},
    } for f in a.findings]
    return {
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json", "version": "2.1.0",
        "runs": [{"tool": {"driver": {"name": "trustlab-tinyml", "version": __version__, "rules": rules}},
                  "results": results, "properties": {"deviceClass": a.classification.device_class}}],
    }


def to_html(a: Assessment) -> str:
    md = to_markdown(a)
    body = []
    for line in md.splitlines():
        esc = html.escape(line)
        if line.startswith("# "):
            body.append(f"<h1>{esc[2:]}</h1>")
        elif line.startswith("## "):
            body.append(f"<h2>{esc[3:]}</h2>")
        elif line.startswith("|---"):
            continue
        elif line.startswith("| "):
            cells = [c.strip() for c in line.strip("|").split("|")]
            tag = "th" if body and not body[-1].startswith("<tr") else "td"
            body.append("<tr>" + "".join(f"<{tag}>{html.escape(c)}</{tag}>" for c in cells) + "</tr>")
        elif line.startswith("> "):
            body.append(f"<p><b>Note:</b> {esc[5:]}</p>")
        elif line.startswith("- "):
            body.append(f"<li>{esc[2:]}</li>")
        elif line:
            body.append(f"<p>{esc}</p>")
    out, in_table = [], False
    for b in body:  # wrap consecutive rows in tables
        if b.startswith("<tr") and not in_table:
            out.append("<table>")
            in_table = True
        if not b.startswith("<tr") and in_table:
            out.append("</table>")
            in_table = False
        out.append(b.replace("**", ""))
    if in_table:
        out.append("</table>")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(a.profile.name)}</title>"
            f"<style>{STYLE}</style></head><body>{''.join(out)}</body></html>")


def render(a: Assessment, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(to_dict(a), indent=2) + "\n"
    if fmt == "sarif":
        return json.dumps(to_sarif(a), indent=2) + "\n"
    if fmt == "html":
        return to_html(a)
    return to_markdown(a)
