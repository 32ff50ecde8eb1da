"""``digits_cnn``: a small CNN with real trained weights and a real task metric.

Trained at first use on scikit-learn's bundled 8x8 digits (``load_digits``: no
download) with fixed seeds on a deterministic 75/25 split, one thread; the
weights are cached under ``harness.core.cache.cache_root()/weights`` keyed by a
hash of the training recipe, the data and the torch version, and loaded back with
``torch.load(weights_only=True)``. ``evaluate`` is top-1 accuracy on the
held-out quarter; INT8 calibration uses training images.

Optional: without scikit-learn the model is not registered (extra ``zoo``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from harness.core.types import Feeds, TensorSpec
from model_zoo.registry import mark_unavailable, register_model

INSTALL_HINT = "digits_cnn: pip install scikit-learn (extra 'zoo'): it bundles the digits dataset"
SPLIT_SEED = 0
TRAIN_SEED = 0
TEST_FRACTION = 0.25
EPOCHS = 20
TRAIN_BATCH = 64
LEARNING_RATE = 2e-3
BATCH_SIZES = (1, 4)  # declared dynamic batch sizes: the conformance suite tests both on every engine
EVAL_BATCH = BATCH_SIZES[-1]  # evaluate only at a declared (tested) batch size


def unavailable_reason() -> str | None:
    """None when scikit-learn (which ships the dataset) is importable."""
    return INSTALL_HINT if importlib.util.find_spec("sklearn") is None else None


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool and a two-layer classifier on 1x8x8 images."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass(frozen=True)
class DigitsSplit:
    """Images scaled to [0, 1] as N x 1 x 8 x 8 float32, labels int64."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


@functools.cache
def split() -> DigitsSplit:
    """The deterministic train/held-out split (seeded permutation, 25% held out)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]
    y = data.target.astype(np.int64)
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = int(len(x) * TEST_FRACTION)
    test, train = order[:n_test], order[n_test:]
    return DigitsSplit(x[train], y[train], x[test], y[test])


def train(data: DigitsSplit) -> dict[str, torch.Tensor]:
    """Train from the seeds on one thread (reproducible on a given machine); returns the state dict."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread: reproducible sums, and no oversubscription beside running engines
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(TRAIN_SEED)
            net = DigitsCNN()
            opt = torch.optim.Adam(net.parameters(), LEARNING_RATE)
            x, y = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
            order = torch.Generator().manual_seed(TRAIN_SEED)
            net.train()
            for _ in range(EPOCHS):
                perm = torch.randperm(len(x), generator=order)
                for i in range(0, len(perm), TRAIN_BATCH):
                    idx = perm[i: i + TRAIN_BATCH]
                    opt.zero_grad()
                    nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
                    opt.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def weights_key(data: DigitsSplit) -> str:
    """Hash of the training recipe (network, split and training code, hyperparameters), the data and torch version."""
    recipe = [inspect.getsource(obj) for obj in (DigitsCNN, split, train)]
    recipe.append(repr((SPLIT_SEED, TRAIN_SEED, TEST_FRACTION, EPOCHS, TRAIN_BATCH, LEARNING_RATE)))
    h = hashlib.sha256("\n".join(recipe).encode())
    for arr in (data.train_x, data.train_y, data.test_x, data.test_y):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


def weights_path() -> Path:
    """The cached trained weights, training them first if no verified copy exists."""
    from harness.core.cache import cache_root, cached

    data = split()
    path = cache_root() / "weights" / f"digits_cnn-{weights_key(data)}.pt"
    return cached(path, lambda tmp: torch.save(train(data), tmp))


def trained_model() -> DigitsCNN:
    """The CNN with the trained weights (loaded with ``weights_only=True``)."""
    net = DigitsCNN()
    net.load_state_dict(torch.load(weights_path(), weights_only=True))
    return net.eval()


def top1_accuracy(run: Callable[[Feeds], Mapping[str, np.ndarray]], batch: int = EVAL_BATCH) -> float:
    """Top-1 accuracy of ``run`` on the held-out split, fed ``batch`` images at a time (the last batch may be
    smaller: 449 = 112 x 4 + 1, and 1 is a declared size too)."""
    data = split()
    correct = 0
    for i in range(0, len(data.test_x), batch):
        logits = np.asarray(run({"input": data.test_x[i: i + batch]})["output"])
        correct += int((logits.argmax(axis=1) == data.test_y[i: i + batch]).sum())
    return correct / len(data.test_x)


def _input_sets(rng: np.random.Generator) -> dict[str, Feeds]:
    data = split()
    picks = rng.choice(len(data.test_x), size=8, replace=False)
    return {"held-out-0": {"input": data.test_x[picks[:1]]}, "held-out-1": {"input": data.test_x[picks[1:2]]},
            "held-out-batch-6": {"input": data.test_x[picks[2:]]}}


def _calibration(count: int) -> list[Feeds]:
    data = split()
    picks = np.random.default_rng(TRAIN_SEED).choice(len(data.train_x), size=count, replace=False)
    return [{"input": data.train_x[i: i + 1]} for i in picks]


def _register() -> None:
    reason = unavailable_reason()
    if reason is not None:
        mark_unavailable("digits_cnn", reason)
        return

    @register_model(inputs=[TensorSpec("input", ("batch", 1, 8, 8), low=0.0, high=1.0)],
                    tags={"accuracy", "vision", "classification", "ci", "real-weights"},
                    dynamic_sizes={"batch": BATCH_SIZES}, input_sets=_input_sets, calibration=_calibration,
                    evaluate=top1_accuracy)
    def digits_cnn() -> nn.Module:
        """Small CNN trained on scikit-learn's 8x8 digits (real weights; metric: held-out top-1 accuracy)."""
        return trained_model()


_register()
