"""``trustlab replication``: a text-conditional diffusion testbed, its generations and their replication."""

from __future__ import annotations

import json
from typing import Optional

import typer

from trustlab.cli.apps import new_app
from trustlab.errors import ConfigError
from trustlab.replication.config import DUAL_FUSION as FUSION
from trustlab.replication.config import AuditConfig, CaptionDataConfig, DetectConfig, DiffusionConfig, DualFusion
from trustlab.replication.mitigations import Mitigations

app = new_app()
DATA, MODEL = CaptionDataConfig(), DiffusionConfig()  # the defaults of `replication train`
AUDIT, DETECT, MITIGATION = AuditConfig(), DetectConfig(), Mitigations()
COPY_METRIC_HELP = ("aligned: crops, shifts, small rotations, mirroring and grey conversion undone before comparing; "
                    "pixel: plain pixel similarity; learned: a copy descriptor trained on the training folder "
                    "(cached by its fingerprint).")
DUPLICATE_HELP = "Training images at least this similar form a near-duplicate group (the calibration takes one per group)."


def _channels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--channels takes three integers separated by commas, not '{text}'") from None


@app.command("train")
def train_cmd(out: str = typer.Option("runs/replication", help="Run folder to write."),
              dataset: str = typer.Option(DATA.dataset, help="emoji, or folder (with --folder)."),
              folder: Optional[str] = typer.Option(None, help="A folder of images with captions.jsonl."),
              n: int = typer.Option(DATA.n, "--n", "--images", min=0, help="Training images (a seeded subset; 0: all)."),
              size: int = typer.Option(DATA.size, min=1, help="Image side in pixels (multiple of 8)."),
              captions: str = typer.Option(DATA.captions, help="unique (per image) | class"),
              duplicate_share: float = typer.Option(DATA.duplicate_share, help="Share of the images repeated in the training set."),
              duplicate_times: int = typer.Option(DATA.duplicate_times, min=1, help="Extra copies of each repeated image."),
              duplicate_scheme: str = typer.Option(DATA.duplicate_scheme, help="dup_both (image and caption repeated) | dup_image "
                                                                "(the image repeated under other images' captions)."),
              skin_tones: bool = typer.Option(DATA.skin_tones, "--skin-tones", help="emoji: keep the skin-tone variations "
                                                                            "(dropped by default: near-identical images)."),
              near_duplicate: float = typer.Option(DATA.near_duplicate, help="Drop a source image whose flip-invariant pixel similarity "
                                                             "to an earlier one exceeds this (1: keep all)."),
              encoder: str = typer.Option(MODEL.encoder, help="minilm (all-MiniLM-L6-v2, offline) | hash (tests)"),
              channels: str = typer.Option(",".join(map(str, MODEL.channels)), help="U-Net widths of the three levels."),
              steps: int = typer.Option(MODEL.steps, min=1), batch_size: int = typer.Option(MODEL.batch_size, min=1),
              lr: float = typer.Option(MODEL.lr),
              caption_dropout: float = typer.Option(MODEL.caption_dropout, help="Share of empty captions (classifier-free guidance)."),
              mitigation: Optional[str] = typer.Option(None, help="Training mitigations, comma-separated: "
                                                       "caption-replace, word-add, word-repeat, embedding-noise, "
                                                       "wen-filter (leaves the share --mitigation-p of each batch with "
                                                       "the largest memorization magnitude out of the loss)."),
              mitigation_p: float = typer.Option(MODEL.mitigation_p), mitigation_sigma: float = typer.Option(MODEL.mitigation_sigma),
              generalize: Optional[str] = typer.Option(None, help="Train on generalized captions: wordnet | llm."),
              llm_url: Optional[str] = typer.Option(None, help="OpenAI-compatible API base, for --generalize llm."),
              llm_model: Optional[str] = typer.Option(None, "--model", help="Model name for --generalize llm."),
              dual_fusion: bool = typer.Option(False, help=f"Dual fusion with the default weights (image {FUSION.image_weight:g}, "
                                                             f"text {FUSION.text_weight:g})."),
              fusion_image: Optional[float] = typer.Option(None, help="Weight of the auxiliary image mixed in."),
              fusion_aux: str = typer.Option(FUSION.aux, help="Registry dataset of the auxiliary images."),
              fusion_text: Optional[float] = typer.Option(None, help="Weight of the 'with <class>' text states."),
              fusion_text_mode: str = typer.Option(FUSION.text_mode, help="mix (states) | append (class words to the caption)"),
              rau_skips: Optional[str] = typer.Option(None, help="RAU-Net: skip indices that get an information "
                                                      "transfer block, e.g. 4,5, or 'default' (the skips the skip "
                                                      "ablation recommends on the emoji testbed)."),
              itb: str = typer.Option(MODEL.itb, help="ITB kind: conv | conv-silu | stacked | pool, for every skip, "
                                                  "or per skip index, e.g. conv,5:pool."),
              itb_frozen: bool = typer.Option(MODEL.itb_frozen, help="Frozen random ITB weights (as the authors' released code)."),
              tau: int = typer.Option(MODEL.tau, help="LoyalDiffusion: RAU-Net for timesteps >= tau, the plain U-Net "
                                              "below (0: RAU-Net everywhere)."),
              checkpoint_every: int = typer.Option(MODEL.checkpoint_every, min=0), seed: int = typer.Option(MODEL.seed),
              device: str = typer.Option(MODEL.device, help="auto | cpu | cuda"),
              pretrained: Optional[str] = typer.Option(None, help="A diffusers Stable Diffusion folder (save_pretrained "
                                                       "layout): fine-tune its UNet in its VAE's latent space, with its "
                                                       "CLIP text encoder and schedule (--encoder and --channels are then "
                                                       "the pipeline's). Nothing is downloaded."),
              bf16: bool = typer.Option(MODEL.bf16, "--bf16", help="bfloat16 mixed precision for the denoiser (GPUs)."),
              resume: bool = typer.Option(False, help="Continue the run folder from its last checkpoint."),
              quiet: bool = typer.Option(False, help="No progress bars.")) -> None:
    """Train the conditional U-Net on captioned images (DDPM loss, caption dropout, EMA), or fine-tune a local
    Stable Diffusion folder's UNet (--pretrained)."""
    from trustlab.replication.skips import parse_skips
    from trustlab.replication.training import train_diffusion

    fusion = DualFusion(image_weight=fusion_image if fusion_image is not None else FUSION.image_weight * dual_fusion,
                        aux=fusion_aux, text_weight=fusion_text if fusion_text is not None else FUSION.text_weight * dual_fusion,
                        text_mode=fusion_text_mode)
    cfg = DiffusionConfig(data=CaptionDataConfig(dataset=dataset, folder=folder, n=n, size=size, captions=captions,
                                                 duplicate_share=duplicate_share, duplicate_times=duplicate_times,
                                                 duplicate_scheme=duplicate_scheme, skin_tones=skin_tones,
                                                 near_duplicate=near_duplicate, generalize=generalize or "", llm_url=llm_url or "",
                                                 llm_model=llm_model or "", seed=seed), fusion=fusion,
                          encoder=encoder, channels=_channels(channels), steps=steps, batch_size=batch_size, lr=lr,
                          caption_dropout=caption_dropout, mitigations=mitigation or "", mitigation_p=mitigation_p,
                          mitigation_sigma=mitigation_sigma,
                          rau_skips=parse_skips(rau_skips or ""), itb=itb,
                          itb_frozen=itb_frozen, tau=tau, checkpoint_every=checkpoint_every, seed=seed, device=device,
                          pretrained=pretrained or "", bf16=bf16)
    run = train_diffusion(cfg, out, resume=resume, quiet=quiet)
    from trustlab.train import world

    if world()[0] != 0:  # under torchrun, rank 0 reports
        return
    s = run.summary()
    print(f"{s['architecture']}: {s['steps']} steps in {s['minutes']:.1f} min on {s.get('device', 'cpu')}, "
          f"{s['parameters']:,} parameters, final loss {s['final_loss']:.4f}: {run.path}")
    print(run.path / "report.html")


@app.command("sample")
def sample_cmd(run_dir: str = typer.Argument(..., help="A replication train run folder."),
               n: int = typer.Option(256, min=1, help="Generations."), seed: int = typer.Option(0),
               steps: int = typer.Option(50, min=1, help="DDIM steps."),
               guidance: float = typer.Option(2.0, help="Classifier-free guidance scale (1 = conditional only)."),
               eta: float = typer.Option(1.0, help="DDIM eta: 0 deterministic, 1 as stochastic as DDPM."),
               mitigation: Optional[str] = typer.Option(None, help="Inference mitigations: word-add, word-repeat, "
                                                        "embedding-noise, wen-optimize (prompt states optimised to "
                                                        "lower the memorization magnitude), opposite-guidance."),
               mitigation_p: float = typer.Option(MITIGATION.p), mitigation_sigma: float = typer.Option(MITIGATION.sigma),
               mitigation_steps: int = typer.Option(MITIGATION.steps, help="wen-optimize: Adam steps."),
               mitigation_lr: float = typer.Option(MITIGATION.lr, help="wen-optimize: Adam learning rate."),
               mitigation_delay: float = typer.Option(MITIGATION.delay, help="opposite-guidance: share of the steps "
                                                                             "with reversed guidance."),
               gate_fpr: Optional[float] = typer.Option(None, help="Mitigate only prompts a detector flags, at this "
                                                        "false-positive rate on --gate-reference."),
               gate_reference: Optional[str] = typer.Option(None, help="Prompts file of prompts the model was not "
                                                            "trained on: the gate's reference."),
               gate_detector: str = typer.Option("magnitude", help="magnitude | attention-entropy: the gate's detector."),
               prompts: str = typer.Option("training", help="training (the captions the model learned) | original (before "
                                                            "--generalize: how GC&DF models are also evaluated)."),
               name: Optional[str] = typer.Option(None, help="Samples name (default seed<S>[-mitigations][-gated]"
                                                             "[-original])."),
               device: str = typer.Option("auto", help="auto | cpu | cuda: where to run (auto: cuda when available)."),
               quiet: bool = typer.Option(False)) -> None:
    """Generate images for training captions (DDIM, classifier-free guidance)."""
    from trustlab.replication.sampling import sample_run

    print(sample_run(run_dir, n=n, seed=seed, steps=steps, guidance=guidance, eta=eta, mitigations=mitigation or "",
                     mitigation_p=mitigation_p, mitigation_sigma=mitigation_sigma, mitigation_steps=mitigation_steps,
                     mitigation_lr=mitigation_lr, mitigation_delay=mitigation_delay, gate_fpr=gate_fpr,
                     gate_reference=gate_reference, gate_detector=gate_detector, name=name, quiet=quiet, device=device,
                     prompts=prompts))


@app.command("detect")
def detect_cmd(run_dir: Optional[str] = typer.Argument(None, help="A replication train run folder (or --pretrained)."),
               pretrained: Optional[str] = typer.Option(None, help="A Stable Diffusion folder (save_pretrained layout) "
                                                        "instead of a run."),
               prompts: Optional[str] = typer.Option(None, help="Prompts file: one per line, or JSON lines {\"prompt\", "
                                                     "\"memorized\"} (default: the run's distinct training captions, "
                                                     "memorized = image duplicated)."),
               out: str = typer.Option("runs/detect", help="Run folder to write (scores.csv, ROC, report)."),
               detectors: str = typer.Option(DETECT.detectors, help="magnitude (Wen et al.) and/or attention-entropy "
                                                                    "(Ren et al.), comma-separated."),
               seeds: int = typer.Option(DETECT.seeds, help="Starting noises averaged per prompt."),
               first_steps: int = typer.Option(DETECT.first_steps, help="Sampling steps read, from the first."),
               steps: int = typer.Option(DETECT.steps, help="DDIM steps of the schedule."),
               guidance: float = typer.Option(DETECT.guidance, help="Classifier-free guidance of those steps."),
               size: int = typer.Option(DETECT.size, help="--pretrained: image side (0: the pipeline's own)."),
               batch_size: int = typer.Option(DETECT.batch_size),
               device: str = typer.Option(DETECT.device, help="auto | cpu | cuda"),
               quiet: bool = typer.Option(False, help="No progress bars.")) -> None:
    """Which prompts does the model memorize? Scores from the model alone, no training images needed."""
    from trustlab.replication.detect import detect

    cfg = DetectConfig(run=run_dir or "", pretrained=pretrained or "", size=size, prompts=prompts, detectors=detectors,
                       seeds=seeds, first_steps=first_steps, steps=steps, guidance=guidance, batch_size=batch_size,
                       device=device)
    s = detect(cfg, out, quiet=quiet).summary()
    print(f"{s['prompts']:,} prompts scored by {', '.join(s['detectors'])} ({s['seeds']} seeds, first "
          f"{s['first_steps']} step(s), {s['prompts_per_second']:.1f} prompt-seeds/s on {s['device']})")
    for d, r in s.get("roc", {}).items():
        print(f"{d:18s} ROC AUC {r['auc']:.3f}, true positives at 1% false positives {r['tpr_at_1pct_fpr']:.1%} "
              f"({s['memorized']} memorized of {s['prompts']})")
    print(f"{out}/scores.csv")
    print(f"{out}/report.html")


@app.command("measure")
def measure_cmd(run_dir: str = typer.Argument(..., help="A replication train run folder with samples."),
                samples: Optional[str] = typer.Option(None, help="Samples file (default: the newest)."),
                sscd: Optional[str] = typer.Option(None, help="TorchScript SSCD model for the SSCD metric."),
                inception: Optional[str] = typer.Option(None, help="TorchScript Inception-v3 for standard FID."),
                pixel_threshold: float = typer.Option(0.9, help="Pixel-similarity share threshold."),
                copy_threshold: Optional[float] = typer.Option(None, help="Copy threshold (default: calibrated, the 99th "
                                                               "percentile of distinct training images' nearest other, "
                                                               "one per near-duplicate group)."),
                copy_metric: str = typer.Option(AUDIT.copy_metric, help=COPY_METRIC_HELP),
                duplicate_level: float = typer.Option(AUDIT.duplicate_level, help=DUPLICATE_HELP),
                flip: bool = typer.Option(False, "--flip", help="Pixel copy metric: count mirrored copies."),
                device: str = typer.Option("auto", help="auto | cpu | cuda: where to run (auto: cuda when available)."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Replication (pixel, Carlini, Gu, SSCD) and quality (proxy FID, precision/recall) of generations."""
    from trustlab.replication.measure import measure_run

    r = measure_run(run_dir, samples=samples, sscd=sscd, inception=inception, pixel_threshold=pixel_threshold,
                    device=device, flip=flip, copy_threshold=copy_threshold, copy_metric=copy_metric,
                    duplicate_level=duplicate_level)
    if as_json:
        print(json.dumps(r, indent=2))
        return
    for k, v in r["replication"].items():
        print(f"{k:8s} replication score {v['score']:.4g}, share flagged {v['share']:.3f} "
              f"(training images among themselves: {r['background'][k]['score']:.4g})")
    c = r["copies"]
    if c is not None:  # the figures a folder without duplicated images or prompts cannot have are left out
        split = [f"prompts of {kind} images {c[key]:.1%}" for kind, key in (("duplicated", "copy_rate_dup"),
                                                                          ("unique", "copy_rate_unique")) if c[key] is not None]
        own = c["own_prompt_copy_rate"]
        print(f"copy rate {c['copy_rate']:.1%}" + (f" ({', '.join(split)})" if split else "")
              + (f"; own prompt's image {own:.1%}" if own is not None else "")
              + f"; threshold {c['threshold']:.3f} ({c['threshold_source']})")
    d = r["duplicates"]
    if d["groups"]:
        print(f"near-duplicates among the distinct training images: {d['groups']:,} groups of {d['images_in_groups']:,} images")
    q = r["quality"]
    print(f"proxy FID {q['proxy_fid']:.2f} (trustlab encoder, not Inception), precision {q['precision']:.3f}, "
          f"recall {q['recall']:.3f}, caption match {q['caption_match']:.3f}; measured on {r['device']}")
    print(f"{run_dir}/report.html")


@app.command("export")
def export_cmd(run_dir: str = typer.Argument(..., help="A replication train run folder with samples."),
               out: str = typer.Option(..., help="Folder to write train/ and generated/ into."),
               samples: Optional[str] = typer.Option(None, help="Samples file (default: the run's latest).")) -> None:
    """The run's distinct training images (with captions.jsonl) and its generations (with prompts.jsonl) as PNG
    folders, the input of `replication audit` and of any other tool."""
    from trustlab.replication.export import export_run

    train, generated = export_run(run_dir, out, samples=samples)
    print(f"{train}\n{generated}")


@app.command("audit")
def audit_cmd(generated: str = typer.Option(..., help="Folder of generated images (any size; png, jpg, webp, ...)."),
              train: str = typer.Option(..., help="Folder of training images (with captions.jsonl for --captions)."),
              out: str = typer.Option("runs/audit", help="Run folder to write (report, tables, copy grid, cache)."),
              captions: Optional[str] = typer.Option(None, help="JSON lines {\"file\", \"caption\"}: each generation's "
                                                     "prompt; reports how often the nearest training image has it."),
              sscd: Optional[str] = typer.Option(None, help="TorchScript SSCD model for the SSCD metric."),
              size: int = typer.Option(AUDIT.size, help="Side in pixels at which images are compared."),
              pixel_threshold: float = typer.Option(AUDIT.pixel_threshold, help="Pixel-similarity share threshold."),
              copy_threshold: Optional[float] = typer.Option(None, help="Copy threshold (default: calibrated on the "
                                                             "training images, p99 of each one's nearest other, one "
                                                             "per near-duplicate group)."),
              copy_metric: str = typer.Option(AUDIT.copy_metric, help=COPY_METRIC_HELP),
              duplicate_level: float = typer.Option(AUDIT.duplicate_level, help=DUPLICATE_HELP),
              flip: bool = typer.Option(AUDIT.flip, "--flip", help="Pixel copy metric: count mirrored copies."),
              calibration: int = typer.Option(AUDIT.calibration, help="Training images that calibrate the threshold."),
              background: int = typer.Option(AUDIT.background, help="Training images measured against the rest."),
              batch: int = typer.Option(AUDIT.batch, help="Images per block of the nearest-neighbour search."),
              bad_images: str = typer.Option(AUDIT.bad_images, help="stop | skip: what to do with a file that cannot be decoded."),
              device: str = typer.Option(AUDIT.device, help="auto | cpu | cuda"),
              resume: bool = typer.Option(False, help="Reuse the run folder (its cached images) and audit again."),
              quiet: bool = typer.Option(False, help="No progress bars.")) -> None:
    """Replication metrics of any folder of generations against any folder of training images."""
    from trustlab.replication.audit import audit

    cfg = AuditConfig(generated=generated, train=train, captions=captions, sscd=sscd, size=size,
                      pixel_threshold=pixel_threshold, copy_threshold=copy_threshold, flip=flip, calibration=calibration,
                      copy_metric=copy_metric, duplicate_level=duplicate_level,
                      background=background, batch=batch, bad_images=bad_images, device=device)
    s = audit(cfg, out, resume=resume, quiet=quiet).summary()
    rep, back = s["replication"], s["background"]
    print(f"{s['generations']:,} generations against {s['train_images']:,} training images at {s['size']}x{s['size']}: "
          f"copy rate {s['copy_rate']:.1%} ({s['copies']:,} above {s['copy_threshold']:.3f}, {s['threshold_source']})")
    d = s["duplicates"]
    print(f"near-duplicates in the training folder: {d['groups']:,} groups of {d['images_in_groups']:,} images "
          f"(similarity >= {d['level']:g}; see the report)")
    for k in (k for k in ("pixel", "carlini", "gu", "sscd") if k in rep):
        print(f"{k:8s} replication score {rep[k]['score']:.4g}, share flagged {rep[k]['share']:.3f} (training images "
              f"among themselves: {back[k]['score']:.4g})")
    if s["own_prompt_nearest"] is not None:
        print(f"nearest training image carries the generation's own prompt: {s['own_prompt_nearest']:.1%}")
    print(f"{out}/report.html")


@app.command("skip-ablation")
def skip_ablation_cmd(run_dir: str = typer.Argument(..., help="A plain (no --rau-skips) replication train run."),
                      modes: str = typer.Option("drop,pool", help="Per skip: drop (remove its content) and/or pool "
                                                                  "(max-pool then unpool)."),
                      choose: int = typer.Option(2, min=1, help="How many skips to recommend for the RAU-Net."),
                      n: int = typer.Option(128, min=1, help="Generations per variant."), seed: int = typer.Option(0),
                      pixel_threshold: float = typer.Option(0.9), device: str = typer.Option("auto", help="auto | cpu | cuda: where to run (auto: cuda when available)."),
                      quiet: bool = typer.Option(False)) -> None:
    """Each skip's role: quality and replication with that skip removed or pooled; recommends RAU-Net skips."""
    from trustlab.replication.rau_analysis import skip_ablation

    r = skip_ablation(run_dir, modes=tuple(m.strip() for m in modes.split(",") if m.strip()), choose=choose, n=n,
                      seed=seed, pixel_threshold=pixel_threshold, quiet=quiet, device=device)
    b = r["baseline"]
    print(f"unmodified: replication score {b['replication_score']:.4f}, proxy FID {b['proxy_fid']:.2f}")
    for row in r["rows"]:
        print(f"skip {row['skip']} ({row['channels']} ch, {row['side']}x{row['side']}) {row['mode']:5s} "
              f"replication {row['replication_score']:.4f}, proxy FID {row['proxy_fid']:.2f} ({row['fid_ratio']:.2f}x)")
    print(f"recommended --rau-skips {','.join(map(str, r['recommended_skips']))} ({r['rule']}); "
          f"{run_dir}/skip-ablation.json, {run_dir}/plots/skip-ablation.png")


@app.command("timestep-analysis")
def timestep_analysis_cmd(plain_run: str = typer.Argument(..., help="A plain U-Net run."),
                          rau_run: str = typer.Argument(..., help="A RAU-Net run (--rau-skips, no --tau) of the same data."),
                          taus: Optional[str] = typer.Option(None, help="Comma-separated taus (default 0,200,...,1000)."),
                          fid_tolerance: float = typer.Option(0.1, help="Proxy FID allowed above the plain U-Net's "
                                                                        "when choosing tau."),
                          n: int = typer.Option(128, min=1, help="Generations per tau."), seed: int = typer.Option(0),
                          pixel_threshold: float = typer.Option(0.9), device: str = typer.Option("auto", help="auto | cpu | cuda: where to run (auto: cuda when available)."),
                          quiet: bool = typer.Option(False)) -> None:
    """Replication and quality with the RAU-Net only for t >= tau, for several tau; chooses tau."""
    from trustlab.replication.rau_analysis import timestep_analysis

    try:
        tau_list = tuple(int(v) for v in taus.split(",") if v.strip()) if taus is not None else None
    except ValueError:
        raise ConfigError(f"--taus takes integers separated by commas, not '{taus}'") from None
    r = timestep_analysis(plain_run, rau_run, taus=tau_list, fid_tolerance=fid_tolerance, n=n, seed=seed,
                          pixel_threshold=pixel_threshold, quiet=quiet, device=device)
    for row in r["rows"]:
        print(f"tau {row['tau']:4d}: replication {row['replication_score']:.4f}, share above "
              f"{row['share_above']:.3f}, proxy FID {row['proxy_fid']:.2f}")
    print(f"chosen --tau {r['chosen_tau']} ({r['rule']}); {rau_run}/timestep-analysis.json")


captions_app = new_app(help="Caption generality: score and generalize captions.")
app.add_typer(captions_app, name="captions")


def _llm(llm_url: Optional[str], model: Optional[str], api_key_env: str):
    if llm_url is None:
        return None
    from trustlab.replication.llm import ChatClient

    return ChatClient(llm_url, model or "", api_key_env)


_FILE_HELP = "Captions: a text file (one per line) or JSON lines with a \"caption\" field."


@captions_app.command("score")
def captions_score(file: str = typer.Argument(..., help=_FILE_HELP),
                   llm_url: Optional[str] = typer.Option(None, help="OpenAI-compatible API base: score with an LLM."),
                   model: Optional[str] = typer.Option(None, help="Model name at --llm-url."),
                   api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable with the API key."),
                   plot: Optional[str] = typer.Option(None, help="Write the score distribution to this PNG."),
                   as_json: bool = typer.Option(False, "--json", help="Print every caption's score as JSON.")) -> None:
    """Generality score (0-10) of every caption: WordNet heuristic, and the LLM score with --llm-url."""
    from trustlab.replication.generality import score_file

    print(score_file(file, _llm(llm_url, model, api_key_env), plot=plot, as_json=as_json))


@captions_app.command("generalize")
def captions_generalize(file: str = typer.Argument(..., help=_FILE_HELP),
                        out: str = typer.Option(..., help="Where to write the generalized captions (same format)."),
                        method: str = typer.Option("wordnet", help="wordnet (offline) | llm"),
                        llm_url: Optional[str] = typer.Option(None, help="OpenAI-compatible API base, for --method llm."),
                        model: Optional[str] = typer.Option(None, help="Model name at --llm-url."),
                        api_key_env: str = typer.Option("OPENAI_API_KEY", help="Environment variable with the API key."),
                        quiet: bool = typer.Option(False, help="No progress bar.")) -> None:
    """Rewrite captions to be general (at most five words); the LLM falls back to WordNet per caption."""
    from trustlab.replication.generality import generalize_file

    print(generalize_file(file, out, method, _llm(llm_url, model, api_key_env), quiet=quiet))
