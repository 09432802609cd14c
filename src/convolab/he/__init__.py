"""Convolution on homomorphically encrypted (CKKS) images.

HyPHEN's channel-aligned / replicated packings (CAConv: CA in, RA out; RAConv: RA in, CA out,
rotations moved to the output side; the replicated CA layout of ``distinct = m`` channels per
ciphertext and 2D gap packing; Kim et al., IEEE Access 2023, arXiv 2302.02407) and the
multiplexed parallel convolution baseline (Lee et al., ICML 2022) counted as its authors' code
runs, written against a small CKKS backend interface with two backends: ``simulated`` (exact
float64 slot vectors that count every operation by level) and ``tenseal`` (real CKKS through
SEAL, the ``he`` extra). `plan_resnet20` lays out ResNet-20 on CIFAR-10 with alternating RA/CA
convolutions and a degree-2 polynomial activation, and compares its costs with the baseline.

>>> from convolab import he
>>> r = he.conv2d(x, w, scheme="ca", distinct=16, backend="simulated", slots=2**15)  # doctest: +SKIP
>>> r.output, r.rotations, r.pmults, r.depth                                         # doctest: +SKIP
"""

from .activation import RELU_FIT, composite_relu, eval_odd, poly2, sign_polys
from .backend import OPERATIONS, Backend, Counts, SimulatedBackend, get_backend
from .conv import SCHEMES, HEConvResult, conv2d
from .layout import Layout, make_layout, pack, unpack, with_distinct
from .planner import ConvLayer, PlanRow, ResNetPlan, plan_resnet20, resnet20_convs
from .schedules import EncTensor, ca_conv, ca_relayout, mp_conv, mp_downsample, ra_conv

__all__ = [
    "OPERATIONS",
    "RELU_FIT",
    "SCHEMES",
    "Backend",
    "ConvLayer",
    "Counts",
    "EncTensor",
    "HEConvResult",
    "Layout",
    "PlanRow",
    "ResNetPlan",
    "SimulatedBackend",
    "ca_conv",
    "ca_relayout",
    "composite_relu",
    "conv2d",
    "eval_odd",
    "get_backend",
    "make_layout",
    "mp_conv",
    "mp_downsample",
    "pack",
    "plan_resnet20",
    "poly2",
    "ra_conv",
    "resnet20_convs",
    "sign_polys",
    "unpack",
    "with_distinct",
]
