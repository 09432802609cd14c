"""``convolab.he.conv2d``: one convolution on encrypted data, end to end.

Packs each image of ``x`` (N, C, H, W) into the input layout of the chosen scheme, encrypts
it, runs the schedule on the backend (`schedules`), decrypts and unpacks the result, and
reports the operations and the evaluation time. Schemes: ``"ca"`` (CAConv, CA in / RA out),
``"ra"`` (RAConv, RA in / CA out) -- both from HyPHEN (Kim et al., IEEE Access 2023), with the
replicated CA layout of ``distinct`` channels per ciphertext -- and ``"multiplexed"`` (Lee
et al., ICML 2022, counted as its authors' code runs or with the earlier ``"doubling"``
counting). "Same" padding, 1x1 or 3x3 kernels, stride 1 or 2.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ..errors import ConvError
from .backend import Backend
from .backends import get_backend
from .layout import Layout, make_layout, pack, unpack
from .schedules import EncTensor, ca_conv, check_kernel, check_variant, mp_conv, ra_conv

#: scheme name -> (input layout kind, schedule)
SCHEMES = {"ca": ("CA", ca_conv), "ra": ("RA", ra_conv), "multiplexed": ("MP", mp_conv)}


@dataclass
class HEConvResult:
    """The decrypted output of an encrypted convolution and what it cost.

    Attributes
    ----------
    output : numpy.ndarray
        Decrypted result, float64, shape (N, Cout, OH, OW).
    rotations, pmults, cmults : int
        Key-switching rotations, plaintext and ciphertext multiplications executed (summed
        over the N images).
    hoisted : int
        Rotations counted as members of a hoisted group (``hoist=True``), not in ``rotations``.
    depth : int
        Multiplicative depth consumed (rescales on the longest path).
    seconds : float
        Wall time of the homomorphic evaluation (plaintext encoding included; key generation,
        encryption and decryption excluded), summed over the images.
    encode_seconds : float
        The part of ``seconds`` spent encoding weight and mask plaintexts.
    scheme, backend : str
        The scheme and a description of the backend.
    in_layout, out_layout : Layout
        Layouts of the encrypted input and output.
    """

    output: np.ndarray
    rotations: int
    pmults: int
    cmults: int
    hoisted: int
    depth: int
    seconds: float
    encode_seconds: float
    scheme: str
    backend: str
    in_layout: Layout
    out_layout: Layout


def conv2d(x, w, scheme: str = "ca", backend: str | Backend = "simulated",
           slots: int | None = None, stride: int = 1, gap: int = 1,
           distinct: int | None = None, variant: str = "authors", hoist: bool = False,
           **backend_options) -> HEConvResult:
    """Convolution of encrypted images with plaintext weights, "same" padding.

    Parameters
    ----------
    x : array_like, shape (N, C, H, W)
        Images (encrypted by this call, one image at a time).
    w : array_like, shape (Cout, C, R, R)
        Weights, R = 1 or 3 (plaintext, the server's model).
    scheme : {"ca", "ra", "multiplexed"}
        CAConv (CA in, RA out), RAConv (RA in, CA out) or multiplexed parallel convolution.
    backend : {"simulated", "tenseal"} or Backend
        Exact float64 simulation or real CKKS (TenSEAL/SEAL); an instance is reused (keys
        included).
    slots : int, optional
        Slots per ciphertext (ring dimension / 2). Default 2**15 (simulated), 2**13 (tenseal).
    stride : {1, 2}
        Convolution stride; padding is (R-1)/2 as in ``torch.nn.functional.conv2d``.
    gap : int
        Spatial gap of the input packing (CA/RA) or its multiplexing factor k (multiplexed):
        1 for an image, 2**m after m stride-2 layers.
    distinct : int, optional
        Distinct channels per CA ciphertext ``m`` (a power of two): the input layout of
        ``"ca"``, the output layout of ``"ra"``; above the number of blocks the channels go
        to gap cells (2D gap packing, ``gap >= 2``). Default: dense.
    variant : {"authors", "doubling"}
        ``"multiplexed"`` only: counting as the authors' code runs, or convolab's earlier
        counting (see `convolab.he.schedules`).
    hoist : bool
        ``"ca"`` only: count each input ciphertext's tap rotations as one hoisted group.
    **backend_options
        Passed to the backend constructor (tenseal: ``depth``, ``scale_bits``).

    Returns
    -------
    HEConvResult

    Raises
    ------
    ConvError
        Unknown scheme, variant or backend, unsupported kernel or stride, mismatched channels,
        a channel grid (CA/RA) or the channels (multiplexed) not fitting the slots, a
        ``distinct`` that is not a power of two or needs more gap cells than the gap has, or
        ``distinct`` given to the multiplexed scheme.

    Notes
    -----
    Costs per layer are in `convolab.he.schedules`. On ``simulated`` the output equals
    ``convolab.reference.conv2d(x, w, stride=stride, padding=(R-1)//2)`` up to float64
    rounding; on ``tenseal`` up to CKKS noise (about 1e-6 relative at scale 2**40).
    """
    if scheme not in SCHEMES:
        raise ConvError(f"unknown scheme {scheme!r}; choose 'ca', 'ra' or 'multiplexed'")
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    if x.ndim != 4:
        raise ConvError(f"x must be 4-D (N, C, H, W), got shape {x.shape}")
    check_kernel(w, stride, x.shape[1])
    check_variant(variant)
    kind, schedule = SCHEMES[scheme]
    if distinct is not None and scheme == "multiplexed":
        raise ConvError(f"distinct={distinct} applies to the 'ca' and 'ra' schemes only")
    N, C, H, W = x.shape
    if N < 1:
        raise ConvError(f"x must hold at least one image, got N={N}")
    if slots is not None and not isinstance(backend, Backend):
        if slots < 1 or slots & (slots - 1):
            raise ConvError(f"slots must be a power of two, got slots={slots!r}")
    be = get_backend(backend, slots, **backend_options)
    if scheme == "ca":
        lay = make_layout(kind, C, H, W, be.slots, gap, distinct=distinct)
        opts = dict(hoist=hoist)
    elif scheme == "ra":
        lay = make_layout(kind, C, H, W, be.slots, gap)
        opts = dict(distinct=distinct)
    else:
        exact = -(-C // gap**2) if variant == "authors" else None
        lay = make_layout(kind, C, H, W, be.slots, gap, sub_blocks=exact)
        opts = dict(variant=variant)
    if kind == "MP" and stride == 2 and (H % 2 or W % 2):
        raise ConvError(f"multiplexed stride-2 convolution needs an even map, got {H}x{W}")

    outs, seconds, enc_seconds, depth = [], 0.0, 0.0, 0
    start = be.counts.copy()
    out_lay = None
    for b in range(N):
        cts = [be.encrypt(v) for v in pack(lay, x[b])]
        kg0, enc0 = be.keygen_seconds, be.encode_seconds
        t0 = time.perf_counter()
        res = schedule(be, EncTensor(lay, cts), w, stride, **opts)
        seconds += time.perf_counter() - t0 - (be.keygen_seconds - kg0)
        enc_seconds += be.encode_seconds - enc0
        out_lay = res.layout
        depth = max([depth] + [ct.level for ct in res.cts if ct is not None])
        outs.append(unpack(out_lay, [None if ct is None else be.decrypt(ct) for ct in res.cts]))
    used = be.counts - start
    return HEConvResult(
        output=np.stack(outs),
        rotations=used.rotations,
        pmults=used.pmults,
        cmults=used.cmults,
        hoisted=used.hoisted,
        depth=depth,
        seconds=seconds,
        encode_seconds=enc_seconds,
        scheme=scheme,
        backend=be.describe(),
        in_layout=lay,
        out_layout=out_lay,
    )
