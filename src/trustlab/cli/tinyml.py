"""``trustlab tinyml``: classify a device, score vectors, browse the catalog, assess threats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from trustlab.cli.apps import new_app
from trustlab.errors import ConfigError

app = new_app()
FORMATS = ("md", "json", "sarif", "html")


def _write(text: str, out: Optional[str]) -> None:
    if out is None:
        print(text, end="")
        return
    from trustlab.runs import atomic_write_text

    atomic_write_text(Path(out), text)
    print(out)


@app.command("classify")
def classify_cmd(profile: str = typer.Argument(..., help="Profile file (YAML/JSON) or a shipped board name."),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """IoT, EdgeML or TinyML, with the criteria that decided it."""
    from trustlab.tinyml import classify, load_profile

    p = load_profile(profile)
    c = classify(p)
    if as_json:
        print(json.dumps({"device": p.name, **c.to_dict()}, indent=2))
        return
    print(f"{p.name}: {c.device_class}")
    for k in c.criteria:
        print(f"  {'*' if k.decisive else ' '} {k.name}: {k.value} -> {k.points_to}")
    for n in c.notes:
        print(f"  note: {n}")
    print("  (* decisive criteria)")


@app.command("score")
def score_cmd(vector: str = typer.Argument(..., help="A CVSS 3.1, 3.0 or 4.0 vector, e.g. CVSS:3.1/AV:P/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H")) -> None:
    """Score a CVSS vector with the `cvss` package."""
    from trustlab.tinyml.scoring import AV_P_NOTE, base_metrics, score_vector

    s = score_vector(vector)
    print(f"{s.score} {s.severity}  ({s.ranked_by} score of {s.vector})")
    if s.version != "4.0":
        print(f"base {s.base}, temporal {s.temporal}, environmental {s.environmental}")
    if s.version == "3.1" and base_metrics(s.vector).get("AV") == "P":
        print(f"note: {AV_P_NOTE}")


@app.command("catalog")
def catalog_cmd(as_json: bool = typer.Option(False, "--json"),
                defenses: bool = typer.Option(False, "--defenses", help="List the defenses instead of the attacks.")) -> None:
    """The attack vectors (with CVSS base scores) or the defenses (with their costs)."""
    from trustlab.tinyml.catalog import attacks, defenses as all_defenses
    from trustlab.tinyml.scoring import score_vector

    if defenses:
        rows = [{"id": d.id, "name": d.name, "ram_kb": d.ram_kb, "flash_kb": d.flash_kb, "cpu": d.cpu, "energy": d.energy,
                 "classes": list(d.classes), "mitigates": d.mitigates} for d in all_defenses()]
    else:
        rows = [{"id": a.id, "name": a.name, "layer": a.layer, "class": a.attack_class,
                 "cvss31": score_vector(a.cvss31["vector"]).to_dict(), "cvss40": score_vector(a.cvss40["vector"]).to_dict(),
                 "atlas": list(a.atlas), "preconditions": list(a.preconditions)} for a in attacks()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    if defenses:
        t = Table(title="defenses")
        for col in ("id", "name", "RAM KB", "flash KB", "CPU", "energy", "classes"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["id"], r["name"], f"{r['ram_kb']:g}", f"{r['flash_kb']:g}", f"+{r['cpu']:.0%}", f"+{r['energy']:.0%}", ", ".join(r["classes"]))
    else:
        t = Table(title="attack vectors (CVSS base scores)")
        for col in ("id", "name", "layer", "3.1", "4.0", "ATLAS"):
            t.add_column(col)
        for r in rows:
            t.add_row(r["id"], r["name"], r["layer"], f"{r['cvss31']['score']} {r['cvss31']['severity']}",
                      f"{r['cvss40']['score']} {r['cvss40']['severity']}", ", ".join(r["atlas"]))
    Console(width=160).print(t)


@app.command("assess")
def assess_cmd(profile: str = typer.Argument(..., help="Profile file (YAML/JSON) or a shipped board name."),
               format: str = typer.Option("md", "--format", help="md | json | sarif | html"),
               out: Optional[str] = typer.Option(None, "--out", help="Write to this file instead of standard output.")) -> None:
    """Threat assessment of a device: applicable attacks, adjusted CVSS scores, defenses within budget."""
    from trustlab.tinyml import assess, load_profile, render

    if format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, not '{format}'")
    _write(render(assess(load_profile(profile)), format), out)


@app.command("profiles")
def profiles_cmd() -> None:
    """The example profiles of real boards shipped with trustlab."""
    from trustlab.tinyml.profile import example_profiles

    for name, path in sorted(example_profiles().items()):
        print(f"{name}\t{path}")
