"""Replication testbed protocol: the unmitigated model and each standard mitigation, in one run.

Protocol (fixed here, reused by later methods): ``--n`` emoji with unique captions at
``--size``, the diffusers U-Net of ``--channels`` with MiniLM token states, ``--steps``
training steps of batch ``--batch-size``; ``--samples`` generations for training captions
(DDIM 50 steps, guidance 2, eta 1, seed 0); replication against the training set (pixel, Carlini,
Gu), proxy FID and precision/recall. Training mitigations each train their own model;
inference mitigations sample the unmitigated model. ``gc`` trains on WordNet-generalized
captions, ``df`` with dual fusion, ``gc+df`` with both (the headline ``gcdf_*`` figures). Writes ``bench/results/replication.json``,
``replication.png`` and ``replication_copies.png`` (the copy grid of the unmitigated run).
Resumes: finished runs under ``--runs`` are reused, an interrupted one continues.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from common import RESULTS, write_result

from trustlab.replication.data import CaptionDataConfig
from trustlab.replication.fusion import DualFusion
from trustlab.replication.measure import measure_run
from trustlab.replication.sampling import load_samples, sample_run
from trustlab.replication.training import DiffusionConfig, train_diffusion
from trustlab.runs import RunDir

TRAINING = ("caption-replace", "word-add", "word-repeat", "embedding-noise")
INFERENCE = ("embedding-noise", "word-repeat", "word-add")


def train_and_measure(name: str, cfg: DiffusionConfig, runs: Path, args, inference: str = "") -> dict:
    out = runs / ("none" if inference else name)
    trained_here = not (out / "summary.json").exists()
    if trained_here:
        train_diffusion(cfg, out, resume=(out / "config.yaml").exists(), quiet=args.quiet)
    samples_name = f"bench-{inference or 'plain'}"
    path = out / "samples" / f"{samples_name}.safetensors"
    if not path.exists():
        sample_run(out, n=args.samples, seed=0, mitigations=inference, name=samples_name, quiet=args.quiet,
                   mitigation_sigma=args.inference_sigma)
    m = measure_run(out, samples=path, pixel_threshold=args.pixel_threshold)
    rep, q = m["replication"], m["quality"]
    return {"run": str(out), "training_minutes": RunDir(out).summary()["minutes"], "trained_in_this_run": trained_here,
            "sample_seconds": load_samples(path)[1].get("seconds"),
            "replication_score": rep["pixel"]["score"], "share_above": rep["pixel"]["share"],
            "carlini_share": rep["carlini"]["share"], "gu_share": rep["gu"]["share"],
            "own_prompt_nearest": m["own_prompt_nearest"], "proxy_fid": q["proxy_fid"], "precision": q["precision"],
            "recall": q["recall"], "caption_match": q["caption_match"], "background": m["background"]["pixel"]["score"]}


def plot(methods: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(methods)
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    axes[0].bar(names, [methods[n]["replication_score"] for n in names], color="tab:red")
    axes[0].set_ylabel("replication score (pixel, p95)")
    axes[1].bar(names, [methods[n]["proxy_fid"] for n in names], color="tab:blue")
    axes[1].set_ylabel("proxy FID (lower is better)")
    for ax in axes:
        ax.tick_params(axis="x", rotation=35, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bench-replication")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--channels", default="32,64,64")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--pixel-threshold", type=float, default=0.9)
    ap.add_argument("--inference-sigma", type=float, default=0.1)
    ap.add_argument("--methods", default="none," + ",".join(f"train:{m}" for m in TRAINING) + ","
                    + ",".join(f"infer:{m}" for m in INFERENCE) + ",gc,df,gc+df")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    runs = Path(args.runs)

    def config(mitigation: str = "", generalize: str = "", fusion: bool = False) -> DiffusionConfig:
        return DiffusionConfig(data=CaptionDataConfig(dataset="emoji", n=args.n, size=args.size, generalize=generalize),
                               channels=tuple(int(c) for c in args.channels.split(",")), steps=args.steps,
                               batch_size=args.batch_size, mitigations=mitigation, device=args.device,
                               fusion=DualFusion(image_weight=0.1, text_weight=0.5) if fusion else DualFusion())

    methods = {}
    for spec in args.methods.split(","):
        kind, _, name = spec.partition(":")
        if kind == "none":
            methods["none"] = train_and_measure("none", config(), runs, args)
        elif kind == "train":
            methods[f"train:{name}"] = train_and_measure(f"train-{name}", config(name), runs, args)
        elif kind in ("gc", "df", "gc+df"):
            cfg = config(generalize="wordnet" if "gc" in kind else "", fusion="df" in kind)
            methods[kind] = train_and_measure(kind.replace("+", "-"), cfg, runs, args)
        else:
            methods[f"infer:{name}"] = train_and_measure("none", config(), runs, args, inference=name)
        print(spec, {k: round(v, 4) if isinstance(v, float) else v for k, v in methods[next(reversed(methods))].items()},
              flush=True)
    plot(methods, RESULTS / "replication.png")
    shutil.copyfile(runs / "none" / "plots" / "copies.png", RESULTS / "replication_copies.png")
    none = methods["none"]
    headline = {"none_replication_score": none["replication_score"], "none_share_above": none["share_above"],
                "run_minutes": none["training_minutes"],
                "methods": {k: {"replication_score": v["replication_score"], "share_above": v["share_above"],
                                "proxy_fid": v["proxy_fid"], "training_minutes": v["training_minutes"]}
                            for k, v in methods.items() if k != "none"},
                "minutes": (time.time() - t0) / 60}
    standard = [k for k in methods if k.startswith(("train:", "infer:"))]
    if standard:
        best = min(standard, key=lambda k: methods[k]["replication_score"])
        headline["best_standard_mitigation"] = best
        headline["best_standard_reduction_vs_none"] = 1 - methods[best]["replication_score"] / none["replication_score"]
    if "gc+df" in methods:
        headline["gcdf_reduction_vs_none"] = 1 - methods["gc+df"]["replication_score"] / none["replication_score"]
        headline["gcdf_fid_ratio"] = methods["gc+df"]["proxy_fid"] / none["proxy_fid"]
    if "gc" in methods:
        headline["gc_reduction_vs_none"] = 1 - methods["gc"]["replication_score"] / none["replication_score"]
    settings = {"data": f"emoji, {args.n} images, unique captions, {args.size}x{args.size}", "encoder": "minilm",
                "channels": args.channels, "steps": args.steps, "batch_size": args.batch_size, "lr": 1e-3,
                "samples": args.samples, "sampler": "DDIM 50 steps, guidance 2, eta 1, seed 0",
                "pixel_threshold": args.pixel_threshold, "mitigation_p": 0.1, "mitigation_sigma": 0.1,
                "inference_sigma": args.inference_sigma,
                "gc": "captions generalized offline (WordNet: main subject's head noun, one hypernym up); "
                      "prompts are the captions each model was trained with",
                "df": "dual fusion: image weight 0.1 (Fashion-MNIST auxiliary pool), text weight 0.5 (mix with "
                      "'with <category>')",
                "proxy_fid": "Frechet distance in a trustlab-trained emoji classifier's 128-d features (not Inception)"}
    print(write_result("replication", headline, settings, methods=methods))


if __name__ == "__main__":
    main()
