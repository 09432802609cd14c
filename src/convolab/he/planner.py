"""ResNet-20 (CIFAR-10) on encrypted data: HyPHEN-style RA/CA alternation vs multiplexed.

The network (He et al., CVPR 2016, CIFAR variant): a 3x3 stem 3 -> 16 on 32x32, then three
stages of three basic blocks (16, 32, 64 channels on 32x32, 16x16, 8x8; the first block of
stages 2 and 3 has stride 2), 19 convolutions. Shortcuts are the parameter-free "option A":
subsample by 2 and append zero channels. Batch norm is folded into the weights.

Layout plan (HyPHEN, Kim et al., IEEE Access 2023): the client sends the image RA-packed;
the stem is an RAConv (RA -> CA); in every block the first convolution is a CAConv (CA -> RA)
and the second an RAConv (RA -> CA), so the block's input, its shortcut and its output are all
CA and the packings alternate without any repacking. Between convolutions sits the degree-2
polynomial activation ``p(x) = c0 + c1 x + c2 x^2``, by default the least-squares fit of ReLU
on [-1, 1] (``3/32 + x/2 + 15/32 x^2``), evaluated as ``x * (c2 x + c1) + c0``: one CMult, one
PMult, depth 2 per ciphertext. A stride-2 block's shortcut is one mask PMult per ciphertext
(depth 1). No bootstrapping: the plan reports the depth it would have to refresh.

`plan_resnet20` *executes* this network on the simulated backend (random weights, fixed
seed), so every count in the plan is an executed count, and checks its output against the
plaintext network (`convolab.reference.conv2d`). The baseline column runs each layer's
multiplexed parallel convolution (Lee et al., ICML 2022) on its multiplexed input (k = 1, 2, 4
through the stages), as in the public implementation's ResNet-20 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import reference
from .backend import SimulatedBackend
from .layout import Layout, make_layout, pack, unpack
from .schedules import EncTensor, ca_conv, mp_conv, ra_conv

#: least-squares degree-2 fit of ReLU on [-1, 1]: 3/32 + x/2 + 15/32 x^2
RELU_FIT = (3 / 32, 1 / 2, 15 / 32)


@dataclass(frozen=True)
class ConvLayer:
    """One convolution of ResNet-20: name, channels, input size, stride, multiplexing k."""

    name: str
    cin: int
    cout: int
    size: int
    stride: int
    mp_gap: int

    @property
    def kind(self) -> str:
        """The layer type, e.g. ``32^2 16->32 s2``."""
        s = " s2" if self.stride == 2 else ""
        return f"{self.size}^2 {self.cin}->{self.cout}{s}"


def resnet20_convs() -> list[ConvLayer]:
    """The 19 convolutions of CIFAR ResNet-20, in order."""
    layers = [ConvLayer("conv1", 3, 16, 32, 1, 1)]
    cin, size, k = 16, 32, 1
    for stage, cout in enumerate((16, 32, 64), start=1):
        for blk in range(3):
            stride = 2 if (stage > 1 and blk == 0) else 1
            layers.append(ConvLayer(f"layer{stage}.{blk}.conv1", cin, cout, size, stride, k))
            size //= stride
            k *= stride
            layers.append(ConvLayer(f"layer{stage}.{blk}.conv2", cout, cout, size, 1, k))
            cin = cout
    return layers


@dataclass
class PlanRow:
    """Costs of one convolution: the CA/RA plan and the multiplexed baseline."""

    layer: ConvLayer
    scheme: str
    rotations: int
    pmults: int
    depth: int
    base_rotations: int
    base_pmults: int
    base_depth: int

    @property
    def saved(self) -> int:
        """Rotations saved against the baseline (negative: more rotations)."""
        return self.base_rotations - self.rotations


@dataclass
class ResNetPlan:
    """The executed plan of ResNet-20; see `plan_resnet20`.

    Attributes
    ----------
    rows : list of PlanRow
        One per convolution.
    slots : int
        Slots per ciphertext.
    activation_cmults, activation_pmults : int
        Costs of the 19 polynomial activations (CA/RA plan).
    shortcut_pmults : int
        Mask PMults of the two downsampling shortcuts.
    depth : int
        Multiplicative depth of the whole CA/RA network (without bootstrapping).
    max_rel_error : float
        max |encrypted - plaintext| / max |plaintext| of the final feature map (simulated).
    """

    rows: list[PlanRow]
    slots: int
    activation_cmults: int = 0
    activation_pmults: int = 0
    shortcut_pmults: int = 0
    depth: int = 0
    max_rel_error: float = float("nan")
    activation: tuple = field(default=RELU_FIT)

    def totals(self) -> dict[str, int]:
        """Sums over the convolutions."""
        keys = ("rotations", "pmults", "base_rotations", "base_pmults", "saved")
        return {k: sum(getattr(r, k) for r in self.rows) for k in keys}


def _activation(be, x: EncTensor, coeffs) -> EncTensor:
    c0, c1, c2 = coeffs
    S = be.slots
    outs = []
    for ct in x.cts:
        if ct is None:
            outs.append(None)
            continue
        t = be.rescale(be.multiply_plain(ct, be.encode(np.full(S, c2), ct)))
        t = be.add_plain(t, be.encode(np.full(S, c1), t, for_add=True))
        y = be.rescale(be.multiply(ct, t))
        outs.append(be.add_plain(y, be.encode(np.full(S, c0), y, for_add=True)))
    return EncTensor(x.layout, outs)


def _shortcut(be, x: EncTensor, cout: int) -> EncTensor:
    """Option A on CA data: keep every second pixel, append zero channels."""
    lay = x.layout
    out = Layout("CA", cout, (lay.height + 1) // 2, (lay.width + 1) // 2, lay.gap * 2,
                 lay.grid_h, lay.grid_w, lay.slots)
    n = lay.n_blocks
    blk = np.zeros(lay.block)
    blk[out.pixel_offsets().reshape(-1)] = 1.0
    cts = []
    for t, ct in enumerate(x.cts):
        used = min(n, lay.channels - t * n)
        mask = np.zeros((n, lay.block))
        mask[:used] = blk
        if ct is not None:
            ct = be.rescale(be.multiply_plain(ct, be.encode(mask.reshape(-1), ct)))
        cts.append(ct)
    cts += [None] * (out.num_ciphertexts - len(cts))
    return EncTensor(out, cts)


def _add(be, a: EncTensor, b: EncTensor) -> EncTensor:
    cts = [
        y if x is None else x if y is None else be.add(x, y)
        for x, y in zip(a.cts, b.cts, strict=True)
    ]
    return EncTensor(a.layout, cts)


def _plain_forward(x, weights, coeffs):
    c0, c1, c2 = coeffs

    def act(v):
        return c0 + c1 * v + c2 * v * v

    layers = resnet20_convs()
    y = act(reference.conv2d(x, weights[0], padding=1))
    i = 1
    while i < len(layers):
        la = layers[i]
        h = act(reference.conv2d(y, weights[i], stride=la.stride, padding=1))
        h = reference.conv2d(h, weights[i + 1], padding=1)
        sc = y
        if la.stride == 2:
            sc = np.zeros_like(h)
            sc[:, : la.cin] = y[:, :, ::2, ::2]
        y = act(h + sc)
        i += 2
    return y


def plan_resnet20(slots: int = 2**15, seed: int = 0, coeffs=RELU_FIT) -> ResNetPlan:
    """Run ResNet-20 with RA/CA alternation and each baseline layer on the simulated backend.

    Parameters
    ----------
    slots : int
        Slots per ciphertext (2**15 for ring dimension 2**16, as in the baseline's table).
    seed : int
        Seed of the random image and weights (the counts do not depend on it).
    coeffs : tuple of 3 floats
        The activation polynomial ``c0 + c1 x + c2 x^2``.

    Returns
    -------
    ResNetPlan
        Per-convolution executed counts of both plans, activation and shortcut costs,
        total depth and the error of the encrypted network against the plaintext one.
    """
    rng = np.random.default_rng(seed)
    layers = resnet20_convs()
    weights = [rng.normal(0, 0.5 / np.sqrt(9 * la.cin), (la.cout, la.cin, 3, 3)) for la in layers]
    image = rng.uniform(-1, 1, (1, 3, 32, 32))
    be = SimulatedBackend(slots)
    plan = ResNetPlan(rows=[], slots=slots, activation=tuple(coeffs))

    def conv(i, fn, x):
        c0 = be.counts.copy()
        lvl = max(ct.level for ct in x.cts if ct is not None)
        y = fn(be, x, weights[i], layers[i].stride)
        used = be.counts - c0
        depth = max(ct.level for ct in y.cts if ct is not None) - lvl
        scheme = "RA" if fn is ra_conv else "CA"
        plan.rows.append(PlanRow(layers[i], scheme, used.rotations, used.pmults, depth, 0, 0, 0))
        return y

    def act(x):
        c0 = be.counts.copy()
        y = _activation(be, x, coeffs)
        used = be.counts - c0
        plan.activation_cmults += used.cmults
        plan.activation_pmults += used.pmults
        return y

    lay = make_layout("RA", 3, 32, 32, slots)
    x = EncTensor(lay, [be.encrypt(v) for v in pack(lay, image[0])])
    y = act(conv(0, ra_conv, x))
    i = 1
    while i < len(layers):
        h = act(conv(i, ca_conv, y))
        h = conv(i + 1, ra_conv, h)
        if layers[i].stride == 2:
            c0 = be.counts.copy()
            sc = _shortcut(be, y, layers[i].cout)
            plan.shortcut_pmults += (be.counts - c0).pmults
        else:
            sc = y
        y = act(_add(be, h, sc))
        i += 2
    plan.depth = max(ct.level for ct in y.cts if ct is not None)
    got = unpack(y.layout, [None if ct is None else be.decrypt(ct) for ct in y.cts])
    ref = _plain_forward(image, weights, coeffs)[0]
    plan.max_rel_error = float(np.abs(got - ref).max() / np.abs(ref).max())

    for row, w in zip(plan.rows, weights, strict=True):
        la = row.layer
        bb = SimulatedBackend(slots)
        mlay = make_layout("MP", la.cin, la.size, la.size, slots, la.mp_gap)
        xin = rng.uniform(-1, 1, (la.cin, la.size, la.size))
        res = mp_conv(bb, EncTensor(mlay, [bb.encrypt(pack(mlay, xin)[0])]), w, la.stride)
        row.base_rotations = bb.counts.rotations
        row.base_pmults = bb.counts.pmults
        row.base_depth = res.cts[0].level
    return plan
