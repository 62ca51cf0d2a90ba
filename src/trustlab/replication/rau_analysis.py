"""Where RAU-Net should act: which skips (skip ablation) and which timesteps (timestep analysis).

Both analyses only sample (the same prompts, seed and sampler for every variant), so they run
in minutes on a CPU:

- **Skip ablation** takes a trained plain U-Net and, one skip at a time, removes the skip's
  content (``drop``) or passes it through a parameter-free ITB (``pool``). The quality lost
  says how much the decoder needs that skip; the replication lost, how much copying flows
  through it. The skips with the smallest quality loss are the RAU-Net's recommended skips.
- **Timestep analysis** takes a plain run and a RAU-Net run of the same data and model and
  samples with the RAU-Net only for ``t >= tau``, for several ``tau`` (the LoyalDiffusion router
  over two independently trained models): replication and quality against ``tau`` show where
  in the trajectory copying is decided, and pick ``tau``.

Each writes a JSON file, a table and a plot into a run folder and re-renders its report.
"""

from __future__ import annotations

import copy
from pathlib import Path

from trustlab.errors import ConfigError
from trustlab.replication.data import load_captioned
from trustlab.replication.metrics import check_threshold, replication
from trustlab.replication.quality import quality
from trustlab.replication.rau import RAUNet, TimestepRouter
from trustlab.replication.sampling import generate
from trustlab.replication.training import load_trained
from trustlab.report import render_report
from trustlab.runs import atomic_save_figure, atomic_write_json
from trustlab.train import resolve_device

ABLATION_MODES = ("drop", "pool")  # skip modifications that need no training


def score(model, cfg, encoder, data, *, n: int, seed: int, pixel_threshold: float, quiet: bool,
          device: str = "cpu") -> dict:
    """Replication (pixel p95, share above the threshold, Gu's share) and proxy FID of ``model``'s generations."""
    images, meta = generate(model, cfg, encoder, n=n, seed=seed, quiet=quiet, device=device)
    gen = images.float() / 127.5 - 1
    rep = replication(gen, data.images, pixel_threshold=pixel_threshold, device=device)
    q = quality(gen, data.images, meta["prompts"], data.captions, dataset=cfg.data.proxy_dataset, device=device)
    return {"replication_score": rep["pixel"]["score"], "share_above": rep["pixel"]["share"],
            "gu_share": rep["gu"]["share"], "proxy_fid": q["proxy_fid"], "sample_seconds": meta["seconds"]}


def skip_ablation(run_dir: str | Path, *, modes: tuple[str, ...] = ("drop", "pool"), choose: int = 2, n: int = 128,
                  seed: int = 0, pixel_threshold: float = 0.9, quiet: bool = False, device: str = "auto") -> dict:
    """Every skip of a plain run, modified by each of ``modes``; recommends the ``choose`` least essential skips."""
    check_threshold(pixel_threshold)
    dev = str(resolve_device(device))
    unet, cfg, encoder, run = load_trained(run_dir)
    if cfg.architecture() != "unet":
        raise ConfigError(f"{run.path} is a {cfg.architecture()} run: skip ablation takes a plain U-Net run")
    for m in modes:
        if m not in ABLATION_MODES:
            raise ConfigError(f"--modes takes drop and pool (no training needed), not '{m}'")
    skips = cfg.skips()
    if not 1 <= choose <= len(skips):
        raise ConfigError(f"--choose must lie in 1..{len(skips)}")
    data = load_captioned(cfg.data)
    kw = dict(n=n, seed=seed, pixel_threshold=pixel_threshold, quiet=quiet, device=dev)
    base = score(unet, cfg, encoder, data, **kw)
    rows = []
    for s in skips:
        for m in modes:
            r = score(RAUNet(copy.deepcopy(unet), {s.index: m}, frozen=True).eval(), cfg, encoder, data, **kw)
            rows.append({"skip": s.index, "channels": s.channels, "side": s.side, "origin": s.origin, "mode": m, **r,
                         "fid_ratio": r["proxy_fid"] / base["proxy_fid"],
                         "replication_change": r["replication_score"] / base["replication_score"] - 1})
    first = [r for r in rows if r["mode"] == modes[0]]
    recommended = sorted(r["skip"] for r in sorted(first, key=lambda r: r["fid_ratio"])[:choose])
    result = {"run": str(run.path), "baseline": base, "rows": rows, "modes": list(modes), "n": n, "seed": seed, "device": dev,
              "recommended_skips": recommended,
              "rule": f"the {choose} skips whose '{modes[0]}' costs the least proxy FID"}
    atomic_write_json(run.path / "skip-ablation.json", result)
    run.write_table("skip-ablation", [{k: r[k] for k in ("skip", "channels", "side", "mode", "replication_score",
                                                         "share_above", "proxy_fid", "fid_ratio")} for r in rows],
                    title=f"Skip ablation ({n} generations each; unmodified: replication score "
                          f"{base['replication_score']:.4f}, proxy FID {base['proxy_fid']:.2f}); "
                          f"recommended RAU-Net skips {recommended}")
    _plot_skips(result, run.plot_path("skip-ablation"))

    render_report(run.path)
    return result


def timestep_analysis(plain_dir: str | Path, rau_dir: str | Path, *, taus: tuple[int, ...] | None = None,
                      fid_tolerance: float = 0.1, n: int = 128, seed: int = 0, pixel_threshold: float = 0.9,
                      quiet: bool = False, device: str = "auto") -> dict:
    """Generations with the RAU-Net for ``t >= tau`` and the plain U-Net below, for each ``tau``; picks ``tau``."""
    check_threshold(pixel_threshold)
    if taus is not None and (not taus or any(a >= b for a, b in zip(taus, taus[1:]))):
        raise ConfigError(f"--taus {','.join(map(str, taus)) or '(empty)'}: give increasing timesteps, e.g. 0,200,500,1000")
    dev = str(resolve_device(device))
    plain, cfg, encoder, _ = load_trained(plain_dir)
    rau, rau_cfg, _, run = load_trained(rau_dir)
    if cfg.architecture() != "unet" or rau_cfg.architecture() != "rau-net":
        raise ConfigError(f"timestep analysis takes a plain U-Net run and a RAU-Net run (--rau-skips, no --tau); "
                          f"got {cfg.architecture()} and {rau_cfg.architecture()}")
    if _model_and_data(cfg) != _model_and_data(rau_cfg):
        raise ConfigError(f"{plain_dir} and {rau_dir} were trained on different data, encoder or U-Net widths: "
                          "compare runs that differ only in --rau-skips")
    timesteps = cfg.num_timesteps()
    taus = list(taus) if taus is not None else list(range(0, timesteps + 1, timesteps // 5))
    check_taus(taus, timesteps)  # before minutes of sampling
    data = load_captioned(cfg.data)
    rows = [{"tau": tau, **score(TimestepRouter(plain, rau, tau), cfg, encoder, data, n=n, seed=seed,
                                 pixel_threshold=pixel_threshold, quiet=quiet, device=dev)} for tau in taus]
    chosen = choose_tau(rows, timesteps, fid_tolerance)
    result = {"plain_run": str(plain_dir), "rau_run": str(run.path), "taus": taus, "rows": rows, "n": n, "seed": seed, "device": dev,
              "fid_tolerance": fid_tolerance, "chosen_tau": chosen["tau"], "rule": chosen["rule"]}
    atomic_write_json(run.path / "timestep-analysis.json", result)
    run.write_table("timestep-analysis", rows, title=f"RAU-Net for t >= tau, plain U-Net below ({n} generations "
                                                     f"each); chosen tau {chosen['tau']}: {chosen['rule']}")
    _plot_taus(result, timesteps, run.plot_path("timestep-analysis"))

    render_report(run.path)
    return result


def check_taus(taus: list[int], timesteps: int) -> None:
    """Every tau lies in 0..timesteps, and the list holds the plain U-Net (``timesteps``) and a tau to choose."""
    for tau in taus:
        if not 0 <= tau <= timesteps:
            raise ConfigError(f"tau {tau} lies outside the schedule's 0..{timesteps} "
                              f"(0: RAU-Net everywhere, {timesteps}: plain U-Net everywhere)")
    if timesteps not in taus or not any(0 < tau < timesteps for tau in taus):
        raise ConfigError(f"the taus must include {timesteps} (the plain U-Net) and at least one tau inside the "
                          "schedule to choose from")


def choose_tau(rows: list[dict], timesteps: int, fid_tolerance: float) -> dict:
    """The ``tau`` with the lowest replication whose proxy FID stays within ``fid_tolerance`` of the plain U-Net's."""
    check_taus([r["tau"] for r in rows], timesteps)
    plain = next(r for r in rows if r["tau"] == timesteps)
    mixed = [r for r in rows if 0 < r["tau"] < timesteps]
    ok = [r for r in mixed if r["proxy_fid"] <= (1 + fid_tolerance) * plain["proxy_fid"]]
    if ok:
        best = min(ok, key=lambda r: (r["replication_score"], -r["tau"]))
        return {"tau": best["tau"], "rule": f"lowest replication with proxy FID within {fid_tolerance:.0%} of the plain U-Net"}
    best = min(mixed, key=lambda r: r["proxy_fid"])
    return {"tau": best["tau"], "rule": f"no tau keeps proxy FID within {fid_tolerance:.0%}; the best-quality one"}


def _model_and_data(cfg) -> tuple:
    return (cfg.data, cfg.encoder, tuple(cfg.channels), cfg.layers_per_block, cfg.num_timesteps())


def _plot_skips(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes, rows, base = result["modes"], result["rows"], result["baseline"]
    skips = sorted({r["skip"] for r in rows})
    width = 0.8 / len(modes)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, key, label in ((axes[0], "replication_score", "replication score (pixel, p95)"),
                           (axes[1], "proxy_fid", "proxy FID (lower is better)")):
        for j, m in enumerate(modes):
            vals = [next(r[key] for r in rows if r["skip"] == s and r["mode"] == m) for s in skips]
            ax.bar([s + (j - (len(modes) - 1) / 2) * width for s in skips], vals, width, label=m)
        ax.axhline(base[key], color="k", ls="--", lw=1, label="unmodified")
        values = [base[key]] + [r[key] for r in rows]
        span = max(values) - min(values) + 1e-3
        ax.set_ylim(max(0.0, min(values) - 0.2 * span), max(values) + 0.2 * span)
        ax.set_xticks(skips, [f"{s}\n{r['channels']}ch {r['side']}px" for s in skips
                              for r in [next(r for r in rows if r["skip"] == s)]], fontsize=7)
        ax.set_xlabel("skip (0 = highest resolution)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Skip ablation; recommended RAU-Net skips {result['recommended_skips']}", fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


def _plot_taus(result: dict, timesteps: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    taus = [r["tau"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(taus, [r["replication_score"] for r in rows], "o-", color="tab:red")
    ax.set_xlabel(f"tau (RAU-Net for t >= tau; 0 = everywhere, {timesteps} = never)")
    ax.set_ylabel("replication score (pixel, p95)", color="tab:red")
    ax2 = ax.twinx()
    ax2.plot(taus, [r["proxy_fid"] for r in rows], "s--", color="tab:blue")
    ax2.set_ylabel("proxy FID", color="tab:blue")
    ax.axvline(result["chosen_tau"], color="gray", lw=1, ls=":")
    ax.set_title(f"chosen tau = {result['chosen_tau']}", fontsize=9)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=120)
    plt.close(fig)


__all__ = ["ABLATION_MODES", "check_taus", "choose_tau", "score", "skip_ablation", "timestep_analysis"]
