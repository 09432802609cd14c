"""ConvSpec: the shape and hyper-parameters of one 2D convolution, validated once.

Semantics are PyTorch's ``torch.nn.functional.conv2d`` (cross-correlation):

    y[n, k, i, j] = b[k] + sum_{c, a, e} x[n, g*Cg + c, i*sh + a*dh - pt, j*sw + e*dw - pl]
                                         * w[k, c, a, e]

with ``g = k // (K / groups)``, ``Cg = C / groups`` and zeros outside the input.

Padding is stored as four ints in the order **(left, right, top, bottom)** -- the order of
``torch.nn.functional.pad`` for the last two axes -- and is accepted as an int, a pair
``(pad_h, pad_w)``, four ints in that order, ``"valid"`` (no padding) or ``"same"`` (output
size equals input size; stride 1 only; the odd pixel of an even total goes right/bottom, as in
PyTorch).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from .errors import ConvError

#: dtypes a floating-point convolution accepts; float16 computes in float32.


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints, each >= 1 (stride, dilation)."""
    if _is_int(value):
        pair = (int(value), int(value))
    else:
        try:
            pair = tuple(value)
        except TypeError:
            raise ConvError(f"{name} must be an int or a pair of ints, got {value!r}") from None
        if len(pair) != 2 or not all(_is_int(v) for v in pair):
            raise ConvError(f"{name} must be an int or a pair of ints, got {value!r}")
        pair = (int(pair[0]), int(pair[1]))
    if min(pair) < 1:
        raise ConvError(f"{name} must be >= 1, got {value!r}")
    return pair


def normalize_padding(
    padding, R: int, S: int, dilation: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int, int, int]:
    """Return padding as (left, right, top, bottom); see the module docstring."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ConvError(
                    f"padding='same' is not supported for strided convolutions "
                    f"(stride={stride}); give the padding explicitly"
                )
            th = dilation[0] * (R - 1)
            tw = dilation[1] * (S - 1)
            return (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        raise ConvError(f"padding must be an int, a pair, four ints, 'same' or 'valid'; got {padding!r}")
    if _is_int(padding):
        p = int(padding)
        pads = (p, p, p, p)
    else:
        try:
            vals = tuple(padding)
        except TypeError:
            raise ConvError(f"padding must be an int, a pair, four ints, 'same' or 'valid'; got {padding!r}") from None
        if not all(_is_int(v) for v in vals) or len(vals) not in (2, 4):
            raise ConvError(
                f"padding must be an int, a pair (pad_h, pad_w), four ints (left, right, top, bottom), "
                f"'same' or 'valid'; got {padding!r}"
            )
        if len(vals) == 2:
            ph, pw = int(vals[0]), int(vals[1])
            pads = (pw, pw, ph, ph)
        else:
            pads = tuple(int(v) for v in vals)
    if min(pads) < 0:
        raise ConvError(f"padding must be >= 0, got {padding!r}")
    return pads


def _check_dtype(dtype, what: str) -> np.dtype:
    dt = np.dtype(dtype)
    if dt.kind in "fiu" and dt.kind != "b":
        return dt
    raise ConvError(
        f"unsupported dtype {dt} for {what}: convolab convolves float16, float32 and float64 "
        f"arrays (integers through the reference and convolab.quant)"
    )


@dataclass(frozen=True)
class ConvSpec:
    """Everything about a 2D convolution except the data.

    Parameters
    ----------
    N, C, H, W : int
        Batch, input channels, input height and width.
    K, R, S : int
        Output channels, kernel height and width.
    stride, dilation : tuple of int
        (vertical, horizontal).
    padding : tuple of int
        (left, right, top, bottom).
    groups : int
        Channel groups; ``groups == C == K`` is depthwise.
    dtype : numpy.dtype
        The input dtype (float16, float32, float64, or an integer type for the reference).
    """

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    dtype: np.dtype = np.dtype(np.float32)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_shapes(
        cls,
        x_shape,
        w_shape,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        dtype=np.float32,
        bias_shape=None,
    ) -> ConvSpec:
        """Validate shapes and hyper-parameters; raise `ConvError` naming the bad value."""
        x_shape = tuple(x_shape)
        w_shape = tuple(w_shape)
        if len(x_shape) != 4:
            raise ConvError(
                f"input must be 4-D (N, C, H, W), got {len(x_shape)}-D shape {x_shape}"
            )
        if len(w_shape) != 4:
            raise ConvError(
                f"weight must be 4-D (K, C/groups, R, S), got {len(w_shape)}-D shape {w_shape}"
            )
        for name, shape in (("input", x_shape), ("weight", w_shape)):
            if any((not _is_int(d)) or d < 1 for d in shape):
                raise ConvError(f"{name} sizes must be >= 1, got shape {shape}")
        if not _is_int(groups) or groups < 1:
            raise ConvError(f"groups must be an int >= 1, got {groups!r}")
        N, C, H, W = (int(d) for d in x_shape)
        K, Cg, R, S = (int(d) for d in w_shape)
        if C % groups:
            raise ConvError(f"groups={groups} does not divide the input channels C={C}")
        if K % groups:
            raise ConvError(f"groups={groups} does not divide the output channels K={K}")
        if Cg * groups != C:
            raise ConvError(
                f"input has C={C} channels but weight expects C/groups*groups = "
                f"{Cg}*{groups} = {Cg * groups} (weight shape {w_shape})"
            )
        st = _pair(stride, "stride")
        dil = _pair(dilation, "dilation")
        pads = normalize_padding(padding, R, S, dil, st)
        if bias_shape is not None and tuple(bias_shape) != (K,):
            raise ConvError(f"bias must have shape ({K},), got {tuple(bias_shape)}")
        spec = cls(N, C, H, W, K, R, S, st, pads, dil, int(groups), _check_dtype(dtype, "input"))
        if spec.OH < 1 or spec.OW < 1:
            raise ConvError(
                f"empty output {spec.OH}x{spec.OW}: the dilated kernel "
                f"{spec.dilated_R}x{spec.dilated_S} does not fit the padded input "
                f"{spec.padded_H}x{spec.padded_W}"
            )
        return spec

    @classmethod
    def from_arrays(cls, x, w, bias=None, stride=1, padding=0, dilation=1, groups=1) -> ConvSpec:
        """Validate arrays (shapes and dtypes) and return their spec.

        The spec's dtype is the common dtype of ``x`` and ``w`` (NumPy promotion).
        """
        x_ndim = getattr(x, "ndim", None)
        w_ndim = getattr(w, "ndim", None)
        if x_ndim is None or w_ndim is None:
            raise ConvError("input and weight must be arrays (numpy.ndarray or array-like with .shape)")
        xd = _check_dtype(x.dtype, "input")
        wd = _check_dtype(w.dtype, "weight")
        dtype = np.result_type(xd, wd)
        bias_shape = None
        if bias is not None:
            _check_dtype(bias.dtype, "bias")
            bias_shape = bias.shape
        return cls.from_shapes(x.shape, w.shape, stride, padding, dilation, groups, dtype, bias_shape)

    # ------------------------------------------------------------------ derived sizes
    @property
    def Cg(self) -> int:
        """Input channels per group."""
        return self.C // self.groups

    @property
    def Kg(self) -> int:
        """Output channels per group."""
        return self.K // self.groups

    @property
    def dilated_R(self) -> int:
        return self.dilation[0] * (self.R - 1) + 1

    @property
    def dilated_S(self) -> int:
        return self.dilation[1] * (self.S - 1) + 1

    @property
    def padded_H(self) -> int:
        return self.H + self.padding[2] + self.padding[3]

    @property
    def padded_W(self) -> int:
        return self.W + self.padding[0] + self.padding[1]

    @property
    def OH(self) -> int:
        """Output height."""
        return (self.padded_H - self.dilated_R) // self.stride[0] + 1

    @property
    def OW(self) -> int:
        """Output width."""
        return (self.padded_W - self.dilated_S) // self.stride[1] + 1

    @property
    def x_shape(self) -> tuple[int, int, int, int]:
        return (self.N, self.C, self.H, self.W)

    @property
    def w_shape(self) -> tuple[int, int, int, int]:
        return (self.K, self.Cg, self.R, self.S)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """Output shape (N, K, OH, OW)."""
        return (self.N, self.K, self.OH, self.OW)

    @property
    def depthwise(self) -> bool:
        return self.groups == self.C and self.Cg == 1

    @property
    def reduction_length(self) -> int:
        """Products summed per output: (C/groups) * R * S."""
        return self.Cg * self.R * self.S

    @property
    def flops(self) -> int:
        """Direct-convolution FLOPs: 2 * N * K * OH * OW * (C/groups) * R * S."""
        return 2 * self.N * self.K * self.OH * self.OW * self.reduction_length

    @property
    def direct_multiplies(self) -> int:
        return self.flops // 2

    @property
    def compute_dtype(self) -> np.dtype:
        """float64 stays float64; everything else computes in float32."""
        return np.dtype(np.float64) if self.dtype == np.float64 else np.dtype(np.float32)

    @property
    def out_dtype(self) -> np.dtype:
        """The dtype conv2d returns: the input dtype for floats."""
        return self.dtype if self.dtype.kind == "f" else np.dtype(np.float64)

    def with_dtype(self, dtype) -> ConvSpec:
        from dataclasses import replace

        return replace(self, dtype=np.dtype(dtype))

    def __str__(self) -> str:
        pl, pr, pt, pb = self.padding
        pad = f"{pt}" if len({pl, pr, pt, pb}) == 1 else f"(l{pl},r{pr},t{pt},b{pb})"
        parts = [
            f"N{self.N} C{self.C} {self.H}x{self.W} -> K{self.K} {self.R}x{self.S}",
            f"s{self.stride[0]}" if self.stride[0] == self.stride[1] else f"s{self.stride}",
            f"p{pad}",
        ]
        if self.dilation != (1, 1):
            parts.append(f"d{self.dilation[0]}" if self.dilation[0] == self.dilation[1] else f"d{self.dilation}")
        if self.groups != 1:
            parts.append("dw" if self.depthwise else f"g{self.groups}")
        return " ".join(parts)
