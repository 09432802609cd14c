"""Layer suites for ``convolab bench``.

Each layer is a `ConvSpec` with a name. ``im2win12`` is the 12-layer set used by both im2win
papers (notes/algorithms.md; padding 0, square); ``resnet50`` holds ResNet-50's distinct
convolutions at 224x224 (torchvision's v1.5 layout: stride on the 3x3 of each first block);
``default`` is a quick mix that runs in about a minute on two cores; ``cuconv`` holds the
small-batch layers of the cuConv paper (the GPU benchmark's batch-1 regime).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConvError
from ..spec import ConvSpec


def layer(name, C, H, K, R, stride=1, padding=0, groups=1, N=1, W=None, S=None, dilation=1):
    spec = ConvSpec.from_shapes(
        (N, C, H, W or H), (K, C // groups, R, S or R), stride, padding, dilation, groups, np.float32
    )
    return name, spec


def _im2win12(batch: int):
    rows = [  # L, C, H=W, K, F, s
        (1, 3, 227, 96, 11, 4), (2, 3, 231, 96, 11, 4), (3, 3, 227, 64, 7, 2),
        (4, 64, 224, 64, 7, 2), (5, 96, 24, 256, 5, 1), (6, 256, 12, 512, 3, 1),
        (7, 3, 224, 64, 3, 1), (8, 64, 112, 128, 3, 1), (9, 64, 56, 64, 3, 1),
        (10, 128, 28, 128, 3, 1), (11, 256, 14, 256, 3, 1), (12, 512, 7, 512, 3, 1),
    ]
    return [layer(f"L{L} {C}x{H} {K} {F}x{F}/{s}", C, H, K, F, s, N=batch) for L, C, H, K, F, s in rows]


def _resnet50(batch: int):
    rows = [  # name, C, H, K, R, stride, pad
        ("conv1 7x7/2", 3, 224, 64, 7, 2, 3),
        ("l1 1x1 64>64", 64, 56, 64, 1, 1, 0),
        ("l1 3x3 64", 64, 56, 64, 3, 1, 1),
        ("l1 1x1 64>256", 64, 56, 256, 1, 1, 0),
        ("l1 1x1 256>64", 256, 56, 64, 1, 1, 0),
        ("l2 1x1 256>128", 256, 56, 128, 1, 1, 0),
        ("l2 3x3 128/2", 128, 56, 128, 3, 2, 1),
        ("l2 1x1 128>512", 128, 28, 512, 1, 1, 0),
        ("l2 ds 1x1 256>512/2", 256, 56, 512, 1, 2, 0),
        ("l2 1x1 512>128", 512, 28, 128, 1, 1, 0),
        ("l2 3x3 128", 128, 28, 128, 3, 1, 1),
        ("l3 1x1 512>256", 512, 28, 256, 1, 1, 0),
        ("l3 3x3 256/2", 256, 28, 256, 3, 2, 1),
        ("l3 1x1 256>1024", 256, 14, 1024, 1, 1, 0),
        ("l3 ds 1x1 512>1024/2", 512, 28, 1024, 1, 2, 0),
        ("l3 1x1 1024>256", 1024, 14, 256, 1, 1, 0),
        ("l3 3x3 256", 256, 14, 256, 3, 1, 1),
        ("l4 1x1 1024>512", 1024, 14, 512, 1, 1, 0),
        ("l4 3x3 512/2", 512, 14, 512, 3, 2, 1),
        ("l4 1x1 512>2048", 512, 7, 2048, 1, 1, 0),
        ("l4 ds 1x1 1024>2048/2", 1024, 14, 2048, 1, 2, 0),
        ("l4 1x1 2048>512", 2048, 7, 512, 1, 1, 0),
        ("l4 3x3 512", 512, 7, 512, 3, 1, 1),
    ]
    return [layer(n, C, H, K, R, s, p, N=batch) for n, C, H, K, R, s, p in rows]


def _default(batch: int):
    return [
        layer("r50 3x3 64@56", 64, 56, 64, 3, 1, 1, N=batch),
        layer("r50 3x3 256@14", 256, 14, 256, 3, 1, 1, N=batch),
        layer("r50 3x3 512@7", 512, 7, 512, 3, 1, 1, N=batch),
        layer("r50 1x1 256>64@56", 256, 56, 64, 1, 1, 0, N=batch),
        layer("dw 3x3 128@56", 128, 56, 128, 3, 1, 1, groups=128, N=batch),
        layer("stem 7x7/2 3>64@224", 3, 224, 64, 7, 2, 3, N=batch),
    ]


def _large_kernel(batch: int):
    return [
        layer("7x7 64@56 p3", 64, 56, 64, 7, 1, 3, N=batch),
        layer("9x9 32@112 p4", 32, 112, 32, 9, 1, 4, N=batch),
        layer("11x11 16@224 p5", 16, 224, 16, 11, 1, 5, N=batch),
        layer("13x13 32@64 p6", 32, 64, 32, 13, 1, 6, N=batch),
        layer("dw 7x7 96@56 p3 (ConvNeXt)", 96, 56, 96, 7, 1, 3, groups=96, N=batch),
    ]


def _cuconv(batch: int):
    # the small-batch layers on which cuConv (Jorda, Valero-Lara, Pena 2022) beat cuDNN's best algorithm
    return [
        layer("1x1 832>256@7", 832, 7, 256, 1, N=batch),
        layer("1x1 256>1024@14", 256, 14, 1024, 1, N=batch),
        layer("1x1 64>256@27", 64, 27, 256, 1, N=batch),
        layer("3x3 192>384@4", 192, 4, 384, 3, 1, 1, N=batch),
        layer("3x3 384>384@13", 384, 13, 384, 3, 1, 1, N=batch),
        layer("5x5 48>128@7", 48, 7, 128, 5, 1, 2, N=batch),
    ]


#: suite name -> (builder(batch), default batch, description)
SUITES = {
    "default": (_default, 1, "quick mix: ResNet-50 3x3 and 1x1 layers, a depthwise layer, a 7x7/2 stem"),
    "im2win12": (_im2win12, 8, "the 12 layers of the im2win papers"),
    "resnet50": (_resnet50, 1, "ResNet-50's distinct convolutions at 224x224"),
    "large-kernel": (_large_kernel, 1, "stride-1 kernels of 7x7 and larger, and a ConvNeXt depthwise 7x7"),
    "cuconv": (_cuconv, 1, "the small-batch layers of the cuConv paper (1x1, 3x3, 5x5 on 4x4 to 27x27 images)"),
}


def suite(name: str, batch: int | None = None) -> list[tuple[str, ConvSpec]]:
    """The named suite's layers at ``batch`` (the suite's default batch when None)."""
    try:
        build, default_batch, _ = SUITES[name]
    except KeyError:
        raise ConvError(f"unknown suite {name!r}; available: {', '.join(SUITES)}") from None
    if batch is not None and batch < 1:
        raise ConvError(f"--batch must be >= 1, got {batch}")
    return build(batch or default_batch)
