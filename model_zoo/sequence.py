"""Sequence models: transformer encoder and LSTM."""

from __future__ import annotations

import torch
from torch import nn

from harness.core.types import TensorSpec
from model_zoo.registry import register_model


class TransformerEncoder(nn.Module):
    """A stack of post-norm transformer encoder layers on float embeddings."""

    def __init__(self, d_model: int = 256, nhead: int = 8, layers: int = 2, ff: int = 1024) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(d_model, nhead, ff, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)


class LSTMClassifier(nn.Module):
    """Stacked LSTM over a sequence, linear head on the last step."""

    def __init__(self, features: int = 64, hidden: int = 128, layers: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


# The TorchScript exporter freezes the traced sequence length into the attention Reshapes
# (the export then fails at any other length); the dynamo exporter keeps it symbolic.
@register_model(inputs=[TensorSpec("input", (1, "seq", 256))], tags={"sequence", "transformer"},
                dynamic_sizes={"seq": (32, 17)}, exporter="dynamo")
def transformer_encoder() -> nn.Module:
    """Two transformer encoder layers, d_model 256, 8 heads, float input."""
    return TransformerEncoder()


@register_model(inputs=[TensorSpec("input", (1, "seq", 64))], tags={"sequence", "rnn"},
                dynamic_sizes={"seq": (20, 7)})
def lstm() -> nn.Module:
    """Two-layer LSTM (hidden 128) with a linear classification head."""
    return LSTMClassifier()


@register_model(inputs=[TensorSpec("input", (1, "seq", 32))], tags={"sequence", "transformer", "ci"},
                dynamic_sizes={"seq": (8, 5)}, exporter="dynamo")
def transformer_tiny() -> nn.Module:
    """One transformer encoder layer, d_model 32, 4 heads (CI)."""
    return TransformerEncoder(d_model=32, nhead=4, layers=1, ff=64)


@register_model(inputs=[TensorSpec("input", (1, "seq", 8))], tags={"sequence", "rnn", "ci"},
                dynamic_sizes={"seq": (6, 3)})
def lstm_tiny() -> nn.Module:
    """Two-layer LSTM, hidden 16 (CI)."""
    return LSTMClassifier(features=8, hidden=16, classes=4)
