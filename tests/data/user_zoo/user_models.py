"""A user's zoo file as a new user writes it: Hugging Face style dict outputs, undeclared outputs,
a 0-d input and a model whose class lives in a helper module next to this file."""

from __future__ import annotations

import torch
from torch import nn
from user_helpers import Scaler

from model_zoo import TensorSpec, register_model


class DictNet(nn.Module):
    """Returns a dict like every Hugging Face model: ``logits`` and a tuple of hidden states."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> dict[str, object]:
        h0 = torch.tanh(self.a(x))
        h1 = self.b(h0)
        return {"logits": h1.softmax(-1), "hidden": (h0, h1)}


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x)
        return torch.sigmoid(y[:, :3]), y[:, 3:].mean(dim=(2, 3))


class ScaledByScalar(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * scale


@register_model(inputs=[TensorSpec("x", ("batch", 8))], dynamic_sizes={"batch": (1, 3)}, tags={"user"})
def user_dict_outputs() -> nn.Module:
    """Dict outputs (logits, hidden.0, hidden.1)."""
    return DictNet()


@register_model(inputs=[TensorSpec("image", (1, 3, 8, 8))], tags={"user"})
def user_two_outputs() -> nn.Module:
    """Two outputs and no ``outputs=``: named output_0, output_1."""
    return TwoHeads()


@register_model(inputs=[TensorSpec("x", (1, 4)), TensorSpec("scale", ())], tags={"user"})
def user_scalar_input() -> nn.Module:
    """A 0-d input."""
    return ScaledByScalar()


@register_model(inputs=[TensorSpec("image", ("batch", 3, 8, 8))], dynamic_sizes={"batch": (1, 2)}, tags={"user"})
def user_helper_model() -> nn.Module:
    """The module class lives in user_helpers.py."""
    return Scaler()


class NestedOutputs(nn.Module):
    """A nested tuple with a ``None`` and a Python float: ``output_0``, ``output_1.0``, ``output_2``."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 6)

    def forward(self, x: torch.Tensor) -> tuple[object, ...]:
        y = self.fc(x)
        return y.relu(), (y.sigmoid(), None), 0.5


@register_model(inputs=[TensorSpec("x", (1, 6))], tags={"user"})
def user_nested_outputs() -> nn.Module:
    """Nested tuple, None and a Python float in the outputs."""
    return NestedOutputs()
