"""``trustlab replication``: a text-conditional diffusion testbed, its generations and their replication."""

from __future__ import annotations

import json
from typing import Optional

import typer

from trustlab.errors import ConfigError

app = typer.Typer(no_args_is_help=True)


def _channels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"--channels takes three integers separated by commas, not '{text}'") from None


@app.command("train")
def train_cmd(out: str = typer.Option("runs/replication", help="Run folder to write."),
              dataset: str = typer.Option("emoji", help="emoji, or folder (with --folder)."),
              folder: Optional[str] = typer.Option(None, help="A folder of images with captions.jsonl."),
              n: int = typer.Option(64, help="Training images (a seeded subset; 0: all)."),
              size: int = typer.Option(32, help="Image side in pixels (multiple of 8)."),
              captions: str = typer.Option("unique", help="unique (per image) | class"),
              duplicate_share: float = typer.Option(0.0, help="Share of the images repeated in the training set."),
              duplicate_times: int = typer.Option(1, help="Extra copies of each repeated image."),
              encoder: str = typer.Option("minilm", help="minilm (all-MiniLM-L6-v2, offline) | hash (tests)"),
              channels: str = typer.Option("32,64,64", help="U-Net widths of the three levels."),
              steps: int = typer.Option(2000), batch_size: int = typer.Option(32), lr: float = typer.Option(1e-3),
              caption_dropout: float = typer.Option(0.1, help="Share of empty captions (classifier-free guidance)."),
              mitigation: Optional[str] = typer.Option(None, help="Training mitigations, comma-separated: "
                                                       "caption-replace, word-add, word-repeat, embedding-noise."),
              mitigation_p: float = typer.Option(0.1), mitigation_sigma: float = typer.Option(0.1),
              checkpoint_every: int = typer.Option(250), seed: int = typer.Option(0),
              device: str = typer.Option("auto", help="auto | cpu | cuda"),
              resume: bool = typer.Option(False, help="Continue the run folder from its last checkpoint."),
              quiet: bool = typer.Option(False, help="No progress bars.")) -> None:
    """Train the conditional U-Net on captioned images (DDPM loss, caption dropout, EMA)."""
    from trustlab.replication.data import CaptionDataConfig
    from trustlab.replication.training import DiffusionConfig, train_diffusion

    cfg = DiffusionConfig(data=CaptionDataConfig(dataset=dataset, folder=folder, n=n, size=size, captions=captions,
                                                 duplicate_share=duplicate_share, duplicate_times=duplicate_times,
                                                 seed=seed),
                          encoder=encoder, channels=_channels(channels), steps=steps, batch_size=batch_size, lr=lr,
                          caption_dropout=caption_dropout, mitigations=mitigation or "", mitigation_p=mitigation_p,
                          mitigation_sigma=mitigation_sigma, checkpoint_every=checkpoint_every, seed=seed, device=device)
    run = train_diffusion(cfg, out, resume=resume, quiet=quiet)
    s = run.summary()
    print(f"{s['steps']} steps in {s['minutes']:.1f} min, {s['parameters']:,} parameters, final loss {s['final_loss']:.4f}: {run.path}")


@app.command("sample")
def sample_cmd(run_dir: str = typer.Argument(..., help="A replication train run folder."),
               n: int = typer.Option(256, help="Generations."), seed: int = typer.Option(0),
               steps: int = typer.Option(50, help="DDIM steps."),
               guidance: float = typer.Option(2.0, help="Classifier-free guidance scale (1 = conditional only)."),
               eta: float = typer.Option(1.0, help="DDIM eta: 0 deterministic, 1 as stochastic as DDPM."),
               mitigation: Optional[str] = typer.Option(None, help="Inference mitigations: word-add, word-repeat, "
                                                        "embedding-noise."),
               mitigation_p: float = typer.Option(0.1), mitigation_sigma: float = typer.Option(0.1),
               name: Optional[str] = typer.Option(None, help="Samples name (default seed<S>[-mitigations])."),
               quiet: bool = typer.Option(False)) -> None:
    """Generate images for training captions (DDIM, classifier-free guidance)."""
    from trustlab.replication.sampling import sample_run

    print(sample_run(run_dir, n=n, seed=seed, steps=steps, guidance=guidance, eta=eta, mitigations=mitigation or "",
                     mitigation_p=mitigation_p, mitigation_sigma=mitigation_sigma, name=name, quiet=quiet))


@app.command("measure")
def measure_cmd(run_dir: str = typer.Argument(..., help="A replication train run folder with samples."),
                samples: Optional[str] = typer.Option(None, help="Samples file (default: the newest)."),
                sscd: Optional[str] = typer.Option(None, help="TorchScript SSCD model for the SSCD metric."),
                inception: Optional[str] = typer.Option(None, help="TorchScript Inception-v3 for standard FID."),
                pixel_threshold: float = typer.Option(0.9, help="Pixel-similarity share threshold."),
                as_json: bool = typer.Option(False, "--json")) -> None:
    """Replication (pixel, Carlini, Gu, SSCD) and quality (proxy FID, precision/recall) of generations."""
    from trustlab.replication.measure import measure_run

    r = measure_run(run_dir, samples=samples, sscd=sscd, inception=inception, pixel_threshold=pixel_threshold)
    if as_json:
        print(json.dumps(r, indent=2))
        return
    for k, v in r["replication"].items():
        print(f"{k:8s} replication score {v['score']:.3f}, share flagged {v['share']:.3f} "
              f"(training images among themselves: {r['background'][k]['score']:.3f})")
    q = r["quality"]
    print(f"proxy FID {q['proxy_fid']:.2f} (trustlab encoder, not Inception), precision {q['precision']:.3f}, "
          f"recall {q['recall']:.3f}, caption match {q['caption_match']:.3f}")
    print(f"{run_dir}/report.html")
