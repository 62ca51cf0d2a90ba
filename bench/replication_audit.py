"""How long an audit of two folders takes, and whether it finds planted copies (``replication audit``).

The training folder holds 50,000 Fashion-MNIST training images and the generated folder 10,000
images: 9,500 Fashion-MNIST test images (look-alikes of the training set, never copies) and 500
planted copies of training images, each resized to 80x80 and saved as JPEG (quality 90), as a
generator's output would be. Every image is a 64x64 RGB PNG on disk (the copies 80x80 JPEG),
written once into ``--runs`` and reused. The audit compares at its default 32x32 and is timed from
nothing (no cache): decoding, the duplicate groups, the calibration, the background, the search and
the registration of the aligned copy metric (the default). Writes
``bench/results/replication_audit.json`` and ``.png``; a finished audit is reused unless
``--again`` or the copy metric's version changed.

    python bench/replication_audit.py          # about 10 minutes on 2 CPU cores, half of it writing the folders
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np
from common import RESULTS, write_result

from trustlab.data import load_dataset
from trustlab.replication.audit import audit
from trustlab.replication.config import DUPLICATE_LEVEL, AuditConfig
from trustlab.replication.metrics import metric_version
from trustlab.runs import RunDir, finished


def write_folder(folder: Path, images: np.ndarray, names: list[str], side: int, quality: int | None = None) -> None:
    """Grey uint8 images as RGB files of ``side`` pixels (PNG, or JPEG at ``quality``); existing files are kept."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images, names):
        path = folder / name
        if path.exists():
            continue
        im = Image.fromarray(img).convert("RGB").resize((side, side), Image.BICUBIC)
        tmp = path.with_name(f".{name}")
        im.save(tmp, format="JPEG" if quality else "PNG", **({"quality": quality} if quality else {}))
        tmp.replace(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bench-replication-audit")
    ap.add_argument("--train", type=int, default=50000)
    ap.add_argument("--generated", type=int, default=10000)
    ap.add_argument("--copies", type=int, default=500)
    ap.add_argument("--again", action="store_true", help="audit again from nothing")
    args = ap.parse_args()
    runs = Path(args.runs)
    t0 = time.time()
    train = load_dataset("fashion-mnist", "train").images[: args.train, 0].numpy()
    test = load_dataset("fashion-mnist", "test").images[: args.generated - args.copies, 0].numpy()
    planted = np.random.default_rng(0).choice(len(train), size=args.copies, replace=False)
    write_folder(runs / "train", train, [f"{i:05d}.png" for i in range(len(train))], 64)
    write_folder(runs / "generated", test, [f"test-{i:05d}.png" for i in range(len(test))], 64)
    write_folder(runs / "generated", train[planted], [f"copy-of-{i:05d}.jpg" for i in planted], 80, quality=90)
    written = time.time() - t0
    out = runs / "audit"
    stale = finished(out) and RunDir(out).summary().get("copy_metric_version") != metric_version("aligned")
    if (args.again or stale) and out.exists():  # an audit by an older copy metric is timed and measured again
        shutil.rmtree(out)
    cfg = AuditConfig(generated=str(runs / "generated"), train=str(runs / "train"))
    if not finished(out):
        audit(cfg, out, resume=(out / "config.yaml").exists())
    s = RunDir(out).summary()
    rows = [line.split(",") for line in (out / "nearest.csv").read_text().splitlines()[1:]]
    planted_rows = [r for r in rows if Path(r[0]).name.startswith("copy-of-")]
    found = sum(r[-1] == "1" and Path(r[1]).stem == Path(r[0]).stem[len("copy-of-"):] for r in planted_rows)
    false = sum(r[-1] == "1" for r in rows if not Path(r[0]).name.startswith("copy-of-"))
    # a flagged test image within the duplicate level (pixel similarity) of a training image is a near-duplicate of it
    near_duplicates = sum(r[-1] == "1" and float(r[3]) >= DUPLICATE_LEVEL for r in rows if not Path(r[0]).name.startswith("copy-of-"))
    headline = {"minutes": round(s["seconds"] / 60, 2), "target_minutes": 10, "generations": s["generations"],
                "train_images": s["train_images"], "copy_rate": s["copy_rate"], "copies_flagged": s["copies"],
                "copy_metric": s["copy_metric"], "copy_metric_version": s.get("copy_metric_version"),
                "duplicate_groups": s["duplicates"]["groups"],
                "images_in_duplicate_groups": s["duplicates"]["images_in_groups"],
                "planted_copies": args.copies, "copy_threshold": s["copy_threshold"],
                "planted_found": found, "recall": found / len(planted_rows),
                "test_images_flagged": false, "false_copy_rate": false / (len(rows) - len(planted_rows)),
                "test_images_flagged_within_duplicate_level": near_duplicates,
                "false_copy_rate_beyond_duplicate_level": (false - near_duplicates) / (len(rows) - len(planted_rows))}
    settings = {"train": f"{len(train):,} Fashion-MNIST training images, 64x64 RGB PNG",
                "generated": f"{len(test):,} Fashion-MNIST test images (64x64 PNG) + {args.copies} training images "
                             "resized to 80x80 and saved as JPEG quality 90",
                "audit": {k: v for k, v in cfg.__dict__.items() if k not in ("generated", "train")},
                "timed": "the audit from nothing: decoding both folders, calibration, background, search, report",
                "folders_written_seconds": round(written, 1)}
    write_result("replication_audit", headline, settings, summary=s)
    plot(rows, s["copy_threshold"], s["copy_metric"])
    print(headline)


def plot(rows: list[list[str]], threshold: float, metric: str) -> None:
    """Nearest-training-image similarity (by the copy metric) of the test images and of the planted copies, and the threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    planted = [float(r[2]) for r in rows if Path(r[0]).name.startswith("copy-of-")]
    test = [float(r[2]) for r in rows if not Path(r[0]).name.startswith("copy-of-")]
    bins = np.linspace(min(test + planted), 1, 60)
    ax.hist(test, bins=bins, alpha=0.7, label=f"Fashion-MNIST test images ({len(test):,})")
    ax.hist(planted, bins=bins, alpha=0.7, label=f"planted copies ({len(planted):,})")
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"calibrated copy threshold {threshold:.3f}")
    ax.set_yscale("log")
    ax.set_xlabel(f"{metric} similarity to the nearest of 50,000 training images")
    ax.set_ylabel("generations")
    ax.legend(fontsize=8)
    ax.set_title("replication audit: two folders, 10,000 against 50,000", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / "replication_audit.png", dpi=110)


if __name__ == "__main__":
    main()
