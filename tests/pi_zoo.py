"""Small models in the styles users bring, defined here and not in trustlab: what the PI graph
view must handle. Each comes with its ReLU count by hand (per example, at its test input)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class FunctionalBlock(nn.Module):
    """The CIFAR ResNet code of the SNL-era repositories: ``F.relu`` inside ``forward``, ``out +=``."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return F.relu(out)


class FunctionalResNet(nn.Module):
    """Two stages of one block each, widths 4 and 8: at 1x8x8, ReLUs 4·64 + 2·4·64 + 2·8·16 = 1,024."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = FunctionalBlock(4, 4)
        self.layer2 = FunctionalBlock(4, 8, 2)
        self.linear = nn.Linear(8, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer2(self.layer1(out))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(out.view(out.size(0), -1))


class SharedReLUBlock(nn.Module):
    """torchvision's BasicBlock: one ``nn.ReLU(inplace=True)`` module called twice."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class SharedReLUResNet(nn.Module):
    """torchvision-style stem (conv, BN, shared ReLU, 3x3/2 max-pool). At 1x16x16: stem 4·256,
    block1 2·4·64, block2 2·8·16: 1,792 ReLUs; the max-pool has 4·64 outputs of 9 inputs."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 4, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = SharedReLUBlock(4, 4)
        self.layer2 = SharedReLUBlock(4, 8, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGG(nn.Module):
    """conv-BN + ``F.relu`` + ``F.max_pool2d``, then an MLP head with ``Tensor.relu``. At 1x8x8:
    8·64 + 8·64 + 16·16 + 16 (head) = 1,296 ReLUs; two 2x2 max-pools (8·16 and 16·4 outputs)."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv2d(in_channels, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1),
                                    nn.Conv2d(8, 16, 3, padding=1)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(8), nn.BatchNorm2d(8), nn.BatchNorm2d(16)])
        self.fc1 = nn.Linear(16 * 4, 16)
        self.fc2 = nn.Linear(16, num_classes)

    def forward(self, x):
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            x = F.relu(bn(conv(x)))
            if i in (1, 2):
                x = F.max_pool2d(x, 2)
        x = self.fc1(torch.flatten(x, 1)).relu()
        return self.fc2(x)


class InvertedResidual(nn.Module):
    def __init__(self, c: int, expand: int = 2):
        super().__init__()
        h = c * expand
        self.block = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
                                   nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), nn.ReLU6(inplace=True),
                                   nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.block(x)


class MobileNetish(nn.Module):
    """MobileNetV2-style: ReLU6 and depthwise convolutions, one plain ReLU before the head. At
    1x8x8: ReLU6 on 8·64 (stem) + 2·16·64 = 2,560 elements (two comparisons each), 8·64 ReLUs."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = InvertedResidual(8)
        self.head = nn.Sequential(nn.Conv2d(8, 8, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


def hf_resnet(num_classes: int = 4, in_channels: int = 1):
    """A small random ``transformers.ResNetForImageClassification`` (basic layers). At 1x16x16:
    embedder 8·64 (then a 3x3/2 max-pool to 8·16), stage 1 2·8·16, stage 2 2·16·4: 896 ReLUs."""
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    cfg = ResNetConfig(num_channels=in_channels, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                       layer_type="basic", num_labels=num_classes)
    return ResNetForImageClassification(cfg)


ZOO = {  # name: (factory, input shape, ReLUs by hand)
    "functional-resnet": (FunctionalResNet, (1, 8, 8), 4 * 64 + 2 * 4 * 64 + 2 * 8 * 16),
    "shared-relu-resnet": (SharedReLUResNet, (1, 16, 16), 4 * 256 + 2 * 4 * 64 + 2 * 8 * 16),
    "vgg": (VGG, (1, 8, 8), 8 * 64 + 8 * 64 + 16 * 16 + 16),
    "mobilenet": (MobileNetish, (1, 8, 8), 8 * 64),
    "hf-resnet": (hf_resnet, (1, 16, 16), 8 * 64 + 2 * 8 * 16 + 2 * 16 * 4),
}
