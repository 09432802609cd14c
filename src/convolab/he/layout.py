"""Slot layouts of a (C, H, W) feature map in CKKS ciphertexts: CA, RA and multiplexed.

Spatial embedding (CA and RA). The H x W map lives in a ``grid_h x grid_w`` grid, pixel
``(i, j)`` at grid position ``(gap*i, gap*j)``, row-major; one channel's grid occupies a block
of ``block = next_pow2(grid_h*grid_w)`` slots, and a ciphertext of S slots has
``n = S / block`` blocks. A stride-2 convolution keeps the grid and doubles the gap (the
output pixels are where the strided windows were centred), so no slot permutation is ever
needed; slots at non-pixel positions hold garbage that no schedule reads.

- CA (channel-aligned): block ``j`` of ciphertext ``t`` holds channel ``t*n + j``;
  ``ceil(C/n)`` ciphertexts.
- RA (replicated): ciphertext ``c`` holds channel ``c`` copied into all ``n`` blocks;
  ``C`` ciphertexts.
- MP (multiplexed, Lee et al., ICML 2022): a single ciphertext. With multiplexing gap ``k``
  the grid is ``(k*H) x (k*W)`` and channel ``c`` has pixel ``(i, j)`` at grid position
  ``(k*i + a, k*j + b)`` of sub-block ``t``, where ``t = c // k^2``, ``a = (c % k^2) // k``,
  ``b = c % k``; sub-blocks are ``B = k^2 H W`` slots, ``ct = next_pow2(ceil(C/k^2))`` of
  them, and the ``ct*B`` slots are copied ``p`` times (``p`` the largest power of two with
  ``p*ct*B <= S``) at a spacing of ``S/p``.

HyPHEN (Kim et al., IEEE Access 2023, arXiv 2302.02407) introduced CA/RA; its gap packing is
what the CA/RA gap above stands in for.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConvError


def next_pow2(v: int) -> int:
    """Smallest power of two >= v (v >= 1)."""
    return 1 << (int(v) - 1).bit_length()


@dataclass(frozen=True)
class Layout:
    """Where each value of a (C, H, W) feature map sits in the slots of its ciphertexts.

    Attributes
    ----------
    kind : {"CA", "RA", "MP"}
        Channel-aligned, replicated or multiplexed; see the module docstring.
    channels, height, width : int
        The feature map's shape.
    gap : int
        Grid spacing of neighbouring pixels (CA/RA) or the multiplexing factor k (MP).
    grid_h, grid_w : int
        The grid the map is embedded in.
    slots : int
        Slots per ciphertext.
    """

    kind: str
    channels: int
    height: int
    width: int
    gap: int
    grid_h: int
    grid_w: int
    slots: int

    # ---- derived sizes --------------------------------------------------------------------
    @property
    def block(self) -> int:
        """Slots per block: one channel (CA/RA) or one multiplexed sub-block (MP)."""
        if self.kind == "MP":
            return self.grid_h * self.grid_w
        return next_pow2(self.grid_h * self.grid_w)

    @property
    def n_blocks(self) -> int:
        """Blocks per ciphertext (CA/RA)."""
        return self.slots // self.block

    @property
    def sub_blocks(self) -> int:
        """MP: number of sub-blocks ``t`` (a power of two)."""
        return next_pow2(-(-self.channels // self.gap**2))

    @property
    def copies(self) -> int:
        """MP: number of copies ``p`` of the ``t*B`` data slots."""
        return 1 << ((self.slots // (self.sub_blocks * self.block)).bit_length() - 1)

    @property
    def num_ciphertexts(self) -> int:
        if self.kind == "CA":
            return -(-self.channels // self.n_blocks)
        if self.kind == "RA":
            return self.channels
        return 1

    def pixel_offsets(self) -> np.ndarray:
        """CA/RA: (H, W) array of each pixel's offset inside its block."""
        i = np.arange(self.height) * self.gap
        j = np.arange(self.width) * self.gap
        return i[:, None] * self.grid_w + j[None, :]

    def describe(self) -> str:
        if self.kind == "MP":
            return (
                f"MP k={self.gap} {self.channels}x{self.height}x{self.width}, "
                f"t={self.sub_blocks}, p={self.copies}"
            )
        return (
            f"{self.kind} {self.channels}x{self.height}x{self.width} gap {self.gap}, "
            f"{self.num_ciphertexts} ct x {self.n_blocks} blocks of {self.block}"
        )


def make_layout(kind: str, channels: int, height: int, width: int, slots: int,
                gap: int = 1) -> Layout:
    """The layout of a freshly packed (C, H, W) map with the given gap; checks it fits.

    Raises
    ------
    ConvError
        If the kind is unknown, the gap is not a power of two, a channel's grid does not fit
        the slots (CA/RA) or the channels do not fit one ciphertext (MP).
    """
    if kind not in ("CA", "RA", "MP"):
        raise ConvError(f"unknown layout kind {kind!r}; choose 'CA', 'RA' or 'MP'")
    if gap < 1 or gap & (gap - 1):
        raise ConvError(f"gap must be a power of two >= 1, got gap={gap}")
    for name, v in (("channels", channels), ("height", height), ("width", width)):
        if v < 1:
            raise ConvError(f"{name} must be >= 1, got {name}={v}")
    lay = Layout(kind, channels, height, width, gap, gap * height, gap * width, slots)
    check_fits(lay)
    return lay


def check_fits(lay: Layout) -> None:
    """Raise `ConvError` if ``lay`` does not fit its slots."""
    if lay.kind == "MP":
        need = lay.sub_blocks * lay.block
        if need > lay.slots:
            raise ConvError(
                f"channels={lay.channels} of {lay.height}x{lay.width} (multiplexing gap "
                f"{lay.gap}) need {need} slots in one ciphertext but slots={lay.slots}"
            )
    elif lay.block > lay.slots:
        raise ConvError(
            f"a {lay.grid_h}x{lay.grid_w} channel grid needs {lay.block} slots per block "
            f"but slots={lay.slots}"
        )


def pack(lay: Layout, x: np.ndarray) -> list[np.ndarray]:
    """Slot vectors (one per ciphertext) holding the (C, H, W) array ``x`` in layout ``lay``."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape != (lay.channels, lay.height, lay.width):
        raise ConvError(
            f"array of shape {x.shape} does not match layout "
            f"{(lay.channels, lay.height, lay.width)}"
        )
    S = lay.slots
    if lay.kind == "MP":
        k, t, B, p = lay.gap, lay.sub_blocks, lay.block, lay.copies
        cells = np.zeros((t * k * k, lay.height, lay.width))
        cells[: lay.channels] = x
        # (t, a, b, i, j) -> (t, i, a, j, b): grid row k*i + a, column k*j + b
        sub = cells.reshape(t, k, k, lay.height, lay.width).transpose(0, 3, 1, 4, 2)
        v = np.zeros((p, S // p))
        v[:, : t * B] = sub.reshape(-1)[None, :]
        return [v.reshape(-1)]
    n, Bs = lay.n_blocks, lay.block
    off = lay.pixel_offsets().reshape(-1)
    chans = x.reshape(lay.channels, -1)
    if lay.kind == "RA":
        out = []
        for c in range(lay.channels):
            blk = np.zeros(Bs)
            blk[off] = chans[c]
            out.append(np.tile(blk, n))
        return out
    out = []
    for t in range(lay.num_ciphertexts):
        v = np.zeros((n, Bs))
        cs = chans[t * n : (t + 1) * n]
        v[: len(cs)][:, off] = cs
        out.append(v.reshape(-1))
    return out


def unpack(lay: Layout, vectors: list) -> np.ndarray:
    """The (C, H, W) float64 array held by decrypted slot vectors (None stands for zeros)."""
    C, H, W = lay.channels, lay.height, lay.width
    out = np.zeros((C, H, W))
    if lay.kind == "MP":
        v = vectors[0]
        if v is None:
            return out
        k, t, B = lay.gap, lay.sub_blocks, lay.block
        sub = np.asarray(v)[: t * B].reshape(t, H, k, W, k).transpose(0, 2, 4, 1, 3)
        return sub.reshape(t * k * k, H, W)[:C].copy()
    n, Bs = lay.n_blocks, lay.block
    off = lay.pixel_offsets()
    for c in range(C):
        if lay.kind == "RA":
            v, j = vectors[c], 0
        else:
            v, j = vectors[c // n], c % n
        if v is not None:
            out[c] = np.asarray(v)[j * Bs + off]
    return out
