"""RAU-Net and LoyalDiffusion: information transfer blocks on U-Net skips, routed by timestep.

A U-Net's skip connections hand the decoder the encoder's high-resolution features directly,
which makes copying a training image easy. RAU-Net puts an *information transfer block* (ITB)
on chosen skips: the skip tensor passes through the block before the decoder concatenates it.
LoyalDiffusion uses the RAU-Net only where memorization is decided, at high-noise timesteps
(``t >= tau``), and the plain U-Net below ``tau``; the router sends every sample of a batch to
its own model.

The ITBs sit on diffusers' ``UNet2DConditionModel`` without copying its forward: the decoder
concatenates ``[hidden, skip]`` right before each up-block resnet, so a forward pre-hook on that
resnet rewrites the skip half of its input. Skips are numbered in the order the encoder makes
them (0 = after ``conv_in``, highest resolution; the last = deepest).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from trustlab.errors import ConfigError
from trustlab.replication.skips import ITB_KINDS, check_skips, skips_of


class PoolUnpool(nn.Module):
    """Max-pool 2x2, then unpool: keeps the strongest activation of each 2x2 window in place, zeros the rest."""

    def __init__(self):
        super().__init__()
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)

    def forward(self, x):
        y, idx = self.pool(x)
        return self.unpool(y, idx, output_size=x.shape[-2:])


class Drop(nn.Module):
    """Removes the skip's content (zeros of the same shape): the decoder gets nothing through it."""

    def forward(self, x):
        return torch.zeros_like(x)


def make_itb(kind: str, channels: int) -> nn.Module:
    """One information transfer block; every kind keeps the skip's shape."""
    def conv():
        return nn.Conv2d(channels, channels, 3, padding=1)

    if kind == "conv":
        return conv()
    if kind == "conv-silu":
        return nn.Sequential(conv(), nn.SiLU())
    if kind == "stacked":
        return nn.Sequential(conv(), nn.SiLU(), conv())
    if kind == "pool":
        return PoolUnpool()
    if kind == "drop":  # skip ablation only: the skip's content removed
        return Drop()
    raise ConfigError(f"--itb must be one of {', '.join(ITB_KINDS)}, not '{kind}'")


def _consumers(unet) -> list[nn.Module]:
    """The up-block resnets in the order the decoder runs them; resnet ``j`` of that list takes skip ``N-1-j``."""
    return [resnet for block in unet.up_blocks for resnet in block.resnets]


class RAUNet(nn.Module):
    """A diffusers conditional U-Net with an ITB of kind ``kinds[i]`` on each skip ``i`` (frozen random if ``frozen``)."""

    def __init__(self, unet, kinds: dict[int, str], frozen: bool = False):
        super().__init__()
        c = unet.config
        all_skips = skips_of(tuple(c.block_out_channels), c.layers_per_block, c.sample_size)
        check_skips(kinds, all_skips)
        consumers = _consumers(unet)
        if len(consumers) != len(all_skips):
            raise ConfigError(f"unexpected U-Net layout: {len(consumers)} decoder resnets for {len(all_skips)} skips")
        self.unet = unet
        self.itbs = nn.ModuleDict({str(i): make_itb(kind, all_skips[i].channels) for i, kind in sorted(kinds.items())})
        if frozen:
            self.itbs.requires_grad_(False)
        self._hooks = [consumers[len(all_skips) - 1 - i].register_forward_pre_hook(self._hook(i, all_skips[i].channels))
                       for i in sorted(kinds)]

    def _hook(self, index: int, channels: int):
        def rewrite(module, args):
            hidden, skip = args[0][:, :-channels], args[0][:, -channels:]
            return (torch.cat([hidden, self.itbs[str(index)](skip)], 1), *args[1:])

        return rewrite

    def forward(self, *args, **kwargs):
        return self.unet(*args, **kwargs)


class TimestepRouter(nn.Module):
    """LoyalDiffusion's pair: ``low`` denoises samples with ``t < tau``, ``high`` those with ``t >= tau``.

    Routing is per sample, so a training batch with mixed timesteps trains each model on its own
    range only, and sampling with one shared ``t`` calls exactly one model.
    """

    def __init__(self, low: nn.Module, high: nn.Module, tau: int):
        super().__init__()
        self.low, self.high, self.tau = low, high, int(tau)

    def forward(self, x, t, encoder_hidden_states, encoder_attention_mask=None):
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(len(x))
        high = t >= self.tau
        if bool(high.all()) or not bool(high.any()):  # one side only (always so in sampling): a single call
            model = self.high if bool(high[0]) else self.low
            return model(x, t, encoder_hidden_states=encoder_hidden_states, encoder_attention_mask=encoder_attention_mask)
        out = torch.empty_like(x)
        for model, rows in ((self.low, ~high), (self.high, high)):
            mask = None if encoder_attention_mask is None else encoder_attention_mask[rows]
            out[rows] = model(x[rows], t[rows], encoder_hidden_states=encoder_hidden_states[rows],
                              encoder_attention_mask=mask).sample
        return SimpleNamespace(sample=out)


__all__ = ["RAUNet", "TimestepRouter", "make_itb"]
