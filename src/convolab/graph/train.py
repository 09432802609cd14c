"""Training and evaluation of the models of `convolab.graph.model` on a scene.

Transductive full-scene training as in CEGCN: every epoch runs the whole image (1, C, H, W)
through the network and the cross-entropy is taken over the training pixels only; Adam,
fixed epochs, no early stopping on test pixels. ``torch.manual_seed(seed)`` fixes the initial
weights; the graph kernels are deterministic, torch's CPU convolutions are run to run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import ConvError
from . import metrics
from .model import MGRNet
from .scene import Scene
from .superpixels import SuperpixelScales, build_scales


@dataclass
class Prepared:
    """A scene ready for training: its graph and the network input."""

    scene: Scene
    graph: SuperpixelScales
    x: torch.Tensor  # (1, n_components, H, W) float32
    seconds: float


def prepare(scene: Scene, n_segments=(400, 200, 100), n_components: int = 30, **kw) -> Prepared:
    """PCA, superpixel scales and their graphs (`build_scales`), and the network input."""
    t = time.perf_counter()
    g = build_scales(scene.cube, n_segments=n_segments, n_components=n_components, **kw)
    x = torch.from_numpy(np.ascontiguousarray(g.pcs.transpose(2, 0, 1)[None]))
    return Prepared(scene, g, x, time.perf_counter() - t)


@dataclass
class Result:
    method: str
    seed: int
    scores: dict
    prediction: np.ndarray  # (H, W) classes 1..n
    train_seconds: float
    losses: list = field(default_factory=list)


def _targets(labels, train) -> tuple[torch.Tensor, torch.Tensor]:
    lab = np.asarray(labels).ravel()
    idx = np.flatnonzero(np.asarray(train).ravel())
    if idx.size == 0:
        raise ConvError("the training mask selects no pixel")
    if (lab[idx] <= 0).any():
        raise ConvError("the training mask selects unlabelled pixels (label 0)")
    return torch.from_numpy(idx), torch.from_numpy(lab[idx].astype(np.int64) - 1)


def fit(model: MGRNet, prep: Prepared, train, epochs: int = 300, lr: float = 5e-3, weight_decay: float = 1e-4,
        ) -> tuple[float, list]:
    """Train ``model`` on the pixels of the boolean mask ``train``; returns (seconds, losses)."""
    idx, y = _targets(prep.scene.labels, train)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    losses = []
    model.train()
    t = time.perf_counter()
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        logits = model(prep.x, prep.graph, idx)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return time.perf_counter() - t, losses


def predict(model: MGRNet, prep: Prepared) -> np.ndarray:
    """Class map (H, W), classes 1..n, with torch (the training framework)."""
    model.eval()
    with torch.no_grad():
        logits = model(prep.x, prep.graph)
    return logits.argmax(1).numpy().astype(np.int32).reshape(prep.scene.labels.shape) + 1


def evaluate(prediction, labels, test, n_classes: int) -> dict:
    """`convolab.graph.metrics.scores` over the test pixels."""
    lab = np.asarray(labels)
    m = np.asarray(test) & (lab > 0)
    return metrics.scores(lab[m] - 1, np.asarray(prediction)[m] - 1, n_classes)


def run(prep: Prepared, method: str, train, test, seed: int = 0, epochs: int = 300, width: int = 64,
        single_scale: int = 0, lr: float = 5e-3, dropout: float = 0.5) -> Result:
    """Train one method from seed ``seed`` and score it on ``test``."""
    torch.manual_seed(seed)
    model = MGRNet(prep.x.shape[1], prep.scene.n_classes, len(prep.graph.segments), method, width, single_scale,
                   dropout)
    secs, losses = fit(model, prep, train, epochs, lr)
    pred = predict(model, prep)
    res = Result(method, seed, evaluate(pred, prep.scene.labels, test, prep.scene.n_classes), pred, secs, losses)
    res.model = model
    return res
