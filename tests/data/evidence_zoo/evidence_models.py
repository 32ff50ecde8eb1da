"""A model with no Conv/MatMul/Gemm: no engine can show evidence of INT8 arithmetic for it."""

import torch

from model_zoo import TensorSpec, register_model


class Elementwise(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(torch.relu(x) * 2 + 1, dim=-1)


@register_model(inputs=[TensorSpec("x", (1, 16))], tags={"evidence"})
def evidence_elementwise() -> torch.nn.Module:
    return Elementwise()
