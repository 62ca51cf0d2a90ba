"""ResNet18 as the CIFAR code of the SNL-era repositories writes it: ``F.relu`` inside ``forward``,
``out +=`` for the skip, ``F.avg_pool2d(out, 4)`` and ``view`` before the classifier (a 4x4 final map:
32x32 CIFAR or 28x28 Fashion-MNIST inputs).

It is not a trustlab model: ``bench/pi_any_model.py`` loads it as a user would, through
``FILE.py:FACTORY`` and the Python API. ``width`` 0.25 gives stage widths 16/32/64/128.
"""

import torch.nn as nn
import torch.nn.functional as F


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        out = F.relu(out)
        return out


class ResNet(nn.Module):
    def __init__(self, num_blocks, num_classes=10, in_channels=3, width=1.0):
        super().__init__()
        planes = [int(64 * width), int(128 * width), int(256 * width), int(512 * width)]
        self.in_planes = planes[0]
        self.conv1 = nn.Conv2d(in_channels, planes[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.layer1 = self._make_layer(planes[0], num_blocks[0], 1)
        self.layer2 = self._make_layer(planes[1], num_blocks[1], 2)
        self.layer3 = self._make_layer(planes[2], num_blocks[2], 2)
        self.layer4 = self._make_layer(planes[3], num_blocks[3], 2)
        self.linear = nn.Linear(planes[3], num_classes)

    def _make_layer(self, planes, num_blocks, stride):
        layers = []
        for s in [stride] + [1] * (num_blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer1(out)
        out = self.layer2(out)
        out = self.layer3(out)
        out = self.layer4(out)
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


def resnet18_w16(num_classes=10, in_channels=3):
    """ResNet18 at width 0.25 (16/32/64/128 channels)."""
    return ResNet([2, 2, 2, 2], num_classes, in_channels, width=0.25)
