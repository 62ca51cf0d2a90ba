"""Replication protocol: partial copying, copy rates, and every mitigation at matched quality.

Protocol (CPU, chosen from the calibration curve, see docs/benchmarks/replication.md): ``--n`` distinct emoji
(skin-tone variations and near-duplicates dropped, unique captions) at ``--size``, a
``--duplicate-share`` of them repeated ``--duplicate-times`` more times with their captions
(``dup_both``); the diffusers U-Net of ``--channels`` with MiniLM token states, ``--steps``
steps of batch ``--batch-size``. Each evaluation samples ``--samples`` generations for
training captions (DDIM 50, guidance 2, eta 1) and measures them with the aligned copy metric
(crops, shifts, rotations, mirroring and grey undone): the *copy rate* is the share of generations
whose nearest training image lies above the calibrated threshold (99th percentile of distinct
training images' nearest-other similarity, one per near-duplicate group),
split by prompts of duplicated and of unique images; proxy FID measures quality.

Stages, in order (each resumes from what the run folders under ``--runs`` already hold):

1. ``calibration``: the unmitigated model (training seed 0) trained in segments of
   ``--calibrate-every`` steps, measured after each until prompts of unique images copy more than
   ``--unique-bound``: copy rate of duplicated and unique prompts against steps
   (``replication_calibration.png``), from which ``--steps`` is chosen; then the protocol's
   unmitigated run.
2. ``gcdf``: generalized captions (WordNet), dual fusion at two strengths, and both; models
   trained on generalized captions are evaluated with their training captions and with the
   original ones (the GC&DF authors' convention).
3. ``loyal``: the skip ablation of the unmitigated model picks RAU-Net skips, a RAU-Net is
   trained, the plain U-Net and the RAU-Net are routed at several tau (sampling only), and the
   LoyalDiffusion pair is trained at the tau with the largest reduction within the quality bound.
4. ``standard``: the training mitigations (each its own model) and the inference mitigations
   (on the unmitigated model), Wen et al.'s and Jain et al.'s among them.
5. ``memorization``: detection from the model alone (each detector's ROC AUC for prompts of
   duplicated against unique images, per training seed, and against the measured copy label),
   every inference mitigation gated by the magnitude detector at ``GATE_FPR`` on emoji captions
   the model was not trained on, and the new mitigations at other settings.
6. ``seeds``: a second training seed and a second sampling seed for the unmitigated model, the
   best standard mitigation, GC&DF, LoyalDiffusion and the best memorization-signal mitigation at
   their chosen settings.
7. ``timing``: the RAU-Net's and the pair's time per training step and per sampling call against
   the plain U-Net, interleaved in this process.
8. ``controls``: the unmitigated model trained on ``dup_image`` duplication (a positive control:
   duplicated images must be copied under other captions too) and the LoyalDiffusion pair
   trained for twice the steps (is its FID cost under-training?).

A method's *chosen* setting is the one with the largest copy-rate reduction whose proxy FID
stays within ``--fid-tolerance`` of the unmitigated model's (``replication_pareto.png`` shows
every point). The result file is rewritten after every stage; ``complete`` says whether all ran.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from common import RESULTS, mean_sd, write_result

from trustlab.data import load_dataset
from trustlab.replication.config import DUAL_FUSION, CaptionDataConfig, DiffusionConfig, DualFusion
from trustlab.replication.data import load_captioned
from trustlab.replication.measure import measure_run
from trustlab.replication.memorization import roc
from trustlab.replication.metrics import metric_version
from trustlab.replication.mitigations import INFERENCE, TRAIN
from trustlab.replication.rau import TimestepRouter
from trustlab.replication.rau_analysis import skip_ablation
from trustlab.replication.sampling import generate, load_samples, sample_run, save_samples
from trustlab.replication.skips import parse_skips
from trustlab.replication.training import build_denoiser, load_trained, make_scheduler, train_diffusion
from trustlab.runs import RunDir, finished

STAGES = ("calibration", "gcdf", "loyal", "standard", "memorization", "seeds", "timing", "controls")
NEW = ("wen-filter", "wen-optimize", "opposite-guidance")  # the mitigations that act on the memorization signal
GATE_FPR = 0.05  # gated mitigations act on prompts above the 95th percentile of non-training prompts' magnitude
TEXT_DIM = 384  # MiniLM token states, the width the timed models are built for
_W = (DUAL_FUSION.image_weight, DUAL_FUSION.text_weight)  # the GC&DF weights, (0.1, 0.5)
GCDF_VARIANTS = {  # name: (generalize, image weight, text weight)
    "gc": ("wordnet", 0.0, 0.0), "df": ("", *_W), "gc+df-weak": ("wordnet", _W[0] / 2, _W[1] / 2), "gc+df": ("wordnet", *_W)}
COPY_KEYS = ("copy_rate", "copy_rate_dup", "copy_rate_unique", "own_prompt_copy_rate")


class Bench:
    """The protocol's settings, run folders and measurements (every measurement is cached on disk)."""

    def __init__(self, args):
        self.args = args
        self.runs = Path(args.runs)
        self.points: dict[str, dict] = {}  # method -> evaluation of training seed 0, sampling seed 0
        self.analyses: dict = {}

    def keep_earlier(self, path: Path, settings: dict) -> list[str]:
        """The stages an earlier invocation with the same settings finished; their figures are kept,
        so running some stages never drops the others' from the result file."""
        if not path.exists():
            return []
        earlier = json.loads(path.read_text())
        if earlier.get("settings") != json.loads(json.dumps(settings)):
            return []
        self.points.update(earlier.get("points", {}))
        self.analyses.update({k: v for k, v in earlier.items() if k not in ("headline", "settings", "machine", "date", "points")})
        return [s for s in STAGES if s in earlier["headline"].get("stages_done", [])]

    def config(self, *, seed: int = 0, mitigation: str = "", generalize: str = "", image_weight: float = 0.0,
               text_weight: float = 0.0, skips: tuple[int, ...] = (), tau: int = 0, steps: int | None = None,
               scheme: str = "dup_both") -> DiffusionConfig:
        a = self.args
        data = CaptionDataConfig(dataset="emoji", n=a.n, size=a.size, duplicate_share=a.duplicate_share,
                                 duplicate_times=a.duplicate_times, duplicate_scheme=scheme, generalize=generalize, seed=0)
        return DiffusionConfig(data=data, channels=tuple(int(c) for c in a.channels.split(",")), steps=steps or a.steps,
                               batch_size=a.batch_size, mitigations=mitigation, device=a.device, seed=seed,
                               fusion=DualFusion(image_weight=image_weight, text_weight=text_weight),
                               rau_skips=skips, itb=a.itb if skips else "conv", tau=tau,
                               checkpoint_every=a.calibrate_every)

    def train(self, name: str, cfg: DiffusionConfig, max_steps: int | None = None) -> Path:
        out = self.runs / name
        if not finished(out):
            train_diffusion(cfg, out, resume=(out / "config.yaml").exists(), quiet=self.args.quiet, max_steps=max_steps)
        return out

    def measured(self, run: Path, samples: Path, make) -> dict:
        """The measurement of ``samples`` in ``run`` (sampled by ``make(path)`` and measured unless stored)."""
        stored = run / f"measure-{samples.stem}.json"
        m = json.loads(stored.read_text()) if stored.exists() and samples.exists() else {}
        copies = m.get("copies") or {}
        if (m.get("compared_with") != "distinct training images" or copies.get("copy_metric") != "aligned"
                or copies.get("copy_metric_version") != metric_version("aligned")):
            # measured by an earlier version of trustlab or of the copy metric (or with the pixel one): measure again
            if not samples.exists():
                make(samples)
            m = measure_run(run, samples=samples, flip=True, device=self.args.device)
        rep, q, c = m["replication"], m["quality"], m["copies"]
        return {**{k: c[k] for k in COPY_KEYS}, "copy_threshold": c["threshold"],
                "replication_score": rep["pixel"]["score"], "share_above_0.9": rep["pixel"]["share"],
                "carlini_share": rep["carlini"]["share"], "gu_share": rep["gu"]["share"],
                "proxy_fid": q["proxy_fid"], "precision": q["precision"], "recall": q["recall"],
                "background_p95": m["background"]["pixel"]["score"], "training_minutes": m["training_minutes"]}

    def evaluate(self, run: Path, seed: int = 0, inference: str = "", prompts: str = "training", gated: bool = False,
                 **settings) -> dict:
        """Samples of ``run`` (with ``inference`` mitigations at ``settings``, gated on the reference prompts) measured."""
        tag = "".join(f"-{k}{v:g}" for k, v in sorted(settings.items())) + ("-gated" if gated else "")
        name = f"bench-{inference or 'plain'}{tag}{'-original' if prompts == 'original' else ''}-seed{seed}"
        gate = {"gate_fpr": GATE_FPR, "gate_reference": str(self.reference_prompts())} if gated else {}
        return self.measured(run, run / "samples" / f"{name}.safetensors", lambda path: sample_run(
            run, n=self.args.samples, seed=seed, mitigations=inference, name=path.stem, quiet=self.args.quiet,
            device=self.args.device, prompts=prompts, **{f"mitigation_{k}": v for k, v in settings.items()}, **gate))

    def reference_prompts(self) -> Path:
        """Emoji captions the models were not trained on (no skin-tone variants of trained ones): the gates' reference."""
        path = self.runs / "reference-prompts.txt"
        if not path.exists():
            trained = set(load_captioned(self.config().data).captions)
            pool = sorted({c for c in load_dataset("emoji", "all").captions if c not in trained and "skin tone" not in c})
            pick = np.random.default_rng(0).choice(len(pool), size=min(self.args.samples, len(pool)), replace=False)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("\n".join(pool[i] for i in sorted(pick)) + "\n")
        return path

    # -- stages --------------------------------------------------------------------------------
    def calibration(self) -> None:
        """The unmitigated model measured every ``--calibrate-every`` steps until unique prompts copy more than
        ``--unique-bound`` (or ``--calibrate-steps``), then the protocol's unmitigated run of ``--steps``."""
        a, curve = self.args, []
        for step in range(a.calibrate_every, a.calibrate_steps + 1, a.calibrate_every):
            run = self.train("calibration-s0", self.config(steps=a.calibrate_steps), max_steps=step)

            def make(path: Path, run=run, step=step) -> None:
                at = RunDir(run).load_checkpoint()[1]["step"]
                if at != step:
                    raise SystemExit(f"{run} is at step {at}, its samples of step {step} are gone: delete {run} to "
                                     "calibrate again")
                sample_run(run, n=a.samples, seed=0, name=path.stem, quiet=a.quiet, device=a.device)

            point = self.measured(run, run / "samples" / f"calibration-step{step}.safetensors", make)
            curve.append({"step": step, **point})
            print(f"calibration step {step}: copy rate dup {point['copy_rate_dup']:.3f}, unique "
                  f"{point['copy_rate_unique']:.3f}, proxy FID {point['proxy_fid']:.2f}", flush=True)
            if point["copy_rate_unique"] > a.unique_bound:
                break
        self.analyses["calibration"] = curve
        plot_calibration(curve, a.steps, a.unique_bound, RESULTS / "replication_calibration.png")
        self.none()

    def none(self) -> None:
        """The protocol's unmitigated run (training seed 0), the point every method is compared with."""
        self.points["none"] = self.evaluate(self.train("none-s0", self.config()))
        self.report("none")

    def gcdf(self) -> None:
        for name, (gen, iw, tw) in GCDF_VARIANTS.items():
            run = self.train(name.replace("+", "-") + "-s0", self.config(generalize=gen, image_weight=iw, text_weight=tw))
            self.points[name] = self.evaluate(run)
            if gen:
                self.points[name]["original_prompts"] = self.evaluate(run, prompts="original")
            self.report(name)

    def loyal(self) -> None:
        a = self.args
        none = self.runs / "none-s0"
        if a.rau_skips == "auto":
            stored = none / "skip-ablation.json"
            ablation = json.loads(stored.read_text()) if stored.exists() else skip_ablation(
                none, n=a.samples // 2, quiet=a.quiet, device=a.device)
            self.analyses["skips"] = ablation
            skips = tuple(ablation["recommended_skips"])
        else:
            skips = parse_skips(a.rau_skips)
        rau = self.train(f"rau-{self.skips_tag(skips)}-s0", self.config(skips=skips))
        self.points["rau"] = self.evaluate(rau)
        self.report("rau")
        sweep = []
        for tau in sorted({int(v) for v in a.taus.split(",")}):
            sweep.append({"tau": tau, **self.routed(none, rau, tau)})
            self.points[f"route-t{tau}"] = sweep[-1]
            self.report(f"route-t{tau}")
        self.analyses["taus"] = sweep
        tau = int(a.tau) if a.tau != "auto" else choose(sweep, self.points["none"], a.fid_tolerance)["tau"]
        self.analyses["loyal"] = {"skips": list(skips), "tau": tau}
        self.points["loyal"] = self.evaluate(self.train(self.run_name("loyal", 0), self.config(skips=skips, tau=tau)))
        self.report("loyal")

    def routed(self, plain: Path, rau: Path, tau: int) -> dict:
        """The plain U-Net below ``tau`` and the separately trained RAU-Net above it (sampling only)."""
        def make(path: Path) -> None:
            low, cfg, encoder, _ = load_trained(plain)
            high = load_trained(rau)[0]
            images, meta = generate(TimestepRouter(low, high, tau), cfg, encoder, n=self.args.samples, seed=0,
                                    quiet=self.args.quiet, device=self.args.device)
            save_samples(path, images, {**meta, "router_tau": tau})

        return self.measured(rau, rau / "samples" / f"bench-route-t{tau}-seed0.safetensors", make)

    def standard(self) -> None:
        for m in TRAIN:
            self.points[f"train:{m}"] = self.evaluate(self.train(f"train-{m}-s0", self.config(mitigation=m)))
            self.report(f"train:{m}")
        for m in INFERENCE:
            self.points[f"infer:{m}"] = self.evaluate(self.runs / "none-s0", inference=m)
            self.report(f"infer:{m}")

    def memorization(self) -> None:
        """Memorized prompts from the model alone, and the mitigations that act on them.

        Detection: each detector's ROC for the distinct training captions (memorized: the image was
        duplicated) of the unmitigated model of every training seed, and for the prompts of seed 0's
        generations against whether the generation was measured a copy. Mitigation: every inference
        mitigation gated at ``GATE_FPR`` on the reference prompts, and the two new ones at other settings.
        """
        from trustlab.replication.config import DetectConfig
        from trustlab.replication.detect import detect

        out = {}
        for seed in self.args.train_seeds:
            run = self.train(self.run_name("none", seed), self.config(seed=seed))
            folder = run / "detect"
            if not finished(folder):
                detect(DetectConfig(run=str(run), device=self.args.device), folder, resume=(folder / "config.yaml").exists(),
                       quiet=self.args.quiet)
            out[f"train_seed{seed}"] = RunDir(folder).summary()["roc"]
        out["against_copies"] = self.detection_against_copies(self.runs / "none-s0")
        for d in out["against_copies"]:
            out[f"{d}_auc_mean"] = statistics.mean(out[f"train_seed{s}"][d]["auc"] for s in self.args.train_seeds)
        self.analyses["detection"] = out
        print("detection: " + ", ".join(f"{d} AUC {out[d + '_auc_mean']:.3f}" for d in out["against_copies"]), flush=True)
        none = self.runs / "none-s0"
        for m in INFERENCE:
            self.points[f"gated:{m}"] = self.evaluate(none, inference=m, gated=True)
            self.report(f"gated:{m}")
        for name in ("infer:wen-optimize@lr0.02", "infer:opposite-guidance@delay0.04", "infer:opposite-guidance@delay0.2",
                     "gated:wen-optimize@lr0.1", "gated:opposite-guidance@delay0.2"):
            m, gated, settings = sampling_of(name)
            self.points[name] = self.evaluate(none, inference=m, gated=gated, **settings)
            self.report(name)

    def detection_against_copies(self, run: Path) -> dict:
        """ROC of each detector's score of a generation's prompt against whether that generation was measured a copy."""
        measured = json.loads((run / "measure-bench-plain-seed0.json").read_text())
        samples = load_samples(run / "samples" / "bench-plain-seed0.safetensors")[1]
        with open(run / "detect" / "scores.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        detectors = [k for k in rows[0] if k not in ("prompt", "memorized")]
        score = {r["prompt"]: r for r in rows}
        copied = np.array(measured["copies"]["copied"], dtype=bool)
        return {d: {k: v for k, v in roc(np.array([float(score[p][d]) for p in samples["prompts"]]), copied).items()
                    if k in ("auc", "tpr_at_1pct_fpr", "positives", "negatives")} for d in detectors}

    def chosen(self) -> dict[str, str]:
        """Per family, the point with the largest copy-rate reduction within the quality bound."""
        families = {"standard": [k for k in self.points if k.startswith(("train:", "infer:"))
                                 and k.split(":", 1)[1].split("@")[0] not in NEW],
                    "memorization": [k for k in self.points if k.startswith("gated:")
                                     or k.split(":", 1)[-1].split("@")[0] in NEW],
                    "gcdf": [k for k in self.points if k in GCDF_VARIANTS],
                    "loyal": [k for k in self.points if k == "loyal"]}
        none, tol = self.points["none"], self.args.fid_tolerance
        return {fam: choose([{"name": k, **self.points[k]} for k in keys], none, tol)["name"]
                for fam, keys in families.items() if keys}

    def seeds(self) -> None:
        """Training seeds x sampling seeds for the unmitigated model and each family's chosen setting."""
        out = {}
        for label, name in [("none", "none"), *self.chosen().items()]:
            rows = []
            for train_seed in self.args.train_seeds:
                run = self.runs / self.run_name(name, train_seed)
                self.train(run.name, self.method_config(name, train_seed))
                for sample_seed in self.args.sample_seeds:
                    inference, gated, settings = sampling_of(name)
                    rows.append({"train_seed": train_seed, "sample_seed": sample_seed,
                                 **self.evaluate(run, sample_seed, inference=inference, gated=gated, **settings)})
            out[label] = {"method": name, "runs": rows, **spread(rows)}
            print(f"seeds {label} ({name}): copy rate {out[label]['copy_rate']['mean']:.3f} "
                  f"± {out[label]['copy_rate']['sd']:.3f}", flush=True)
        self.analyses["seeds"] = out

    def run_name(self, method: str, seed: int) -> str:
        if method == "none" or method.startswith(("infer:", "gated:")):
            return f"none-s{seed}"
        if method.startswith("train:"):
            return f"train-{method[6:]}-s{seed}"
        if method == "loyal":
            la = self.analyses["loyal"]
            return f"loyal-{self.skips_tag(la['skips'])}-t{la['tau']}-s{seed}"
        return f"{method.replace('+', '-')}-s{seed}"

    def skips_tag(self, skips) -> str:
        """The ITB kinds and skips of a RAU-Net in a run folder's name, e.g. ``conv-s25``."""
        return f"{self.args.itb.replace(',', '+').replace(':', '')}-s{''.join(map(str, skips))}"

    def method_config(self, method: str, seed: int) -> DiffusionConfig:
        if method == "none" or method.startswith(("infer:", "gated:")):
            return self.config(seed=seed)
        if method.startswith("train:"):
            return self.config(seed=seed, mitigation=method[6:])
        if method == "loyal":
            la = self.analyses["loyal"]
            return self.config(seed=seed, skips=tuple(la["skips"]), tau=la["tau"])
        gen, iw, tw = GCDF_VARIANTS[method]
        return self.config(seed=seed, generalize=gen, image_weight=iw, text_weight=tw)

    def timing(self) -> None:
        la = self.analyses["loyal"]
        models = {}
        for name, cfg in (("unet", self.config()), ("rau-net", self.config(skips=tuple(la["skips"]))),
                          ("loyal", self.config(skips=tuple(la["skips"]), tau=la["tau"]))):
            torch.manual_seed(0)
            models[name] = build_denoiser(cfg, TEXT_DIM).train()
        timing = time_per_step(models, self.config())
        for name in ("rau-net", "loyal"):
            for phase in ("train", "sample"):
                timing[name][f"{phase}_overhead"] = timing[name][phase] / timing["unet"][phase] - 1
        self.analyses["timing"] = timing

    def controls(self) -> None:
        """Two checks of the protocol, kept off the Pareto plot: duplicated images under other captions
        (``dup_image``) must still be copied (a positive control for the metric), and the LoyalDiffusion pair
        trained twice as long shows how much of its FID cost is under-training."""
        la, none = self.analyses["loyal"], self.points["none"]
        runs = {"dup_image": self.train("none-dup-image-s0", self.config(scheme="dup_image")),
                "loyal_2x_steps": self.train(self.run_name("loyal", 0) + "-x2", self.config(
                    skips=tuple(la["skips"]), tau=la["tau"], steps=2 * self.args.steps))}
        out = {}
        for name, run in runs.items():
            p = self.evaluate(run)
            out[name] = {**p, "fid_ratio_vs_none": p["proxy_fid"] / none["proxy_fid"]}
            print(f"control {name}: copy rate {p['copy_rate']:.3f} (dup {p['copy_rate_dup']:.3f}, unique "
                  f"{p['copy_rate_unique']:.3f}), FID x{out[name]['fid_ratio_vs_none']:.2f}", flush=True)
        self.analyses["controls"] = out

    def report(self, name: str) -> None:
        p, none = self.points[name], self.points.get("none")
        ratio = f", FID x{p['proxy_fid'] / none['proxy_fid']:.2f}" if none else ""
        print(f"{name}: copy rate {p['copy_rate']:.3f} (dup {p['copy_rate_dup']:.3f}, unique "
              f"{p['copy_rate_unique']:.3f}), proxy FID {p['proxy_fid']:.2f}{ratio}", flush=True)


def sampling_of(method: str) -> tuple[str, bool, dict]:
    """A point's sampling: (inference mitigation, gated, settings) from names like ``gated:wen-optimize@lr0.1``."""
    if not method.startswith(("infer:", "gated:")):
        return "", False, {}
    kind, _, rest = method.partition(":")
    name, _, setting = rest.partition("@")
    key = setting.rstrip("0123456789.")
    return name, kind == "gated", ({key: float(setting[len(key):])} if setting else {})


def choose(points: list[dict], none: dict, tolerance: float) -> dict:
    """The point with the lowest copy rate whose proxy FID is within ``tolerance`` of ``none``'s (else the best-FID one)."""
    ok = [p for p in points if p["proxy_fid"] <= (1 + tolerance) * none["proxy_fid"]]
    return min(ok, key=lambda p: p["copy_rate"]) if ok else min(points, key=lambda p: p["proxy_fid"])


def spread(rows: list[dict]) -> dict:
    """Mean and standard deviation over the (training seed, sampling seed) rows of each figure."""
    out = {}
    for key in (*COPY_KEYS, "proxy_fid"):
        out[key] = mean_sd([r[key] for r in rows if r[key] is not None])
    return out


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


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_calibration(curve: list[dict], protocol_steps: int, unique_bound: float, path: Path) -> None:
    plt = _pyplot()
    steps = [c["step"] for c in curve]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(steps, [c["copy_rate_dup"] for c in curve], "o-", color="tab:red", label="prompts of duplicated images")
    ax.plot(steps, [c["copy_rate_unique"] for c in curve], "s-", color="tab:blue", label="prompts of unique images")
    ax.axhline(0.5, color="tab:red", ls=":", lw=1)
    ax.axhline(unique_bound, color="tab:blue", ls=":", lw=1)
    ax.axvline(protocol_steps, color="gray", lw=1, label=f"protocol: {protocol_steps} steps")
    ax.set_xlabel("training steps")
    ax.set_ylabel("copy rate (calibrated threshold)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="center right")
    fid = ax.twinx()
    fid.plot(steps, [c["proxy_fid"] for c in curve], "^--", color="tab:gray", lw=1)
    fid.set_ylabel("proxy FID (grey, dashed)", color="tab:gray")
    ax.set_title("Calibration: copy rate of the unmitigated model against training steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


ZOOM = (1.45, 0.40)  # the right panel: FID ratios up to this, copy rates from this up, where most methods lie


def plot_pareto(points: dict, chosen: dict, seeds: dict, path: Path) -> None:
    """Copy rate against proxy FID ratio, one marker per family; chosen settings circled; seed spread as error bars.
    Left every method, right the crowded corner near the unmitigated model, each label moved off the others."""
    plt = _pyplot()
    none = points["none"]
    style = {"gated:": ("tab:red", "o", "gated by the detector (Wen magnitude)"),
             "train:": ("tab:gray", "s", "training mitigation"), "infer:": ("tab:gray", "^", "inference mitigation"),
             "g": ("tab:green", "o", "GC&DF"), "d": ("tab:green", "o", "GC&DF"), "rau": ("tab:purple", "D", "RAU-Net"),
             "route": ("tab:purple", "v", "plain + RAU-Net routed at tau"), "loyal": ("tab:purple", "*", "LoyalDiffusion"),
             "none": ("k", "X", "unmitigated")}
    xy = {name: (p["proxy_fid"] / none["proxy_fid"], p["copy_rate"]) for name, p in points.items()}
    zoomed = {n for n, (x, y) in xy.items() if x <= ZOOM[0] and y >= ZOOM[1]}
    left = min(x for x, _ in xy.values()) - 0.03  # the right panel's first FID ratio, and the box's on the left
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.25]})
    for ax, names in ((axes[0], set(xy) - zoomed), (axes[1], zoomed)):
        seen = set()
        for name, (x, y) in xy.items():
            key = next(k for k in style if name.startswith(k))
            color, marker, label = style[key]
            ax.scatter(x, y, color=color, marker=marker, s=50, label=None if label in seen else label,
                       zorder=3 if name == "none" else 2)  # the reference stays visible under points that tie it
            seen.add(label)
        for label, s in seeds.items():
            ax.errorbar(s["proxy_fid"]["mean"] / seeds["none"]["proxy_fid"]["mean"], s["copy_rate"]["mean"],
                        xerr=s["proxy_fid"]["sd"] / seeds["none"]["proxy_fid"]["mean"], yerr=s["copy_rate"]["sd"],
                        color="0.45", lw=0.8, capsize=3, alpha=0.7, zorder=1)
        for name in chosen.values():
            ax.scatter(*xy[name], s=200, facecolors="none", edgecolors="tab:orange")
        ax.axvline(1.10, color="tab:orange", ls=":", lw=1)
        ax.set_xlabel("proxy FID / unmitigated proxy FID (dotted: 1.10)")
        ax.set_ylabel("copy rate (share of generations copying)")
        if ax is axes[1]:
            ax.set_xlim(left, ZOOM[0])
            ax.set_ylim(ZOOM[1], max(y for _, y in xy.values()) + 0.015)
            ax.set_title("near the unmitigated model (error bars: sd over 2x2 seeds)", fontsize=9)
        else:
            ax.set_xscale("log")
            ax.add_patch(plt.Rectangle((left, ZOOM[1]), ZOOM[0] - left, 1, fill=False, ls="--", lw=0.8, color="gray"))
            ax.set_title("every method (dashed box: right panel)", fontsize=9)
            ax.legend(fontsize=7, loc="lower left")
        _labels(ax, {n: xy[n] for n in names})
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _labels(ax, xy: dict[str, tuple[float, float]], height: float = 7.0) -> None:
    """Each point's name beside it, moved up or down in steps of a line until it overlaps no label placed before
    (a moved label has a line to its point)."""
    ax.figure.canvas.draw()
    placed, points_per_pixel = [], 72 / ax.figure.dpi  # boxes in points, as the offsets
    for name, (x, y) in sorted(xy.items(), key=lambda kv: (-kv[1][1], kv[1][0])):
        text = name.replace("train:", "t:").replace("infer:", "i:")
        px, py = ax.transData.transform((x, y)) * points_per_pixel
        width = 3.4 * len(text)
        for k in range(40):
            dy = 2 + (k + 1) // 2 * height * (1 if k % 2 else -1)
            box = (px + 4, py + dy, px + 4 + width, py + dy + height)
            if all(box[2] < b[0] or box[0] > b[2] or box[3] < b[1] or box[1] > b[3] for b in placed):
                break
        placed.append(box)
        ax.annotate(text, (x, y), fontsize=6, xytext=(4, dy), textcoords="offset points",
                    arrowprops=dict(arrowstyle="-", lw=0.4, color="gray") if k else None)  # a moved label points home


def headline(b: Bench) -> dict:
    none, h = b.points["none"], {}
    h["none_copy_rate"] = none["copy_rate"]
    h["none_copy_rate_dup"] = none["copy_rate_dup"]
    h["none_copy_rate_unique"] = none["copy_rate_unique"]
    h["copy_threshold"] = none["copy_threshold"]
    h["run_minutes"] = none["training_minutes"]
    seeds = b.analyses.get("seeds", {})

    def rate(label: str, name: str) -> tuple[float, float]:
        """Copy rate and proxy FID: means over seeds where the seed stage ran, else the seed-0 point."""
        if label in seeds:
            return seeds[label]["copy_rate"]["mean"], seeds[label]["proxy_fid"]["mean"]
        return b.points[name]["copy_rate"], b.points[name]["proxy_fid"]

    base_rate, base_fid = rate("none", "none")
    chosen = b.chosen()
    h["chosen"] = chosen
    for label, name in chosen.items():
        r, fid = rate(label, name)
        h[f"{label}_reduction_vs_none"] = 1 - r / base_rate if base_rate else None
        h[f"{label}_fid_ratio"] = fid / base_fid
    if "standard" in chosen and "loyal" in chosen:
        std = rate("standard", chosen["standard"])[0]
        h["loyal_reduction_vs_best_baseline"] = 1 - rate("loyal", "loyal")[0] / std if std else None
    if "gc+df" in b.points:
        orig = b.points["gc+df"]["original_prompts"]
        h["gcdf_default_reduction_vs_none"] = 1 - b.points["gc+df"]["copy_rate"] / none["copy_rate"] if none["copy_rate"] else None
        h["gcdf_default_fid_ratio"] = b.points["gc+df"]["proxy_fid"] / none["proxy_fid"]
        h["gcdf_default_reduction_vs_none_original_prompts"] = (1 - orig["copy_rate"] / none["copy_rate"]
                                                                if none["copy_rate"] else None)
    det = b.analyses.get("detection")
    if det:
        h["detection_auc"] = {d: det[f"{d}_auc_mean"] for d in det["against_copies"]}
        h["detection_auc_against_copies"] = {d: v["auc"] for d, v in det["against_copies"].items()}
    for bound in (1.10, 1.05):
        ok = [(1 - p["copy_rate"] / none["copy_rate"], name, p["proxy_fid"] / none["proxy_fid"])
              for name, p in b.points.items() if name != "none" and p["proxy_fid"] <= bound * none["proxy_fid"]]
        if ok and none["copy_rate"]:
            r, name, fid = max(ok)
            h[f"best_reduction_at_fid_ratio_{bound:.2f}"] = {"method": name, "reduction": r, "fid_ratio": fid}
    if seeds:
        h["seed_spread"] = {label: {"copy_rate_sd": s["copy_rate"]["sd"], "proxy_fid_sd": s["proxy_fid"]["sd"],
                                    "runs": s["copy_rate"]["n"]} for label, s in seeds.items()}
    if "timing" in b.analyses:
        t = b.analyses["timing"]
        h["rau_time_overhead"] = max(t["rau-net"]["train_overhead"], t["rau-net"]["sample_overhead"])
        h["rau_parameter_overhead"] = t["rau-net"]["parameters"] / t["unet"]["parameters"] - 1
    return h


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/bench-replication-v2")
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated, from " + ",".join(STAGES))
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--size", type=int, default=16)
    ap.add_argument("--duplicate-share", type=float, default=0.1)
    ap.add_argument("--duplicate-times", type=int, default=10)
    ap.add_argument("--channels", default=",".join(map(str, DiffusionConfig.channels)))
    ap.add_argument("--steps", type=int, default=800, help="the protocol's training steps (chosen from the calibration)")
    ap.add_argument("--batch-size", type=int, default=DiffusionConfig.batch_size)
    ap.add_argument("--calibrate-every", type=int, default=400)
    ap.add_argument("--calibrate-steps", type=int, default=2400, help="the calibration run's longest training")
    ap.add_argument("--unique-bound", type=float, default=0.15,
                    help="the calibration stops once prompts of unique images copy more than this")
    ap.add_argument("--samples", type=int, default=256)
    ap.add_argument("--fid-tolerance", type=float, default=0.10)
    ap.add_argument("--train-seeds", default="0,1")
    ap.add_argument("--sample-seeds", default="0,1")
    ap.add_argument("--rau-skips", default="auto", help="RAU-Net skips, or auto: the skip ablation's recommendation")
    ap.add_argument("--itb", default=DiffusionConfig.itb)
    ap.add_argument("--tau", default="auto", help="LoyalDiffusion tau, or auto: the routed sweep's choice")
    ap.add_argument("--taus", default="200,400,600,800")
    ap.add_argument("--device", default=DiffusionConfig.device)
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    args.train_seeds = [int(v) for v in args.train_seeds.split(",")]
    args.sample_seeds = [int(v) for v in args.sample_seeds.split(",")]
    stages = [s for s in args.stages.split(",") if s]
    unknown = set(stages) - set(STAGES)
    if unknown:
        ap.error(f"unknown stages {sorted(unknown)}")
    b = Bench(args)
    t0 = time.time()
    done = b.keep_earlier(RESULTS / "replication.json", settings(args))
    for stage in STAGES:
        if stage not in stages:
            continue
        if stage != "calibration" and "none" not in b.points:
            b.none()
        if stage in ("seeds", "timing", "controls") and "loyal" not in b.analyses:
            b.loyal()
        getattr(b, stage)()
        done = [s for s in STAGES if s in done or s == stage]
        write(b, done, time.time() - t0)


def settings(a) -> dict:
    return {"data": f"emoji, {a.n} distinct images (skin tones and near-duplicates > 0.9 dropped), unique captions, "
                    f"{a.size}x{a.size}, {a.duplicate_share:.0%} duplicated x{a.duplicate_times} (dup_both), data seed 0",
            "encoder": "minilm", "channels": a.channels, "steps": a.steps, "batch_size": a.batch_size, "lr": DiffusionConfig.lr,
            "samples": a.samples, "sampler": "DDIM 50 steps, guidance 2, eta 1",
            "copy_metric_version": metric_version("aligned"),  # a new version measures every stored sample set again
            "copy_rate": "share of generations whose nearest training image by the aligned copy metric (crops, shifts, "
                         "rotations, mirroring, grey undone by registration) lies above the calibrated threshold: p99 of "
                         "distinct training images' nearest-other similarity, one per near-duplicate group",
            "gate": f"magnitude of the first step, threshold at {GATE_FPR:.0%} false positives on "
                    f"{a.samples} emoji captions not trained on (4 seeds)",
            "fid_tolerance": a.fid_tolerance, "train_seeds": a.train_seeds, "sample_seeds": a.sample_seeds,
            "gcdf_variants": {k: {"generalize": g, "image_weight": i, "text_weight": t}
                              for k, (g, i, t) in GCDF_VARIANTS.items()},
            "mitigation_p": DiffusionConfig.mitigation_p, "mitigation_sigma": DiffusionConfig.mitigation_sigma, "taus": a.taus, "itb": a.itb,
            "proxy_fid": "Frechet distance in a trustlab-trained emoji classifier's 128-d features (not Inception), "
                         f"{a.samples} generations against the training set",
            "timing": "median of 10 interleaved rounds of 6 training steps and 6 sampling calls per model"}


def write(b: Bench, done: list[str], seconds: float) -> None:
    a = b.args
    chosen = b.chosen()
    plot_pareto(b.points, chosen, b.analyses.get("seeds", {}), RESULTS / "replication.png")
    none_copies = b.runs / "none-s0" / "plots" / "copies.png"
    if none_copies.exists():
        shutil.copyfile(none_copies, RESULTS / "replication_copies.png")
    h = {**headline(b), "complete": done == list(STAGES), "stages_done": done, "minutes_this_invocation": seconds / 60}
    print(write_result("replication", h, settings(a), points=b.points, **b.analyses), flush=True)


if __name__ == "__main__":
    main()
