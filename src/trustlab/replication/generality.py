"""Scoring and generalizing a captions file: what ``trustlab replication captions`` runs.

Both read the whole file first (every bad line is reported before any work), show a progress
bar, and leave LLM answers in the on-disk cache as they come, so a killed run loses nothing.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from trustlab.progress import progress_bar
from trustlab.replication.captions import generality, generalize, lexicon, read_captions
from trustlab.replication.llm import llm_score
from trustlab.runs import atomic_save_figure


def _summary(name: str, scores: list[float]) -> str:
    return (f"{name}: mean {statistics.fmean(scores):.2f}, median {statistics.median(scores):.2f}, "
            f"min {min(scores):.2f}, max {max(scores):.2f} over {len(scores)} captions")


def score_file(path: str | Path, client=None, *, plot: str | Path | None = None, as_json: bool = False) -> str:
    """Heuristic (and, with ``client``, LLM) generality scores of a captions file, as text or JSON."""

    captions = read_captions(path).captions
    lex = lexicon()
    heuristic = [generality(c, lex) for c in captions]
    scores = {"heuristic": [g.score for g in heuristic]}
    failures: list[str] = []
    if client is not None:
        with progress_bar(False) as bar:
            task = bar.add_task("LLM score", total=len(captions))
            scores["llm"], failures = llm_score(captions, client, lambda c: generality(c, lex).score,
                                                 lambda: bar.update(task, advance=1))
    if plot:
        plot_scores(scores, Path(plot))
    if as_json:
        rows = [{"caption": c, **{k: v[i] for k, v in scores.items()},
                 **{f"{t}": getattr(heuristic[i], t) for t in ("specificity", "broadness", "tense", "abstraction")}}
                for i, c in enumerate(captions)]
        return json.dumps({"captions": rows, "llm_fallbacks": failures}, indent=1, ensure_ascii=False)
    lines = [_summary(k, v) for k, v in scores.items()]
    lines.append("heuristic terms (mean): " + ", ".join(
        f"{t} {statistics.fmean(getattr(g, t) for g in heuristic):.2f}"
        for t in ("specificity", "broadness", "tense", "abstraction")))
    if failures:
        lines.append(f"{len(failures)} LLM scores fell back to the heuristic, e.g. {failures[0]}")
    if plot:
        lines.append(f"plot: {plot}")
    return "\n".join(lines)


def generalize_file(path: str | Path, out: str | Path, method: str = "wordnet", client=None, *,
                    quiet: bool = False) -> str:
    """Write the generalized captions of ``path`` to ``out``; returns a summary with the score change."""

    f = read_captions(path)
    with progress_bar(quiet) as bar:
        task = bar.add_task(f"generalize ({method})", total=len(f.records))
        new, failures = generalize(f.captions, method, client, lambda: bar.update(task, advance=1))
    f.write(Path(out), new)
    lex = lexicon()
    before = statistics.fmean(generality(c, lex).score for c in f.captions)
    after = statistics.fmean(generality(c, lex).score for c in new)
    text = f"{len(new)} captions -> {out}; heuristic generality {before:.2f} -> {after:.2f}"
    if failures:
        text += f"; {len(failures)} fell back to WordNet (first: {failures[0]})"
    return text


def plot_scores(scores: dict[str, list[float]], path: Path) -> None:
    """Histogram of generality scores (one series per scorer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in scores.items():
        ax.hist(values, bins=[i / 2 for i in range(21)], alpha=0.6, label=f"{name} (mean {statistics.fmean(values):.2f})")
    ax.set_xlabel("generality score (0 = specific, 10 = general)")
    ax.set_ylabel("captions")
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


__all__ = ["generalize_file", "plot_scores", "score_file"]
