"""Models of the private-inference papers: CIFAR-style ResNet18 and WideResNet-22-8.

Every ReLU is its own ``nn.ReLU`` module, so its site name (:mod:`trustlab.pi.graph`) is the
module's name, as in run folders written before ReLU sites were read off the graph.

ResNet18 here is the CIFAR variant of SENet/SNL papers: 3×3 stem, no max-pool, four stages of
two basic blocks with widths ``64·w, 128·w, 256·w, 512·w``. At 32×32×3 and ``w = 1`` it has
557,056 ReLUs (the stem ReLU included) and about 0.56 GMACs.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from trustlab.errors import ConfigError


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU (the ResNet basic block)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet18(nn.Module):
    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        widths = [max(1, int(round(c * width))) for c in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        layers, cin = [], widths[0]
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))
        return self.fc(torch.flatten(self.pool(out), 1))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv plus shortcut (the wide-ResNet block)."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.relu1(self.bn1(x))
        short = x if self.shortcut is None else self.shortcut(o)
        o = self.conv1(o)
        o = self.conv2(self.relu2(self.bn2(o)))
        return o + short


class WideResNet(nn.Module):
    """WRN-depth-k (Zagoruyko & Komodakis); WRN-22-8 is SENet's second model."""

    def __init__(self, depth: int = 22, widen: int = 8, num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ConfigError(f"WideResNet depth must be 6n+4, not {depth}")
        n = (depth - 4) // 6
        widths = [max(1, int(round(c * width))) for c in (16, 16 * widen, 32 * widen, 64 * widen)]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        groups, cin = [], widths[0]
        for g, cout in enumerate(widths[1:]):
            blocks = [PreActBlock(cin if b == 0 else cout, cout, (1 if g == 0 else 2) if b == 0 else 1) for b in range(n)]
            groups.append(nn.Sequential(*blocks))
            cin = cout
        self.block1, self.block2, self.block3 = groups
        self.bn = nn.BatchNorm2d(cin)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(torch.flatten(self.pool(self.relu(self.bn(o))), 1))


MODELS = {"resnet18": ResNet18, "wrn22-8": lambda **kw: WideResNet(22, 8, **kw)}


def build_model(name: str, num_classes: int, in_channels: int, width: float = 1.0) -> nn.Module:
    """A built-in model by name, or your own from ``FILE.py:FACTORY`` (:mod:`trustlab.pi.factory`;
    ``width`` applies to the built-in ones only)."""
    from trustlab.pi.factory import is_factory_spec, load_factory

    if is_factory_spec(name):
        return load_factory(name, num_classes, in_channels)
    if name not in MODELS:
        raise ConfigError(f"unknown model '{name}': choose one of {', '.join(MODELS)}, or FILE.py:FACTORY")
    if width <= 0:
        raise ConfigError(f"width multiplier must be positive, not {width}")
    return MODELS[name](num_classes=num_classes, in_channels=in_channels, width=width)


def check_input(model: nn.Module, shape: tuple[int, int, int]) -> None:
    """Trace ``model`` on an input of ``shape``: a shape it cannot take, or a model neither torch.fx nor
    torch.export can trace, is a clear error before any training starts."""
    from trustlab.pi.graph import trace

    trace(model, shape)
