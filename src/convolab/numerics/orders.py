"""Direct convolution with an explicit accumulation order, in float32.

Every output is a sum of products,
``y[n, k, i, j] = sum_t p_t`` with ``p_t = x[n, g Cg + c, i sh + r dh - pt, j sw + s dw - pl]
* w[k, c, r, s]`` over the reduction index ``t = (c, r, s)`` (NCHW layout, zero padding,
PyTorch semantics as in `convolab.spec`). Floating-point addition is not associative, so each
way of adding the ``Cg R S`` products can give different bits. Real kernels differ exactly
there: the loop nest (NCHW vs blocked vs NHWC layouts), the SIMD width (how many partial sums
run side by side), thread splits of the reduction, and fused multiply-add. An `Order` names
one such way, and `conv2d` computes it *exactly* -- every addition is one IEEE float32
operation done by NumPy, elementwise over all outputs at once -- so that a class of outputs seen
on a real platform can be reproduced bit for bit and named (`identify`).

An `Order` is applied in this sequence:

1. **loop order** (``cblock``): ``None`` -> ``t`` runs over ``(c, r, s)`` lexicographically (the
   NCHW loop nest of convolab's ``direct``, and the row order of im2col's unfolded matrix);
   ``B`` -> over ``(c // B, r, s, c % B)``, the loop nest of oneDNN's channel-blocked layouts
   (nChw8c with AVX2, nChw16c with AVX-512); ``B >= Cg`` is the NHWC order ``(r, s, c)``
   (written ``rsc``).
2. **chunks**: ``threads = T`` cuts the sequence into ``T`` contiguous, nearly equal chunks (a
   reduction split across threads, or a GEMM's K blocking); ``chunk = B`` (written ``ccB``)
   starts a new chunk whenever ``c // B`` changes (oneDNN's AVX-512 kernels sum each block of
   16 input channels on its own and add it to the output: ``cb16+fma+cc16``). Each chunk is
   reduced on its own and the chunk sums are added left to right.
3. **inside a chunk**: ``pairwise`` -> recursive halving (sum of the first half plus sum of the
   second half, down to single products). Otherwise ``lanes = L`` accumulators, all starting at
   ``+0``: product number ``i`` of the chunk goes to lane ``i mod L`` (4 float32 lanes for SSE,
   8 for AVX2, 16 for AVX-512), each lane adding sequentially; at the end the lanes are
   combined by a tree, ``lane[j] += lane[j + L/2]`` for ``L/2, L/4, ..., 1`` (a horizontal
   reduction). ``L = 1`` is plain sequential summation.
4. **fma**: each lane update ``acc = fl(acc + fl(x w))`` becomes ``acc = fl(acc + x w)``, one
   rounding, as a fused multiply-add instruction does.
5. **bias** (when given): added once after the sum (``bias="last"``), or used as the initial
   value of lane 0 of the first chunk (``"first"``).

Fused multiply-add is emulated exactly, without relying on hardware FMA: the product of two
float32 numbers (24-bit significands) has at most 48 significant bits and lies far inside the
float64 exponent range, so it is exact in float64. The sum ``s = fl64(p + acc)`` is then
computed with Knuth's TwoSum, which also yields its exact error ``e``; if ``e != 0`` and ``s``
has an even last bit, ``s`` is moved one float64 ULP towards ``e`` ("rounding to odd"). Rounding
that float64 to float32 (round to nearest even) gives exactly ``RN32(p + acc)``, because float64
has at least two more bits than float32 -- Boldo and Melquiond, "Emulation of FMA and correctly
rounded sums: proved algorithms using rounding to odd", IEEE Trans. Computers 57(4), 2008.
Simply rounding ``fl64(p + acc)`` to float32 would round twice and is wrong in rare ties.

Measured on this project's machine with PyTorch 2.13 (oneDNN 3.12): its AVX2 kernels for 3x3
convolutions sum in ``cb8+fma`` order, its AVX-512 kernels in ``cb16+fma+cc16``, 1-3 channel
layers in ``rsc+fma``; with the ISA limited to AVX (no FMA) ``rsc``, to SSE4.1 ``seq``
(`convolab.numerics.determinism`, ``convolab deviations sweep``).

Cost: ``Cg R S`` NumPy passes over the ``N K OH OW`` outputs (with ``fma`` the update is one
Numba loop, `convolab.numerics._kernels`), memory ``L + 2`` output-sized arrays; fine for
studies (EfficientNet-Lite0, one photograph: about 3 s per order), not for speed.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from ..errors import ConvError
from ..spec import ConvSpec

#: ``cblock`` value meaning "all channels of a group in one block": the NHWC order (r, s, c)
RSC = 1 << 30


@dataclass(frozen=True)
class Order:
    """One accumulation order of a direct convolution (see the module docstring).

    Parameters
    ----------
    lanes : int
        Number of partial sums (a power of two); product ``i`` goes to lane ``i mod lanes``.
    pairwise : bool
        Recursive pairwise summation inside each chunk (excludes ``lanes > 1`` and ``fma``).
    threads : int
        Number of contiguous chunks the reduction is split into, summed left to right.
    fma : bool
        Fused multiply-add lane updates (one rounding per update).
    cblock : int or None
        Loop order: None for (c, r, s); B for (c // B, r, s, c % B); `RSC` for (r, s, c).
    bias : {"last", "first"}
        Where the bias enters the sum.
    chunk : int or None
        Start a new independently summed chunk whenever ``c // chunk`` changes (excludes
        ``threads > 1``).
    """

    lanes: int = 1
    pairwise: bool = False
    threads: int = 1
    fma: bool = False
    cblock: int | None = None
    bias: str = "last"
    chunk: int | None = None

    def __post_init__(self):
        if self.lanes < 1 or self.lanes & (self.lanes - 1):
            raise ConvError(f"lanes must be a power of two, got {self.lanes}")
        if self.threads < 1:
            raise ConvError(f"threads must be >= 1, got {self.threads}")
        if self.cblock is not None and self.cblock < 1:
            raise ConvError(f"cblock must be >= 1 or None, got {self.cblock}")
        if self.pairwise and (self.lanes > 1 or self.fma):
            raise ConvError("pairwise summation combines with neither lanes nor fma")
        if self.chunk is not None and (self.chunk < 1 or self.threads > 1):
            raise ConvError(f"chunk must be >= 1 and excludes threads > 1, got {self.chunk}")
        if self.bias not in ("last", "first"):
            raise ConvError(f"bias must be 'last' or 'first', got {self.bias!r}")

    @property
    def name(self) -> str:
        """Canonical text form, e.g. ``"seq"``, ``"lanes16+fma"``, ``"cb16+fma+t2"``."""
        parts = []
        if self.cblock is not None:
            parts.append("rsc" if self.cblock >= RSC else f"cb{self.cblock}")
        if self.pairwise:
            parts.append("pairwise")
        elif self.lanes > 1:
            parts.append(f"lanes{self.lanes}")
        elif self.cblock is None:
            parts.append("seq")
        if self.fma:
            parts.append("fma")
        if self.threads > 1:
            parts.append(f"t{self.threads}")
        if self.chunk is not None:
            parts.append(f"cc{self.chunk}")
        if self.bias == "first":
            parts.append("bias-first")
        return "+".join(parts)

    def __str__(self) -> str:
        return self.name


_TOKEN = re.compile(r"^(seq|pairwise|fma|rsc|bias-first|lanes(\d+)|t(\d+)|cb(\d+)|cc(\d+))$")


def parse_order(text: str | Order) -> Order:
    """An `Order` from its text form: ``+``-separated tokens.

    Tokens: ``seq``, ``pairwise``, ``lanesL``, ``tT`` (threads), ``fma``, ``cbB`` (channel
    block), ``rsc`` (NHWC loop order), ``ccB`` (a chunk per B channels), ``bias-first``. ``parse_order(o.name) == o``.
    """
    if isinstance(text, Order):
        return text
    if not isinstance(text, str) or not text:
        raise ConvError(f"an order is a string like 'lanes8+fma', got {text!r}")
    kw: dict = {}
    for tok in text.split("+"):
        m = _TOKEN.match(tok.strip())
        if not m:
            raise ConvError(
                f"unknown order token {tok!r} in {text!r}; use seq, pairwise, lanesL, tT, fma, "
                f"cbB, rsc, ccB, bias-first joined by '+'"
            )
        tok = m.group(1)
        if tok == "pairwise":
            kw["pairwise"] = True
        elif tok == "fma":
            kw["fma"] = True
        elif tok == "rsc":
            kw["cblock"] = RSC
        elif tok == "bias-first":
            kw["bias"] = "first"
        elif m.group(2):
            kw["lanes"] = int(m.group(2))
        elif m.group(3):
            kw["threads"] = int(m.group(3))
        elif m.group(4):
            kw["cblock"] = int(m.group(4))
        elif m.group(5):
            kw["chunk"] = int(m.group(5))
    return Order(**kw)


#: the orders the deviation sweep compares, by name
STANDARD_ORDERS = (
    "seq", "seq+fma", "pairwise", "lanes4", "lanes8", "lanes16",
    "lanes4+fma", "lanes8+fma", "lanes16+fma", "seq+t2", "seq+fma+t2", "rsc", "rsc+fma",
    "cb8+fma", "cb16+fma",
)


def candidate_orders() -> list[Order]:
    """A wider family for `identify`: loop order x lanes/pairwise x fma x split x bias (450)."""
    out = []
    for cblock in (None, 4, 8, 16, RSC):
        for lanes, pairwise in ((1, False), (4, False), (8, False), (16, False), (1, True)):
            for fma in (False, True):
                if pairwise and fma:
                    continue
                for threads, chunk in ((1, None), (2, None), (4, None), (1, 8), (1, 16)):
                    for bias in ("last", "first"):
                        out.append(Order(lanes, pairwise, threads, fma, cblock, bias, chunk))
    return out


def fma32(p: np.ndarray, acc: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``RN32(p + acc)`` with one rounding: exact float32 fused multiply-add.

    Parameters
    ----------
    p : float64 ndarray
        Exact products of float32 numbers (computed in float64, where they are exact).
    acc : float32 ndarray
        The accumulators, same shape.
    out : float32 ndarray, optional
        Where to write (may be ``acc``); C-contiguous, same shape.

    Returns
    -------
    float32 ndarray
        The correctly rounded sum (TwoSum in float64, round to odd, then round to float32;
        see the module docstring), computed by a Numba loop.
    """
    from ._kernels import fma_into

    p = np.ascontiguousarray(p, dtype=np.float64)
    acc = np.ascontiguousarray(acc, dtype=np.float32)
    if p.shape != acc.shape:
        raise ConvError(f"fma32: shapes {p.shape} and {acc.shape} differ")
    if out is None:
        out = np.empty_like(acc)
    fma_into(p.reshape(-1), acc.reshape(-1), out.reshape(-1))
    return out


def reduction_sequence(spec: ConvSpec, order: Order) -> list[tuple[int, int, int]]:
    """The reduction indices ``(c, r, s)`` in the order ``order.cblock`` visits them."""
    Cg, R, S = spec.Cg, spec.R, spec.S
    if order.cblock is None:
        return [(c, r, s) for c in range(Cg) for r in range(R) for s in range(S)]
    B = min(order.cblock, Cg)
    return [
        (c0 + c, r, s)
        for c0 in range(0, Cg, B)
        for r in range(R)
        for s in range(S)
        for c in range(min(B, Cg - c0))
    ]


def _product_fn(spec: ConvSpec, xp: np.ndarray, w: np.ndarray) -> Callable:
    """``prod(t, exact)``: the products of reduction index t for every output, (N, K, OH, OW)."""
    N, K, OH, OW = spec.out_shape
    G, Cg, Kg = spec.groups, spec.Cg, spec.Kg
    (sh, sw), (dh, dw) = spec.stride, spec.dilation
    wg = w.reshape(G, Kg, Cg, spec.R, spec.S)

    def prod(t, exact: bool) -> np.ndarray:
        c, r, s = t
        i0, j0 = r * dh, s * dw
        xs = xp[:, c::Cg, i0 : i0 + sh * (OH - 1) + 1 : sh, j0 : j0 + sw * (OW - 1) + 1 : sw]
        ws = wg[:, :, c, r, s]
        if exact:
            xs, ws = xs.astype(np.float64), ws.astype(np.float64)
        return (xs[:, :, None] * ws[None, :, :, None, None]).reshape(N, K, OH, OW)

    return prod


def _chunks(seq, order: Order) -> list[list[int]]:
    """Positions in ``seq`` of each independently reduced chunk, in the order they are added."""
    if order.chunk is None:
        return [list(c) for c in np.array_split(np.arange(len(seq)), order.threads) if len(c)]
    out: list[list[int]] = []
    last = None
    for i, (c, _, _) in enumerate(seq):
        key = c // order.chunk
        if key != last:
            out.append([])
            last = key
        out[-1].append(i)
    return out


def _reduce_chunk(seq, order: Order, prod, init, shape) -> np.ndarray:
    if order.pairwise:

        def rec(lo: int, hi: int) -> np.ndarray:
            if hi - lo == 1:
                return prod(seq[lo], False)
            mid = (lo + hi) // 2
            return rec(lo, mid) + rec(mid, hi)

        total = rec(0, len(seq))
        return total if init is None else init + total
    L = order.lanes
    acc = [np.zeros(shape, dtype=np.float32) for _ in range(L)]
    if init is not None:
        acc[0] = init + acc[0]
    for i, t in enumerate(seq):
        lane = i % L
        if order.fma:
            fma32(prod(t, True), acc[lane], out=acc[lane])
        else:
            acc[lane] = acc[lane] + prod(t, False)
    width = L
    while width > 1:
        half = width // 2
        for j in range(half):
            acc[j] = acc[j] + acc[j + half]
        width = half
    return acc[0]


def conv2d(
    x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *, order: str | Order = "seq"
) -> np.ndarray:
    """float32 2D convolution (PyTorch semantics) summed in the given accumulation order.

    Parameters
    ----------
    x : ndarray, (N, C, H, W), float32
    w : ndarray, (K, C/groups, R, S), float32
    bias : ndarray, (K,), float32, optional
    stride, padding, dilation, groups
        As `convolab.conv2d`.
    order : str or Order
        E.g. ``"seq+fma"`` (convolab's ``direct``), ``"seq"``, ``"lanes16+fma"``, ``"cb16+fma"``,
        ``"pairwise"``; see `parse_order`.

    Returns
    -------
    ndarray, (N, K, OH, OW), float32

    Notes
    -----
    Every addition is a single correctly rounded float32 operation in the stated order, and
    fused multiply-adds are emulated exactly (module docstring), so the result does not depend
    on the machine it runs on.
    """
    order = parse_order(order)
    x = np.asarray(x)
    w = np.asarray(w)
    b = None if bias is None else np.asarray(bias)
    for a, what in ((x, "input"), (w, "weight"), (b, "bias")):
        if a is not None and a.dtype != np.float32:
            raise ConvError(f"orders.conv2d computes in float32; the {what} is {a.dtype}")
    spec = ConvSpec.from_arrays(x, w, b, stride, padding, dilation, groups)
    pl, pr, pt, pb = spec.padding
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    prod = _product_fn(spec, xp, np.ascontiguousarray(w))
    shape = spec.out_shape
    seq = reduction_sequence(spec, order)
    bcol = None if b is None else np.broadcast_to(b.reshape(1, -1, 1, 1), shape)
    chunks = _chunks(seq, order)
    total = None
    for ci, idx in enumerate(chunks):
        init = bcol if (ci == 0 and order.bias == "first") else None
        part = _reduce_chunk([seq[i] for i in idx], order, prod, init, shape)
        total = part if total is None else total + part
    if bcol is not None and order.bias == "last":
        total = total + bcol
    return np.ascontiguousarray(total, dtype=np.float32)


def identify(
    y, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1, *,
    candidates: Iterable[str | Order] | None = None,
) -> list[str]:
    """Names of the candidate orders whose `conv2d` reproduces ``y`` bit for bit.

    Parameters
    ----------
    y : ndarray, float32
        An observed output (e.g. PyTorch's on some thread count and ISA).
    x, w, bias, stride, padding, dilation, groups
        The convolution that produced it.
    candidates : iterable of str or Order, optional
        Orders to try; default `candidate_orders`.

    Returns
    -------
    list of str
        The matching order names (empty when none reproduces ``y``).
    """
    y = np.ascontiguousarray(y)
    found = []
    seen = set()
    for o in candidate_orders() if candidates is None else candidates:
        o = parse_order(o)
        if o.bias == "first" and bias is None:
            continue
        yo = conv2d(x, w, bias, stride, padding, dilation, groups, order=o)
        key = yo.tobytes()
        if key == y.tobytes() and o.name not in seen:
            found.append(o.name)
        seen.add(o.name)
    return found
