"""``convolab bench --dtype int8``: the exact int8 convolutions of `convolab.quant` against
quantized peers, per layer of a suite.

Data: each layer's float data (`runner.layer_data`) quantised symmetrically with
`convolab.quant.quantize`: activations per tensor, ``s_x = max |x| / 127``; weights per output
channel, ``s_w[k] = max |w[k]| / 127`` (`convolab.quant.weight_scales`); both scales rounded to
float32 first, so every implementation is given the same int8 codes and the same scales.

Implementations:

- every method of `convolab.quant.intconv.METHODS`, through a plan made once,
  ``plan_int8(xq.shape, wq, stride, padding, dilation, groups, method=m)(xq, out)`` (int32 out,
  exact);
- the compiled int8 fast algorithms (`convolab.quant.fastint8`: ``winograd_f2x3``,
  ``sfc4_4x3``, ``sfc6_6x3``; 3x3 stride-1 layers, one group): the filter ``wq s_w``
  transformed and quantised per (output channel, frequency), the transform domain calibrated
  on the layer's own input (min / max), float32 output; their error, like the peers', in
  output steps against the exact result (the transform domain's requantisation costs a few);
- ``onnxruntime-qlinearconv``: ONNX Runtime's CPU ``QLinearConv`` on a one-node model built with
  ``onnx.helper``: uint8 activations ``xq + 128`` with ``x_zero_point = 128``, int8 weights with
  the per-output-channel scales and zero points 0, no bias, uint8 output;
- ``torch-quantized``: ``torch.ao.nn.quantized.Conv2d`` (``quantized::conv2d``) on the x86
  engine (fbgemm where x86 is missing): quint8 activations (the same ``xq + 128``, zero point
  128), per-channel qint8 weights, quint8 output.

The peers requantise their output to uint8 with ``y_zero_point = 128`` and ``y_scale = max |y| /
127``, ``y = acc * s_x * s_w[k]`` the exact real output (a calibrated output range).

Per implementation: the minimum time over ``repeat`` calls in interleaved rounds
(`runner.time_interleaved`), GMAC/s as direct-convolution multiply-adds
``N * K * OH * OW * (C/groups) * R * S`` per second, and the error against
`convolab.reference.conv2d` on the codes (exact int64): for the int32 methods ``max |y - ref|``
(0 for an exact method); for the peers ``max |dequantised y - ref * s_x * s_w[k]| / y_scale``, in
units of the output step (0.5 for a correctly rounded requantisation).

Two things to read the figures by (docs/quant.md): convolab's methods return exact int32 results
(four bytes per output) where the peers requantise to uint8 (one byte); and with full-range uint8
activations PyTorch's fbgemm depthwise kernel can be many output steps off (int16 saturation of
u8 x s8 pairs; PyTorch's x86 / fbgemm qconfig uses 7-bit activations for this).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .. import reference
from ..errors import ConvError, UnsupportedError
from ..quant import intconv, plan_int8, qmax, quantize, weight_scales
from ..spec import ConvSpec
from .peers import ort_session
from .runner import layer_data, time_records

#: zero point of the uint8 activations and outputs handed to the peers
ZERO_POINT = 128


@dataclass(frozen=True)
class Int8Data:
    """One layer's int8 codes, their scales, the exact result and the peers' output scale."""

    xq: np.ndarray  # int8 (N, C, H, W)
    wq: np.ndarray  # int8 (K, C/groups, R, S)
    x_scale: float
    w_scales: np.ndarray  # float64 (K,), float32-representable
    ref: np.ndarray  # int64 (N, K, OH, OW): reference.conv2d on the codes
    y_scale: float

    @property
    def xu(self) -> np.ndarray:
        """The activations as uint8 with zero point 128: ``xq + 128``."""
        return (self.xq.astype(np.int16) + ZERO_POINT).astype(np.uint8)

    @property
    def real(self) -> np.ndarray:
        """The exact real output ``ref * s_x * s_w[k]`` (float64)."""
        return self.ref * (self.x_scale * self.w_scales)[None, :, None, None]


def int8_data(spec: ConvSpec, seed: int = 0) -> Int8Data:
    """The layer's float data (`runner.layer_data`) as int8 codes; see the module notes."""
    x, w = layer_data(spec, seed)
    q = qmax(8)
    amax = float(np.abs(x).max())
    sx = float(np.float32(amax / q)) if amax > 0 else 1.0
    sw = weight_scales(w).astype(np.float32).astype(np.float64)
    xq = quantize(x, sx)
    wq = quantize(w, sw, axis=0)
    ref = reference.conv2d(xq, wq, **_conv_args(spec))
    ymax = float(np.abs(ref * (sx * sw)[None, :, None, None]).max()) if ref.size else 0.0
    ys = float(np.float32(ymax / q)) if ymax > 0 else 1.0
    return Int8Data(xq, wq, sx, sw, ref, ys)


def _conv_args(spec: ConvSpec) -> dict:
    return dict(stride=spec.stride, padding=spec.padding, dilation=spec.dilation, groups=spec.groups)


@dataclass
class Int8Record:
    layer: str
    spec: str
    impl: str
    kind: str  # "algorithm" (a method of convolab.quant) or "peer"
    dtype: str = "int8"
    output: str | None = None  # "int32" (exact) or "uint8" (requantised)
    ms: float | None = None
    gmacs: float | None = None  # 1e9 direct multiply-adds per second
    macs: int | None = None
    max_abs_err: float | None = None  # int32 output: max |y - ref|
    max_err_y_scale: float | None = None  # uint8 output: max |deq(y) - ref * scales| / y_scale
    y_scale: float | None = None
    skipped: str | None = None


# ---------------------------------------------------------------------------- peers
@dataclass(frozen=True)
class Int8Peer:
    name: str
    description: str
    #: returns None when usable, else why not
    available: Callable[[], str | None]
    #: (spec, data, threads) -> (call returning the peer's raw output, decode: raw -> float64 real)
    make: Callable[[ConvSpec, Int8Data, int], tuple[Callable[[], object], Callable[[object], np.ndarray]]]


def _ort_missing() -> str | None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return "onnx and onnxruntime are not installed (pip install 'convolab[peers]')"
    return None


def _ort_make(spec: ConvSpec, d: Int8Data, threads: int):
    from onnx import TensorProto, helper, numpy_helper

    pl, pr, pt, pb = spec.padding
    K = spec.K
    inits = [
        numpy_helper.from_array(np.array(d.x_scale, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "x_zero_point"),
        numpy_helper.from_array(np.ascontiguousarray(d.wq), "w"),
        numpy_helper.from_array(d.w_scales.astype(np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(K, np.int8), "w_zero_point"),
        numpy_helper.from_array(np.array(d.y_scale, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(ZERO_POINT, np.uint8), "y_zero_point"),
    ]
    node = helper.make_node(
        "QLinearConv",
        ["x", "x_scale", "x_zero_point", "w", "w_scale", "w_zero_point", "y_scale", "y_zero_point"],
        ["y"], strides=list(spec.stride), dilations=list(spec.dilation), group=spec.groups,
        pads=[pt, pl, pb, pr], kernel_shape=[spec.R, spec.S],
    )
    graph = helper.make_graph(
        [node], "qconv",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, list(spec.x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, list(spec.out_shape))],
        initializer=inits,
    )
    sess = ort_session(graph, threads)
    feed = {"x": d.xu}
    return (lambda: sess.run(None, feed)[0]), (
        lambda y: (y.astype(np.float64) - ZERO_POINT) * np.float64(np.float32(d.y_scale))
    )


def _torch_engine() -> str | None:
    import torch

    engines = torch.backends.quantized.supported_engines
    return next((e for e in ("x86", "fbgemm") if e in engines), None)


def _torch_missing() -> str | None:
    try:
        import torch  # noqa: F401
        from torch.ao.nn.quantized import Conv2d  # noqa: F401
    except ImportError:
        return "PyTorch with torch.ao.nn.quantized is not installed (pip install 'convolab[torch]')"
    if _torch_engine() is None:
        return (f"this PyTorch build has neither the x86 nor the fbgemm quantized engine "
                f"(supported: {', '.join(torch.backends.quantized.supported_engines)})")
    return None


def _torch_make(spec: ConvSpec, d: Int8Data, threads: int):
    import torch
    from torch.ao.nn.quantized import Conv2d

    pl, pr, pt, pb = spec.padding
    if pl != pr or pt != pb:
        raise UnsupportedError("torch-quantized", f"asymmetric padding {spec.padding}", [])
    torch.backends.quantized.engine = _torch_engine()
    torch.set_num_threads(threads)
    K = spec.K
    with warnings.catch_warnings():  # PyTorch 2.13 deprecates quantized tensor creation (once)
        warnings.filterwarnings("ignore", message=".*quantized tensor creation.*", category=UserWarning)
        # the codes as they are (quantize_per_tensor would round x / scale again)
        qx = torch._make_per_tensor_quantized_tensor(torch.from_numpy(d.xu), d.x_scale, ZERO_POINT)
        qw = torch._make_per_channel_quantized_tensor(
            torch.from_numpy(np.ascontiguousarray(d.wq)), torch.from_numpy(d.w_scales),
            torch.zeros(K, dtype=torch.long), 0,
        )
        m = Conv2d(spec.C, K, (spec.R, spec.S), stride=spec.stride, padding=(pt, pl),
                   dilation=spec.dilation, groups=spec.groups, bias=False)
        m.set_weight_bias(qw, None)
    m.scale, m.zero_point = d.y_scale, ZERO_POINT

    def run():
        with torch.no_grad():
            return m(qx)

    return run, lambda y: y.dequantize().numpy().astype(np.float64)


INT8_PEERS = {
    "onnxruntime-qlinearconv": Int8Peer(
        "onnxruntime-qlinearconv", "ONNX Runtime CPU, one-node QLinearConv model (u8 x s8, uint8 out)",
        _ort_missing, _ort_make,
    ),
    "torch-quantized": Int8Peer(
        "torch-quantized", "PyTorch torch.ao.nn.quantized.Conv2d, x86/fbgemm engine (quint8 x qint8)",
        _torch_missing, _torch_make,
    ),
}

#: what ``--peers NAME`` means with ``--dtype int8``
INT8_PEER_GROUPS = {
    "onnxruntime": ["onnxruntime-qlinearconv"], "ort": ["onnxruntime-qlinearconv"],
    "torch": ["torch-quantized"],
}


def resolve_peers(names: str | None) -> tuple[list[Int8Peer], dict[str, str]]:
    """The int8 peers to time and those left out with the reason.

    ``None``: every peer that is available here (the others are returned with why not).
    Otherwise a comma-separated list of names (or ``onnxruntime``, ``ort``, ``torch``); a named
    peer that is unavailable is a `ConvError`.
    """
    if not names:
        peers, missing = [], {}
        for p in INT8_PEERS.values():
            why = p.available()
            if why:
                missing[p.name] = why
            else:
                peers.append(p)
        return peers, missing
    out: list[Int8Peer] = []
    for n in (s.strip() for s in names.split(",") if s.strip()):
        for e in INT8_PEER_GROUPS.get(n, [n]):
            if e not in INT8_PEERS:
                raise ConvError(
                    f"unknown int8 peer {n!r}; available: {', '.join([*INT8_PEERS, *INT8_PEER_GROUPS])}"
                )
            why = INT8_PEERS[e].available()
            if why:
                raise ConvError(f"peer {e!r} is unavailable: {why}")
            if INT8_PEERS[e] not in out:
                out.append(INT8_PEERS[e])
    return out, {}


def _all_methods() -> tuple[str, ...]:
    from ..kernels._int8_fast import ALGORITHMS

    return (*intconv.METHODS, *ALGORITHMS)


def resolve_methods(names: str | None) -> list[str]:
    """Methods named in a comma-separated list (all when None): those of
    `convolab.quant.intconv.METHODS` and the compiled int8 fast algorithms
    (`convolab.quant.fastint8`)."""
    known = _all_methods()
    if not names:
        return list(known)
    out = []
    for n in (s.strip() for s in names.split(",") if s.strip()):
        if n not in known:
            raise ConvError(f"unknown int8 method {n!r}; available: {', '.join(known)}")
        if n not in out:
            out.append(n)
    return out


def _set_up(rec: Int8Record, make, real: np.ndarray, y_scale: float, calls: dict) -> None:
    """One implementation with a requantised or float output: ``make()`` -> (its call, its
    first result as real values); the error in output steps, or the reason it is skipped."""
    try:
        call, y = make()
    except UnsupportedError as e:
        rec.skipped = e.reason
    else:
        rec.max_err_y_scale = float(np.abs(y - real).max() / y_scale) if y.size else 0.0
        calls[rec.impl] = call


def _fast_call(spec: ConvSpec, d: Int8Data, name: str, threads: int) -> Callable[[], object]:
    """A compiled int8 fast algorithm (`convolab.quant.fastint8`) on the layer: the filter the
    int8 weights stand for (``wq s_w``), its transform quantised per (output channel,
    frequency), the transform domain calibrated on the layer's own input (min / max per
    frequency), the activations' codes; float32 output."""
    from ..quant import QuantConfig, QuantizedConv
    from ..quant.fastint8 import FastInt8Plan

    w = d.wq.astype(np.float64) * d.w_scales[:, None, None, None]
    q = QuantizedConv(w, None, **_conv_args(spec), config=QuantConfig(name))
    if q.t is None:
        raise UnsupportedError(name, q.note.split(": ", 1)[-1], list(intconv.METHODS))
    if spec.groups != 1:
        raise UnsupportedError(name, "the compiled int8 fast path runs one group",
                               list(intconv.METHODS))
    x = d.xq.astype(np.float32) * np.float32(d.x_scale)
    q.calibrate(x)
    plan = FastInt8Plan(spec, name, q.Uq.astype(np.int8), q.s_u, q.s_v, q.s_x, threads=threads)
    return functools.partial(plan, q.codes(x), np.empty(spec.out_shape, np.float32))


# ---------------------------------------------------------------------------- one layer
def _reason(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0] if lines else ''}"


def bench_layer_int8(
    name: str,
    spec: ConvSpec,
    methods: list[str],
    peers: list[Int8Peer],
    repeat: int,
    threads: int,
    step: Callable[[str], None] = lambda s: None,
) -> list[Int8Record]:
    """Every int8 method and peer on one layer: set up, warm-up call and error first, then all
    timed together by `runner.time_interleaved`; ``step`` is called after each is set up."""
    d = int8_data(spec)
    args = _conv_args(spec)
    macs = spec.direct_multiplies
    records: list[Int8Record] = []
    calls: dict[str, Callable[[], object]] = {}
    fast = [m for m in methods if m not in intconv.METHODS]
    methods = [m for m in methods if m in intconv.METHODS]
    for m in methods:
        rec = Int8Record(name, str(spec), m, "algorithm", output="int32", macs=macs)
        try:
            # weights checked and packed once, as the peers do at set-up
            call = plan_int8(d.xq.shape, d.wq, **args, method=m)
            call = functools.partial(call, d.xq, np.empty(spec.out_shape, np.int32))
            y = call()  # JIT warm-up, first touch
        except UnsupportedError as e:
            rec.skipped = e.reason
        else:
            rec.max_abs_err = float(np.abs(y.astype(np.int64) - d.ref).max()) if y.size else 0.0
            calls[m] = call
        records.append(rec)
        step(m)
    real = d.real
    for m in methods:
        # requantised int8 output at the peers' y_scale: what a network passes on, one byte
        # per output like the peers' uint8 (error in output steps, as theirs)
        impl = f"{m} > int8"
        rec = Int8Record(name, str(spec), impl, "algorithm", output="int8", macs=macs,
                         y_scale=d.y_scale)
        def make(m=m):
            plan = plan_int8(d.xq.shape, d.wq, **args, method=m, output="int8",
                             scale=d.x_scale * d.w_scales, out_scale=d.y_scale)
            call = functools.partial(plan, d.xq, np.empty(spec.out_shape, np.int8))
            return call, call().astype(np.float64) * d.y_scale

        _set_up(rec, make, real, d.y_scale, calls)
        records.append(rec)
        step(impl)
    for m in fast:
        rec = Int8Record(name, str(spec), m, "algorithm", output="float32", macs=macs,
                         y_scale=d.y_scale)
        def make(m=m):
            call = _fast_call(spec, d, m, threads)
            return call, call().astype(np.float64)

        _set_up(rec, make, real, d.y_scale, calls)
        records.append(rec)
        step(m)
    for peer in peers:
        rec = Int8Record(name, str(spec), peer.name, "peer", output="uint8", macs=macs, y_scale=d.y_scale)
        try:
            call, decode = peer.make(spec, d, threads)
            y = decode(call())
        except UnsupportedError as e:
            rec.skipped = e.reason
        except Exception as e:  # a peer's own refusal (ORT / PyTorch runtime errors) skips it
            rec.skipped = _reason(e)
        else:
            rec.max_err_y_scale = float(np.abs(y - real).max() / d.y_scale) if y.size else 0.0
            calls[peer.name] = call
        records.append(rec)
        step(peer.name)
    return time_records(records, calls, repeat, "gmacs", macs)
