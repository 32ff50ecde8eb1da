"""Seed cases from deployment practice: each model carries a behaviour the tests assert.

- ``srcnn_dynamic``: the upscale factor is a second input; the resize goes through a
  ``torch.autograd.Function`` whose ``symbolic`` emits ONNX ``Resize`` with a dynamic
  ``scales`` input ``[1, 1, factor, factor]`` (the classic deployment-tutorial fix), so the
  export follows the factor it is fed.
- ``srcnn_item``: the same network written with ``factor.item()``: tracing turns the factor
  into a constant (TracerWarning), so exported graphs always upsample by the export factor
  (3) and disagree with PyTorch at any other factor: a known failure on ONNX-based engines.
  Both networks are scale-conditioned (the factor also enters as a constant image channel, as
  in scale-aware SR), which keeps ``factor`` a real input of the ``.item()`` graph.
- ``loop_traced`` / ``loop_scripted``: a refinement loop whose step count is a constructor
  argument (held in a buffer). Tracing unrolls it (4 Gemm, no Loop); ``torch.jit.script``
  keeps an ONNX ``Loop``. Scripting a plain ``int`` attribute instead is unrolled too: the
  exporter folds the constant trip count (tests/test_zoo_seeds.py asserts both).
- ``warp_tiny``: a learned-offset warp with ``grid_sample``: ONNX ``GridSample`` needs opset
  16, so it exports at 16 and is the subject of the export suite's opset sweep.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from harness.core.spec import KnownFailure
from harness.core.types import Feeds, TensorSpec
from model_zoo.registry import register_model

EXPORT_FACTOR = 3
OTHER_FACTORS = (2, 4)
LOOP_STEPS = 4


class DynamicResize(torch.autograd.Function):
    """Bicubic resize by a runtime ``scales`` tensor ``[1, 1, fy, fx]``; exports as ONNX Resize(scales=input)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
        fy, fx = scales.tolist()[-2:]
        return nn.functional.interpolate(x, scale_factor=(fy, fx), mode="bicubic", align_corners=False)

    @staticmethod
    def symbolic(g: object, x: object, scales: object) -> object:
        empty_roi = g.op("Constant", value_t=torch.tensor([], dtype=torch.float32))
        return g.op("Resize", x, empty_roi, scales, coordinate_transformation_mode_s="pytorch_half_pixel",
                    cubic_coeff_a_f=-0.75, mode_s="cubic", nearest_mode_s="floor")


class ScaleSRCNN(nn.Module):
    """SRCNN conditioned on its upscale factor: bicubic resize, a factor channel, 9-1-5 convolutions.

    ``resize="dynamic"`` resizes through ``DynamicResize`` (exportable with a runtime
    factor); ``resize="item"`` calls ``factor.item()`` (frozen by tracing).
    """

    def __init__(self, resize: str = "dynamic", channels: tuple[int, int] = (16, 8)) -> None:
        super().__init__()
        if resize not in ("dynamic", "item"):
            raise ValueError(f"resize must be 'dynamic' or 'item', got {resize!r}")
        self.resize = resize
        c1, c2 = channels
        self.conv1 = nn.Conv2d(4, c1, kernel_size=9, padding=4)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=1)
        self.conv3 = nn.Conv2d(c2, 3, kernel_size=5, padding=2)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        f = factor.to(x.dtype).reshape(1)
        if self.resize == "dynamic":
            scales = torch.cat([torch.ones(2, dtype=torch.float32), f.float(), f.float()])
            up = DynamicResize.apply(x, scales)
        else:
            up = nn.functional.interpolate(x, scale_factor=factor.item(), mode="bicubic", align_corners=False)
        level = f.reshape(1, 1, 1, 1).expand(up.shape[0], 1, up.shape[2], up.shape[3])
        return self.conv3(self.relu(self.conv2(self.relu(self.conv1(torch.cat([up, level], dim=1))))))


SR_INPUTS = [TensorSpec("input", (1, 3, "height", "width")),
             TensorSpec("factor", (1,), "int64", low=2, high=5)]


def _sr_example() -> Feeds:
    rng = np.random.default_rng(12345)
    return {"input": rng.random((1, 3, 16, 16), dtype=np.float32), "factor": np.array([EXPORT_FACTOR])}


def sr_input_sets(rng: np.random.Generator) -> dict[str, Feeds]:
    """The export factor and every other factor, on images of the export size and another size."""
    sets = {}
    for factor in (EXPORT_FACTOR, *OTHER_FACTORS):
        for h, w in ((16, 16), (12, 20)):
            image = rng.standard_normal((1, 3, h, w)).astype(np.float32)
            sets[f"factor-{factor}-{h}x{w}"] = {"input": image, "factor": np.array([factor])}
    return sets


SR_SIZES = {"height": (16, 12), "width": (16, 20)}


# Verified on this machine (onnxruntime 1.31, OpenVINO 2026.4 + NNCF 3.4, pnnx 20261020):
DYNAMIC_FAILURES = {
    "ncnn:*": KnownFailure("pnnx converts a saved TorchScript trace, and torch.jit.save cannot serialize the "
                           "Python autograd.Function (prim::PythonOp 'DynamicResize') that carries the ONNX symbolic"),
}


@register_model(inputs=SR_INPUTS, tags={"vision", "super-resolution", "seed", "dynamic-shape", "ci"},
                dynamic_sizes=SR_SIZES, example=_sr_example, input_sets=sr_input_sets,
                known_failures=DYNAMIC_FAILURES)
def srcnn_dynamic() -> nn.Module:
    """Scale-conditioned SRCNN, factor as input; Resize with a dynamic scales input via autograd.Function.symbolic."""
    return ScaleSRCNN("dynamic")


ITEM_FAILURE = KnownFailure(
    f"factor.item() is frozen by tracing (TracerWarning: a tensor converted to a Python number): the exported "
    f"graph always upsamples x{EXPORT_FACTOR} (the export factor), so outputs at factors {OTHER_FACTORS} have "
    "the wrong shape; PyTorch eager is correct"
)


@register_model(inputs=SR_INPUTS, tags={"vision", "super-resolution", "seed", "dynamic-shape", "ci"},
                dynamic_sizes=SR_SIZES, example=_sr_example, input_sets=sr_input_sets,
                known_failures={"ort:*": ITEM_FAILURE, "ov:*": ITEM_FAILURE, "ncnn:*": ITEM_FAILURE,
                                "trt:*": ITEM_FAILURE})
def srcnn_item() -> nn.Module:
    """srcnn_dynamic written with factor.item(): tracing freezes the factor at 3 (known failure off torch)."""
    return ScaleSRCNN("item")


class RefineLoop(nn.Module):
    """``x = x + tanh(fc(x))`` repeated ``steps`` times; ``steps`` is a buffer so scripting keeps a Loop."""

    def __init__(self, steps: int = LOOP_STEPS, features: int = 16) -> None:
        super().__init__()
        self.register_buffer("steps", torch.tensor(steps))
        self.fc = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(int(self.steps)):
            x = torch.tanh(self.fc(x)) + x
        return x


class RefineLoopConst(nn.Module):
    """RefineLoop with a plain ``int`` step count: even scripted, the exporter unrolls it."""

    def __init__(self, steps: int = LOOP_STEPS, features: int = 16) -> None:
        super().__init__()
        self.steps = steps
        self.fc = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.steps):
            x = torch.tanh(self.fc(x)) + x
        return x


LOOP_INPUTS = [TensorSpec("input", ("batch", 16))]


@register_model(inputs=LOOP_INPUTS, tags={"seed", "control-flow", "ci"}, dynamic_sizes={"batch": (2, 5)})
def loop_traced() -> nn.Module:
    """Refinement loop (4 steps, constructor argument) exported by tracing: unrolled."""
    return RefineLoop()


LOOP_NCNN = KnownFailure(
    "ncnn has no control flow: pnnx drops the loop body of a scripted loop (and of an ONNX Loop) and leaves a "
    "prim::Loop layer fed by two pnnx.Expression constants, none of which ncnn implements; reproduction: a "
    "5-line torch.jit.script module with a for loop over a tensor count. The traced (unrolled) loop converts "
    "and matches (loop_traced)")


@register_model(inputs=LOOP_INPUTS, tags={"seed", "control-flow", "ci"}, dynamic_sizes={"batch": (2, 5)},
                known_failures={"ncnn:*": LOOP_NCNN})
def loop_scripted() -> nn.Module:
    """The same refinement loop exported from torch.jit.script: an ONNX Loop node."""
    return torch.jit.script(RefineLoop())


class Warp(nn.Module):
    """Predicts a per-pixel offset field and resamples the image with ``grid_sample`` (GridSample, opset 16)."""

    def __init__(self, size: int = 16, hidden: int = 8) -> None:
        super().__init__()
        self.offsets = nn.Sequential(nn.Conv2d(3, hidden, 3, padding=1), nn.ReLU(), nn.Conv2d(hidden, 2, 3, padding=1))
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
        self.register_buffer("base", torch.stack([xs, ys], dim=-1)[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = self.base + 0.1 * torch.tanh(self.offsets(x)).permute(0, 2, 3, 1)
        return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


@register_model(inputs=[TensorSpec("input", ("batch", 3, 16, 16))], tags={"vision", "seed", "opset", "ci"},
                dynamic_sizes={"batch": (1, 2)}, opset=16)
def warp_tiny() -> nn.Module:
    """Learned-offset image warp with grid_sample: needs ONNX opset >= 16 (GridSample)."""
    return Warp()
