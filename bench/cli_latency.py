"""Start-up latency of the ``trustlab`` command against the ``cvss`` package's own calculator.

Each command runs ``--repeats`` times as a fresh process (the way a shell runs it), alternating
with the others so that a slow moment of the machine hits all alike; the figure is the median
wall time. Target: ``trustlab --help`` and ``trustlab tinyml score`` under 0.15 s. Writes
``bench/results/cli_latency.json`` and ``.png``.

trustlab's own modules are byte-compiled first, as ``pip install`` does for a wheel: an editable
install in an environment with ``PYTHONDONTWRITEBYTECODE=1`` (this machine's) would otherwise
compile them from source at every start, which no installed copy does.

    python bench/cli_latency.py
"""

from __future__ import annotations

import argparse
import compileall
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import RESULTS, write_result

VECTOR = "CVSS:3.1/AV:P/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"
TARGET_SECONDS = 0.15


def commands() -> dict[str, list[str]]:
    trustlab = shutil.which("trustlab", path=str(Path(sys.executable).parent)) or "trustlab"
    calculator = shutil.which("cvss_calculator", path=str(Path(sys.executable).parent)) or "cvss_calculator"
    return {"trustlab --help": [trustlab, "--help"], "trustlab tinyml score": [trustlab, "tinyml", "score", VECTOR],
            "cvss_calculator (cvss package)": [calculator, "-v", VECTOR], "python -c pass": [sys.executable, "-c", "pass"]}


def timed(argv: list[str]) -> float:
    t = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True)
    elapsed = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {r.stderr.strip()[-300:]}")
    return elapsed


def plot(medians: dict[str, float]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 2.8))
    names = list(medians)
    ax.barh(names, [medians[n] for n in names], color=["C0", "C0", "C2", "C7"][: len(names)])
    ax.axvline(TARGET_SECONDS, color="k", ls="--", lw=1, label=f"target {TARGET_SECONDS} s")
    ax.set_xlabel("median wall time per call (s)")
    ax.invert_yaxis()
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / "cli_latency.png", dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    cmds = commands()
    import trustlab

    package = Path(trustlab.__file__).parent
    if not compileall.compile_dir(package, quiet=1):
        raise SystemExit(f"could not byte-compile {package}")
    for argv in cmds.values():  # warm the file cache: the first start of a process reads its files from disk
        timed(argv)
    times: dict[str, list[float]] = {name: [] for name in cmds}
    for _ in range(args.repeats):
        for name, argv in cmds.items():
            times[name].append(timed(argv))
    medians = {name: statistics.median(t) for name, t in times.items()}
    cvss = medians["cvss_calculator (cvss package)"]
    headline = {"help_seconds": round(medians["trustlab --help"], 4), "score_seconds": round(medians["trustlab tinyml score"], 4),
                "cvss_calculator_seconds": round(cvss, 4), "python_start_seconds": round(medians["python -c pass"], 4),
                "help_vs_cvss": round(medians["trustlab --help"] / cvss, 2),
                "score_vs_cvss": round(medians["trustlab tinyml score"] / cvss, 2),
                "target_seconds": TARGET_SECONDS,
                "target_met": max(medians["trustlab --help"], medians["trustlab tinyml score"]) < TARGET_SECONDS}
    write_result("cli_latency", headline, {"repeats": args.repeats, "vector": VECTOR, "statistic": "median wall time, "
                                           "fresh process per call, commands interleaved",
                                           "bytecode": "trustlab's modules byte-compiled before timing, as pip does for a wheel",
                                           "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE")},
                 seconds={name: [round(t, 4) for t in ts] for name, ts in times.items()})
    plot(medians)
    print(headline)


if __name__ == "__main__":
    main()
