"""Slot layouts of a (C, H, W) feature map in CKKS ciphertexts: CA, RA and multiplexed.

Spatial embedding (CA and RA). The H x W map lives in a ``grid_h x grid_w`` grid, pixel
``(i, j)`` at grid position ``(gap*i, gap*j)``, row-major; one channel's grid occupies a block
of ``block = next_pow2(grid_h*grid_w)`` slots, and a ciphertext of S slots has
``n = S / block`` blocks. A stride-2 convolution keeps the grid and doubles the gap (the
output pixels are where the strided windows were centred), so no slot permutation is ever
needed. The ``gap x gap`` grid cells of a pixel are its *gap cells*: cell ``(a, b)`` is grid
position ``(gap*i + a, gap*j + b)``; cell ``(0, 0)`` is the pixel itself.

- CA (channel-aligned), replicated with ``distinct = m`` channels per ciphertext (HyPHEN,
  Kim et al., IEEE Access 2023, arXiv 2302.02407). With ``m <= n`` the ``m`` channels of
  ciphertext ``t`` (``t*m .. t*m + m - 1``) fill ``period = m`` blocks and that period is
  repeated ``n / m`` times: channel ``t*m + r`` sits in blocks ``r, r + m, r + 2m, ...``.
  With ``m > n`` (2D gap packing, only after stride-2 layers, ``gap >= 2``) the period is
  all ``n`` blocks and ``cells = m / n <= gap^2`` gap cells per pixel hold channels:
  channel ``t*m + r`` sits in block ``r % n``, gap cell number ``e = r // n``, which is
  ``(a, b) = (e // cw, e % cw)`` with ``cw = min(cells, gap)`` cells per cell row. The default
  ``m = n`` is the dense layout. ``ceil(C/m)`` ciphertexts.
- RA (replicated): ciphertext ``c`` holds channel ``c`` copied into all ``n`` blocks (at gap
  cell ``(0, 0)``; other cells hold values no schedule reads); ``C`` ciphertexts.
- MP (multiplexed, Lee et al., ICML 2022): a single ciphertext. With multiplexing gap ``k``
  the grid is ``(k*H) x (k*W)`` and channel ``c`` has pixel ``(i, j)`` at grid position
  ``(k*i + a, k*j + b)`` of sub-block ``t``, where ``t = c // k^2``, ``a = (c % k^2) // k``,
  ``b = c % k``; sub-blocks are ``B = k^2 H W`` slots, ``ct = next_pow2(ceil(C/k^2))`` of
  them (or exactly ``ceil(C/k^2)``, ``sub_blocks=``, as the baseline's authors' code packs
  a 3-channel image), and the ``ct*B`` slots are copied ``p`` times (``p`` the largest power
  of two with ``p*ct*B <= S``) at a spacing of ``S/p``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ConvError


def next_pow2(v: int) -> int:
    """Smallest power of two >= v (v >= 1)."""
    return 1 << (int(v) - 1).bit_length()


def log2(v: int) -> int:
    """log2 of a power of two."""
    return int(v).bit_length() - 1


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
    period : int
        CA: blocks holding one copy of a ciphertext's distinct channels (0: all blocks).
    cells : int
        CA: gap cells per pixel that hold channels (1 unless gap packed).
    t : int
        MP: number of sub-blocks (0: ``next_pow2(ceil(C/k^2))``).
    """

    kind: str
    channels: int
    height: int
    width: int
    gap: int
    grid_h: int
    grid_w: int
    slots: int
    period: int = 0
    cells: int = 1
    t: int = 0

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
    def blocks_per_copy(self) -> int:
        """CA: blocks in one period of the replicated channels (``n`` when dense)."""
        return self.period or self.n_blocks

    @property
    def distinct(self) -> int:
        """CA: distinct channels per ciphertext, ``m = period * cells``."""
        return self.blocks_per_copy * self.cells

    @property
    def cell_cols(self) -> int:
        """CA: gap cells per cell row used for channels."""
        return min(self.cells, self.gap)

    @property
    def sub_blocks(self) -> int:
        """MP: number of sub-blocks ``t``."""
        return self.t or next_pow2(-(-self.channels // self.gap**2))

    @property
    def copies(self) -> int:
        """MP: number of copies ``p`` of the ``t*B`` data slots."""
        return 1 << ((self.slots // (self.sub_blocks * self.block)).bit_length() - 1)

    @property
    def data_slots(self) -> int:
        """Slots after which the data repeats (what a sparse bootstrap has to refresh)."""
        if self.kind == "MP":
            return self.slots // self.copies
        if self.kind == "CA":
            return self.blocks_per_copy * self.block
        return self.block

    @property
    def num_ciphertexts(self) -> int:
        if self.kind == "CA":
            return -(-self.channels // self.distinct)
        if self.kind == "RA":
            return self.channels
        return 1

    def pixel_offsets(self) -> np.ndarray:
        """CA/RA: (H, W) array of each pixel's offset inside its block (gap cell (0, 0))."""
        i = np.arange(self.height) * self.gap
        j = np.arange(self.width) * self.gap
        return i[:, None] * self.grid_w + j[None, :]

    def cell_offset(self, e: int) -> int:
        """CA: slot offset of gap cell number ``e`` from its pixel."""
        a, b = divmod(int(e), self.cell_cols)
        return a * self.grid_w + b

    def position(self, c: int) -> tuple[int, int, int]:
        """CA: ``(ciphertext, block of the first copy, cell offset)`` of channel ``c``."""
        m, P = self.distinct, self.blocks_per_copy
        r = int(c) % m
        return int(c) // m, r % P, self.cell_offset(r // P)

    def describe(self) -> str:
        if self.kind == "MP":
            return (
                f"MP k={self.gap} {self.channels}x{self.height}x{self.width}, "
                f"t={self.sub_blocks}, p={self.copies}"
            )
        rep = ""
        if self.kind == "CA":
            rep = f", m={self.distinct}"
            if self.cells > 1:
                rep += f" ({self.cells} gap cells)"
        return (
            f"{self.kind} {self.channels}x{self.height}x{self.width} gap {self.gap}, "
            f"{self.num_ciphertexts} ct x {self.n_blocks} blocks of {self.block}{rep}"
        )


def _check_pow2(name: str, v) -> int:
    if not isinstance(v, int | np.integer) or v < 1 or v & (v - 1):
        raise ConvError(f"{name} must be a power of two >= 1, got {name}={v!r}")
    return int(v)


def make_layout(kind: str, channels: int, height: int, width: int, slots: int,
                gap: int = 1, distinct: int | None = None,
                sub_blocks: int | None = None) -> Layout:
    """The layout of a freshly packed (C, H, W) map with the given gap; checks it fits.

    Parameters
    ----------
    kind : {"CA", "RA", "MP"}
    channels, height, width : int
    slots : int
    gap : int
        Pixel spacing (CA/RA) or multiplexing factor (MP), a power of two.
    distinct : int, optional
        CA only: distinct channels per ciphertext ``m`` (a power of two); default the number
        of blocks (dense). Above the number of blocks the extra channels go to gap cells.
    sub_blocks : int, optional
        MP only: the number of sub-blocks ``t`` (default ``next_pow2(ceil(C/k^2))``).

    Raises
    ------
    ConvError
        If the kind is unknown, the gap or ``distinct`` is not a power of two, ``distinct``
        needs more gap cells than the gap has, a channel's grid does not fit the slots
        (CA/RA) or the channels do not fit one ciphertext (MP).
    """
    if kind not in ("CA", "RA", "MP"):
        raise ConvError(f"unknown layout kind {kind!r}; choose 'CA', 'RA' or 'MP'")
    _check_pow2("gap", gap)
    for name, v in (("channels", channels), ("height", height), ("width", width)):
        if v < 1:
            raise ConvError(f"{name} must be >= 1, got {name}={v}")
    if distinct is not None and kind != "CA":
        raise ConvError(f"distinct={distinct} applies to the CA layout only, not {kind}")
    if sub_blocks is not None and kind != "MP":
        raise ConvError(f"sub_blocks={sub_blocks} applies to the MP layout only, not {kind}")
    lay = Layout(kind, channels, height, width, gap, gap * height, gap * width, slots)
    check_fits(lay)
    if distinct is not None:
        lay = with_distinct(lay, distinct)
    if sub_blocks is not None:
        need = -(-channels // gap**2)
        if not isinstance(sub_blocks, int | np.integer) or sub_blocks < need:
            raise ConvError(
                f"sub_blocks={sub_blocks!r} cannot hold channels={channels} at k={gap} "
                f"(need >= {need})"
            )
        lay = Layout(kind, channels, height, width, gap, gap * height, gap * width, slots,
                     t=int(sub_blocks))
        check_fits(lay)
    return lay


def with_distinct(lay: Layout, distinct: int | None, channels: int | None = None) -> Layout:
    """The CA layout of ``lay``'s grid with ``distinct`` channels per ciphertext (see
    `make_layout`); ``channels`` replaces the channel count."""
    C = lay.channels if channels is None else channels
    n = lay.n_blocks
    if distinct is None:
        return Layout("CA", C, lay.height, lay.width, lay.gap, lay.grid_h, lay.grid_w, lay.slots)
    m = _check_pow2("distinct", distinct)
    period, cells = (m, 1) if m <= n else (n, m // n)
    if cells > lay.gap**2:
        raise ConvError(
            f"distinct={m} needs {cells} gap cells per pixel but gap {lay.gap} has "
            f"{lay.gap**2} ({n} blocks per ciphertext)"
        )
    return Layout("CA", C, lay.height, lay.width, lay.gap, lay.grid_h, lay.grid_w, lay.slots,
                  period=0 if period == n else period, cells=cells)


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


def ca_slots(lay: Layout, c: int, offsets: np.ndarray) -> tuple[int, np.ndarray]:
    """CA: ``(ciphertext, slot indices)`` of channel ``c`` at in-block ``offsets`` (pixel
    offsets of cell (0, 0)), over every copy of the period."""
    t, blk, cell = lay.position(c)
    P, Bs = lay.blocks_per_copy, lay.block
    blocks = blk + P * np.arange(lay.n_blocks // P)
    return t, (blocks[:, None] * Bs + cell + np.asarray(offsets).reshape(-1)[None, :]).reshape(-1)


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
    out = [np.zeros(S) for _ in range(lay.num_ciphertexts)]
    reps = n // lay.blocks_per_copy
    for c in range(lay.channels):
        t, idx = ca_slots(lay, c, off)
        out[t][idx] = np.tile(chans[c], reps)
    return out


def unpack(lay: Layout, vectors: list) -> np.ndarray:
    """The (C, H, W) float64 array held by decrypted slot vectors (None stands for zeros).

    CA data are read from the first copy of each channel.
    """
    C, H, W = lay.channels, lay.height, lay.width
    out = np.zeros((C, H, W))
    if lay.kind == "MP":
        v = vectors[0]
        if v is None:
            return out
        k, t, B = lay.gap, lay.sub_blocks, lay.block
        sub = np.asarray(v)[: t * B].reshape(t, H, k, W, k).transpose(0, 2, 4, 1, 3)
        return sub.reshape(t * k * k, H, W)[:C].copy()
    Bs = lay.block
    off = lay.pixel_offsets()
    for c in range(C):
        if lay.kind == "RA":
            v, base = vectors[c], 0
        else:
            t, blk, cell = lay.position(c)
            v, base = vectors[t], blk * Bs + cell
        if v is not None:
            out[c] = np.asarray(v)[base + off]
    return out
