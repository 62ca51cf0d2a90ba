"""The skip connections of the testbed U-Net, and the information transfer blocks chosen on them.

Skips are numbered in the order the encoder makes them (0 = after ``conv_in``, highest
resolution; the last = deepest). This module is torch-free, so that configurations can check
``--rau-skips`` and ``--itb`` before any model is built; :mod:`trustlab.replication.rau` builds
the blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from trustlab.errors import ConfigError

ITB_KINDS = ("conv", "conv-silu", "stacked", "pool")
DEFAULT_SKIPS = (2, 5)  # measured: the two skips whose removal costs the least quality (skip ablation, emoji testbed)


@dataclass(frozen=True)
class Skip:
    """One skip connection: its index, channels, side in pixels, and where the encoder makes it."""

    index: int
    channels: int
    side: int
    origin: str


def skips_of(channels: tuple[int, ...], layers_per_block: int, size: int) -> list[Skip]:
    """The skip connections of the testbed U-Net layout (every down block but the last downsamples)."""
    out = [Skip(0, channels[0], size, "conv_in")]
    side = size
    for b, ch in enumerate(channels):
        for r in range(layers_per_block):
            out.append(Skip(len(out), ch, side, f"down block {b}, layer {r}"))
        if b < len(channels) - 1:
            side //= 2
            out.append(Skip(len(out), ch, side, f"down block {b}, downsample"))
    return out


def parse_skips(text: str) -> tuple[int, ...]:
    """``"4,5"`` → ``(4, 5)``, ``"default"`` → ``DEFAULT_SKIPS``; a clear error for anything else."""
    if text.strip() == "default":
        return DEFAULT_SKIPS
    try:
        skips = tuple(sorted({int(v) for v in text.split(",") if v.strip()}))
    except ValueError:
        raise ConfigError(f"--rau-skips takes skip indices separated by commas (e.g. 4,5), not '{text}'") from None
    return skips


def itb_kinds(skips: tuple[int, ...], itb: str) -> dict[int, str]:
    """The ITB kind of each skip: ``itb`` is one kind for all (``conv``) or chosen per skip index
    (``conv,5:pool``: skip 5 pools, every other skip gets the bare kind, ``conv`` if none is given)."""
    default, named = "conv", {}
    for entry in (e.strip() for e in itb.split(",") if e.strip()):
        index, sep, kind = entry.rpartition(":")
        if not sep:
            default = kind
            continue
        try:
            named[int(index)] = kind
        except ValueError:
            raise ConfigError(f"--itb takes KIND or SKIP:KIND entries separated by commas, not '{entry}'") from None
    for i in named:
        if i not in skips:
            raise ConfigError(f"--itb names skip {i}, which is not among --rau-skips {','.join(map(str, skips))}")
    kinds = {i: named.get(i, default) for i in skips}
    for kind in kinds.values():
        if kind not in ITB_KINDS:
            raise ConfigError(f"--itb kinds are {', '.join(ITB_KINDS)}, not '{kind}'")
    return kinds


def check_skips(kinds: dict[int, str], all_skips: list[Skip]) -> None:
    """Every skip of ``kinds`` exists, and pooled skips are at least 2x2."""
    names = ", ".join(f"{s.index} ({s.channels} ch, {s.side}x{s.side})" for s in all_skips)
    for i, kind in kinds.items():
        if not 0 <= i < len(all_skips):
            raise ConfigError(f"skip {i} does not exist: this U-Net has skips {names}")
        if kind == "pool" and all_skips[i].side < 2:
            raise ConfigError(f"a pool ITB needs a skip of at least 2x2 pixels; skip {i} is "
                              f"{all_skips[i].side}x{all_skips[i].side}")


__all__ = ["DEFAULT_SKIPS", "ITB_KINDS", "Skip", "check_skips", "itb_kinds", "parse_skips", "skips_of"]
