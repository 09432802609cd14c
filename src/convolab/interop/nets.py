"""ResNet-50 and MobileNetV2 as plain ``torch.nn`` code, with random weights from a fixed seed.

The architectures are the published ones, layer for layer as torchvision defines them (torchvision
itself is not needed), so the convolutions, their shapes and the parameter counts are exactly
those of the real networks; the weights are random, which is enough for latency and for
comparing a runtime against PyTorch on the same weights, not for accuracy on images.

- ResNet-50 (He, Zhang, Ren, Sun, "Deep Residual Learning for Image Recognition", CVPR 2016),
  bottleneck v1.5 as in torchvision: the stride of a downsampling block is on its 3x3
  convolution (v1 had it on the first 1x1); stem 7x7/2 + 3x3/2 max pool, stages of 3, 4, 6, 3
  bottlenecks (widths 64, 128, 256, 512, expansion 4), a 1x1/stride projection shortcut with
  BatchNorm where the shape changes, global average pool, fc 2048 -> 1000. 53 convolutions,
  25,557,032 parameters, 4.1 GMACs at 224x224.
- MobileNetV2 (Sandler, Howard, Zhu, Zhmoginov, Chen, "MobileNetV2: Inverted Residuals and
  Linear Bottlenecks", CVPR 2018), width 1.0, 224x224: a 3x3/2 stem of 32 channels, 17
  inverted residual blocks (expansion t, channels c, repeats n, stride s: (1, 16, 1, 1),
  (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1);
  1x1 expansion + ReLU6, 3x3 depthwise + ReLU6, linear 1x1 projection, the input added where
  stride is 1 and the channels match), a 1x1 convolution to 1280, global average pool,
  dropout 0.2, fc 1280 -> 1000. 52 convolutions (17 depthwise), 3,504,872 parameters.

Weights. Initialised as torchvision does (Kaiming-normal, fan-out, for convolutions; the fc
layers as torchvision: PyTorch's default for ResNet, N(0, 0.01) for MobileNetV2) from
``torch.manual_seed(seed)`` in a forked RNG (the caller's RNG is untouched); BatchNorm
scales drawn from U(0.5, 1.5) and shifts from N(0, 0.1), and the running statistics set by one
training-mode pass over seeded random images (cumulative averages), so every BatchNorm folds
into non-trivial per-channel scales and shifts and the activations keep a sane range through
the depth of the network. The same seed gives the same weights on every machine.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act=None) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act(inplace=True))
    return nn.Sequential(*layers)


# ------------------------------------------------------------------------------ ResNet-50
class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand (x4); ``relu(main + shortcut)``."""

    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.downsample is not None:
            identity = self.downsample(x)  # computed after the main branch, as torchvision does
        out += identity
        return self.relu(out)


class ResNet50(nn.Module):
    """ResNet-50 v1.5 (torchvision's ``resnet50``): (N, 3, 224, 224) -> (N, 1000) logits."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        cin = 64
        for i, (width, blocks, stride) in enumerate(((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))):
            layer = []
            for b in range(blocks):
                layer.append(Bottleneck(cin, width, stride if b == 0 else 1))
                cin = width * Bottleneck.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ------------------------------------------------------------------------------ MobileNetV2
class InvertedResidual(nn.Module):
    """1x1 expansion (t > 1) + ReLU6, 3x3 depthwise + ReLU6, linear 1x1 projection; the input
    added when the stride is 1 and the channels match."""

    def __init__(self, cin: int, cout: int, stride: int, t: int):
        super().__init__()
        hidden = cin * t
        self.use_res_connect = stride == 1 and cin == cout
        layers = [] if t == 1 else [_conv_bn(cin, hidden, 1, act=nn.ReLU6)]
        layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


#: MobileNetV2's body: expansion t, output channels c, repeats n, first stride s (Table 2)
MOBILENET_V2_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                         (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """MobileNetV2, width 1.0 (torchvision's ``mobilenet_v2``): (N, 3, 224, 224) -> (N, 1000)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        features = [_conv_bn(3, 32, 3, 2, act=nn.ReLU6)]
        cin = 32
        for t, c, n, s in MOBILENET_V2_SETTINGS:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        features.append(_conv_bn(cin, 1280, 1, act=nn.ReLU6))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


# ------------------------------------------------------------------------------ weights
def _randomise_batchnorm(model: nn.Module, seed: int, size: int = 112, batch: int = 2) -> None:
    """Non-trivial BatchNorm affine parameters, and running statistics from one training-mode
    pass over seeded random images (cumulative averages: exactly that batch's statistics)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        nn.init.uniform_(m.weight, 0.5, 1.5)
        nn.init.normal_(m.bias, 0.0, 0.1)
        m.reset_running_stats()
        m.momentum = None
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    model.train()
    with torch.no_grad():
        model(x)
    for m in bns:
        m.momentum = 0.1
    model.eval()


def build(name: str, seed: int = 0) -> nn.Module:
    """``"resnet50"`` or ``"mobilenet_v2"`` with random weights from ``seed``, in eval mode."""
    cls = {"resnet50": ResNet50, "mobilenet_v2": MobileNetV2}[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls()
        _randomise_batchnorm(model, seed)
    return model.eval()
