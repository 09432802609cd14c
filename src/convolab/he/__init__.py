"""Convolution on homomorphically encrypted (CKKS) images.

HyPHEN's channel-aligned / replicated packings (CAConv: CA in, RA out; RAConv: RA in, CA out,
rotations moved to the output side; Kim et al., IEEE Access 2023, arXiv 2302.02407) and the
multiplexed parallel convolution baseline (Lee et al., ICML 2022), written against a small
CKKS backend interface with two backends: ``simulated`` (exact float64 slot vectors that
count rotations, PMults, CMults and depth) and ``tenseal`` (real CKKS through SEAL, the
``he`` extra). `plan_resnet20` lays out ResNet-20 on CIFAR-10 with alternating RA/CA
convolutions and a degree-2 polynomial activation, and compares its costs with the baseline.

>>> from convolab import he
>>> r = he.conv2d(x, w, scheme="ra", backend="simulated", slots=2**15)   # doctest: +SKIP
>>> r.output, r.rotations, r.pmults, r.depth                             # doctest: +SKIP
"""

from .backend import Backend, Counts, SimulatedBackend, get_backend
from .conv import SCHEMES, HEConvResult, conv2d
from .layout import Layout, make_layout, pack, unpack
from .planner import RELU_FIT, ConvLayer, PlanRow, ResNetPlan, plan_resnet20, resnet20_convs
from .schedules import EncTensor, ca_conv, mp_conv, ra_conv

__all__ = [
    "RELU_FIT",
    "ConvLayer",
    "PlanRow",
    "SCHEMES",
    "Backend",
    "Counts",
    "EncTensor",
    "HEConvResult",
    "Layout",
    "ResNetPlan",
    "SimulatedBackend",
    "ca_conv",
    "conv2d",
    "get_backend",
    "make_layout",
    "mp_conv",
    "pack",
    "plan_resnet20",
    "ra_conv",
    "resnet20_convs",
    "unpack",
]
