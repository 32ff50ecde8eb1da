"""A helper module of the user zoo: the nn.Module class lives here, not in the zoo file."""

from __future__ import annotations

import torch
from torch import nn


class Scaler(nn.Module):
    """A small conv net whose forward the stale-cache test edits (the factor below)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) * 2.0
