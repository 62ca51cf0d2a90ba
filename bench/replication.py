"""Replication testbed protocol: the unmitigated model and each standard mitigation, in one run.

Protocol (fixed here, reused by later methods): ``--n`` emoji with unique captions at
``--size``, the diffusers U-Net of ``--channels`` with MiniLM token states, ``--steps``
training steps of batch ``--batch-size``; ``--samples`` generations for training captions
(DDIM 50 steps, guidance 2, eta 1, seed 0); replication against the training set (pixel, Carlini,
Gu), proxy FID and precision/recall. Training mitigations each train their own model;
inference mitigations sample the unmitigated model. ``gc`` trains on WordNet-generalized
captions, ``df`` with dual fusion, ``gc+df`` with both (the headline ``gcdf_*`` figures).

RAU-Net and LoyalDiffusion: the skip ablation of the unmitigated run picks the RAU-Net's skips
(``--rau-skips auto``); ``rau`` trains the RAU-Net for every timestep; the timestep analysis
(unmitigated + ``rau`` routed at several tau) picks tau (``--tau auto``); ``loyal`` trains the
LoyalDiffusion pair, ``loyal+gc+df`` the pair with generalized captions and dual fusion. The time
overhead of the RAU-Net (and of the pair) against the plain U-Net is timed in this process,
interleaved, on the same batches. Writes ``bench/results/replication.json``, ``replication.png``,
``replication_copies.png`` (the copy grid of the unmitigated run), ``replication_skips.png`` and
``replication_taus.png``.
Resumes: finished runs under ``--runs`` are reused, an interrupted one continues.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from common import RESULTS, write_result

from trustlab.replication.data import CaptionDataConfig
from trustlab.replication.fusion import DualFusion
from trustlab.replication.measure import measure_run
from trustlab.replication.rau import parse_skips
from trustlab.replication.rau_analysis import skip_ablation, timestep_analysis
from trustlab.replication.sampling import load_samples, sample_run
from trustlab.replication.training import DiffusionConfig, build_denoiser, make_scheduler, train_diffusion
from trustlab.runs import RunDir

TRAINING = ("caption-replace", "word-add", "word-repeat", "embedding-noise")
INFERENCE = ("embedding-noise", "word-repeat", "word-add")
TEXT_DIM = 384  # MiniLM token states, the width the timed models are built for


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


def reused_or(path: Path, same: dict, compute):
    """The analysis stored at ``path`` when it was made with the same settings, else ``compute()``."""
    if path.exists():
        stored = json.loads(path.read_text())
        if all(stored.get(k) == v for k, v in same.items()):
            return stored
    return compute()


def time_per_step(models: dict, cfg: DiffusionConfig, rounds: int = 10, steps: int = 6) -> dict:
    """Median seconds per training step (batch ``cfg.batch_size``, random timesteps) and per guided sampling
    call (a batch of 64 with its unconditional half, one shared t) of each model. Models take turns within
    each round, in reversed order every other round, after one warm-up round that is not counted."""
    g = torch.Generator().manual_seed(0)
    b, s = cfg.batch_size, cfg.data.size
    states = torch.randn(128, 12, TEXT_DIM, generator=g)
    sched = make_scheduler(cfg)
    times = {name: {"train": [], "sample": []} for name in models}
    optims = {name: torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
              for name, m in models.items()}
    for r in range(rounds + 1):
        for name in (list(models) if r % 2 else list(reversed(models))):
            model, opt = models[name], optims[name]
            t0 = time.perf_counter()
            for _ in range(steps):
                x0, t = torch.randn(b, 3, s, s, generator=g), torch.randint(0, cfg.timesteps, (b,), generator=g)
                noise = torch.randn(x0.shape, generator=g)
                loss = (model(sched.add_noise(x0, noise, t), t, encoder_hidden_states=states[:b]).sample - noise).pow(2).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            train = (time.perf_counter() - t0) / steps
            with torch.no_grad():
                t0 = time.perf_counter()
                for t in torch.linspace(cfg.timesteps - 1, 0, steps).long():
                    model(torch.randn(128, 3, s, s, generator=g), t, encoder_hidden_states=states)
                sample = (time.perf_counter() - t0) / steps
            if r:
                times[name]["train"].append(train)
                times[name]["sample"].append(sample)
    return {name: {"parameters": sum(p.numel() for p in models[name].parameters()),
                   **{k: statistics.median(v) for k, v in d.items()}} for name, d in times.items()}


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
                    + ",".join(f"infer:{m}" for m in INFERENCE) + ",gc,df,gc+df,rau,loyal,loyal+gc+df")
    ap.add_argument("--rau-skips", default="auto", help="RAU-Net skips, or auto: the skip ablation's recommendation")
    ap.add_argument("--itb", default="conv")
    ap.add_argument("--tau", default="auto", help="LoyalDiffusion tau, or auto: the timestep analysis' choice")
    ap.add_argument("--taus", default="0,200,400,500,600,800,1000")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    t0 = time.time()
    runs = Path(args.runs)

    def config(mitigation: str = "", generalize: str = "", fusion: bool = False, skips: tuple[int, ...] = (),
               tau: int = 0) -> DiffusionConfig:
        return DiffusionConfig(data=CaptionDataConfig(dataset="emoji", n=args.n, size=args.size, generalize=generalize),
                               channels=tuple(int(c) for c in args.channels.split(",")), steps=args.steps,
                               batch_size=args.batch_size, mitigations=mitigation, device=args.device,
                               fusion=DualFusion(image_weight=0.1, text_weight=0.5) if fusion else DualFusion(),
                               rau_skips=skips, itb=args.itb if skips else "conv", tau=tau)

    analyses: dict = {}

    def rau_skips() -> tuple[int, ...]:
        if args.rau_skips != "auto":
            return parse_skips(args.rau_skips)
        if "skips" not in analyses:
            if "none" not in methods:
                methods["none"] = train_and_measure("none", config(), runs, args)
            analyses["skips"] = reused_or(runs / "none" / "skip-ablation.json", {"n": args.samples, "seed": 0},
                                          lambda: skip_ablation(runs / "none", n=args.samples, quiet=args.quiet))
        return tuple(analyses["skips"]["recommended_skips"])

    def itb_tag() -> str:
        return args.itb.replace(",", "+").replace(":", "")

    def rau_name(skips) -> str:
        return f"rau-{itb_tag()}-s{''.join(map(str, skips))}"

    def loyal_tau() -> int:
        if args.tau != "auto":
            return int(args.tau)
        if "taus" not in analyses:
            skips = rau_skips()
            if "rau" not in methods:
                methods["rau"] = train_and_measure(rau_name(skips), config(skips=skips), runs, args)
            taus = sorted({int(v) for v in args.taus.split(",")})
            analyses["taus"] = reused_or(runs / rau_name(skips) / "timestep-analysis.json",
                                         {"n": args.samples, "seed": 0, "plain_run": str(runs / "none"), "taus": taus},
                                         lambda: timestep_analysis(runs / "none", runs / rau_name(skips), taus=tuple(taus),
                                                                   n=args.samples, quiet=args.quiet))
        return int(analyses["taus"]["chosen_tau"])

    methods = {}
    for spec in args.methods.split(","):
        kind, _, name = spec.partition(":")
        if kind == "none":
            methods["none"] = train_and_measure("none", config(), runs, args)
        elif kind == "train":
            methods[f"train:{name}"] = train_and_measure(f"train-{name}", config(name), runs, args)
        elif kind == "rau":
            if "rau" not in methods:
                methods["rau"] = train_and_measure(rau_name(rau_skips()), config(skips=rau_skips()), runs, args)
        elif kind in ("loyal", "loyal+gc+df"):
            skips, tau = rau_skips(), loyal_tau()
            gcdf = kind != "loyal"
            name = f"loyal{'-gc-df' if gcdf else ''}-{itb_tag()}-s{''.join(map(str, skips))}-t{tau}"
            methods[kind] = train_and_measure(name, config(generalize="wordnet" if gcdf else "", fusion=gcdf,
                                                           skips=skips, tau=tau), runs, args)
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
                            for k, v in methods.items() if k != "none"}}
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
    for key in ("rau", "loyal", "loyal+gc+df"):
        if key not in methods:
            continue
        stem = key.replace("+", "_")
        headline[f"{stem}_reduction_vs_none"] = 1 - methods[key]["replication_score"] / none["replication_score"]
        headline[f"{stem}_fid_ratio"] = methods[key]["proxy_fid"] / none["proxy_fid"]
        if standard:
            headline[f"{stem}_reduction_vs_best_baseline"] = (1 - methods[key]["replication_score"]
                                                              / methods[headline["best_standard_mitigation"]]["replication_score"])
    timing = {}
    if "rau" in methods or "loyal" in methods:
        skips = rau_skips()
        models = {}
        for name, cfg in (("unet", config()), ("rau-net", config(skips=skips)),
                          ("loyal", config(skips=skips, tau=loyal_tau() if "loyal" in methods else 500))):
            torch.manual_seed(0)
            models[name] = build_denoiser(cfg, TEXT_DIM).train()
        timing = time_per_step(models, config())
        for name in ("rau-net", "loyal"):
            for phase in ("train", "sample"):
                timing[name][f"{phase}_overhead"] = timing[name][phase] / timing["unet"][phase] - 1
        headline["rau_train_overhead"] = timing["rau-net"]["train_overhead"]
        headline["rau_sample_overhead"] = timing["rau-net"]["sample_overhead"]
        headline["rau_time_overhead"] = max(headline["rau_train_overhead"], headline["rau_sample_overhead"])
        headline["rau_parameter_overhead"] = timing["rau-net"]["parameters"] / timing["unet"]["parameters"] - 1
    if "skips" in analyses:
        headline["rau_skips"] = analyses["skips"]["recommended_skips"]
        shutil.copyfile(runs / "none" / "plots" / "skip-ablation.png", RESULTS / "replication_skips.png")
    if "taus" in analyses:
        headline["loyal_tau"] = analyses["taus"]["chosen_tau"]
        shutil.copyfile(Path(analyses["taus"]["rau_run"]) / "plots" / "timestep-analysis.png",
                        RESULTS / "replication_taus.png")
    settings = {"data": f"emoji, {args.n} images, unique captions, {args.size}x{args.size}", "encoder": "minilm",
                "channels": args.channels, "steps": args.steps, "batch_size": args.batch_size, "lr": 1e-3,
                "samples": args.samples, "sampler": "DDIM 50 steps, guidance 2, eta 1, seed 0",
                "pixel_threshold": args.pixel_threshold, "mitigation_p": 0.1, "mitigation_sigma": 0.1,
                "inference_sigma": args.inference_sigma,
                "gc": "captions generalized offline (WordNet: main subject's head noun, one hypernym up); "
                      "prompts are the captions each model was trained with",
                "df": "dual fusion: image weight 0.1 (Fashion-MNIST auxiliary pool), text weight 0.5 (mix with "
                      "'with <category>')",
                "proxy_fid": "Frechet distance in a trustlab-trained emoji classifier's 128-d features (not Inception)",
                "rau": f"RAU-Net, {args.itb} ITBs (trained) on skips {args.rau_skips}, every timestep",
                "loyal": "plain U-Net for t < tau, RAU-Net for t >= tau, trained jointly with per-sample routing",
                "timing": "median of 10 interleaved rounds (order reversed every other round, one warm-up round) of 6 "
                          "training steps (batch --batch-size) and 6 sampling calls (batch 64 with the unconditional "
                          "half) per model, random inputs and text states"}
    headline["minutes"] = (time.time() - t0) / 60
    print(write_result("replication", headline, settings, methods=methods, timing=timing,
                       skip_ablation=analyses.get("skips"), timestep_analysis=analyses.get("taus")))


if __name__ == "__main__":
    main()
