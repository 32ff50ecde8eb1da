"""Vision models written in the project (torchvision does not import beside the CPU torch here)."""

from __future__ import annotations

import torch
from torch import nn

from harness.core.types import TensorSpec
from model_zoo.registry import register_model


class SRCNN(nn.Module):
    """Super-resolution CNN: bicubic upsample, then feature extraction, mapping and reconstruction."""

    def __init__(self, upscale: int = 3, channels: tuple[int, int] = (64, 32)) -> None:
        super().__init__()
        c1, c2 = channels
        self.upscale = upscale
        self.conv1 = nn.Conv2d(3, c1, kernel_size=9, padding=4)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=1, padding=0)
        self.conv3 = nn.Conv2d(c2, 3, kernel_size=5, padding=2)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.interpolate(x, scale_factor=self.upscale, mode="bicubic", align_corners=False)
        return self.conv3(self.relu(self.conv2(self.relu(self.conv1(x)))))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with basic blocks; ``layers=(2, 2, 2, 2)`` is torchvision's resnet18."""

    def __init__(self, layers: tuple[int, ...] = (2, 2, 2, 2), widths: tuple[int, ...] = (64, 128, 256, 512),
                 num_classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inplanes = [], widths[0]
        for i, (blocks, planes) in enumerate(zip(layers, widths, strict=True)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(inplanes, planes, stride)] + [BasicBlock(planes, planes) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*stage))
            inplanes = planes
        self.layers = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        _init_bn_stats(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.avgpool(self.layers(x))
        return self.fc(torch.flatten(x, 1))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = inp * expand
        self.use_res = stride == 1 and inp == oup
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(inp, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True), nn.Conv2d(hidden, oup, 1, bias=False), nn.BatchNorm2d(oup),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (width 1.0 = torchvision's mobilenet_v2 architecture)."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000, width: float = 1.0, settings: tuple = SETTINGS) -> None:
        super().__init__()
        inp, last = int(32 * width), int(1280 * max(1.0, width))
        features: list[nn.Module] = [nn.Conv2d(3, inp, 3, 2, 1, bias=False), nn.BatchNorm2d(inp), nn.ReLU6(inplace=True)]
        for t, c, n, s in settings:
            out = int(c * width)
            for i in range(n):
                features.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                inp = out
        features += [nn.Conv2d(inp, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))
        _init_bn_stats(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
        return self.classifier(torch.flatten(x, 1))


def _init_bn_stats(module: nn.Module) -> None:
    """Give BatchNorm non-trivial seeded statistics so folded weights are not all identity."""
    gen = torch.Generator().manual_seed(1)
    for m in module.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)


IMAGE = TensorSpec("input", ("batch", 3, 224, 224))


@register_model(inputs=[TensorSpec("input", (1, 3, "height", "width"))], tags={"vision", "super-resolution"},
                dynamic_sizes={"height": (64, 48), "width": (64, 80)})
def srcnn() -> nn.Module:
    """SRCNN x3 super-resolution (bicubic upsample + 9-1-5 convolutions)."""
    return SRCNN()


@register_model(inputs=[IMAGE], tags={"vision", "classification"}, dynamic_sizes={"batch": (1, 2)})
def resnet18() -> nn.Module:
    """ResNet-18, torchvision's architecture, seeded random weights."""
    return ResNet()


@register_model(inputs=[IMAGE], tags={"vision", "classification"}, dynamic_sizes={"batch": (1, 2)})
def mobilenet_v2() -> nn.Module:
    """MobileNetV2 1.0, torchvision's architecture, seeded random weights."""
    return MobileNetV2()


@register_model(inputs=[TensorSpec("input", (1, 3, "height", "width"))], tags={"vision", "super-resolution", "ci"},
                dynamic_sizes={"height": (16, 24), "width": (16, 12)})
def srcnn_tiny() -> nn.Module:
    """SRCNN x3 with narrow layers on small images (CI)."""
    return SRCNN(channels=(16, 8))


@register_model(inputs=[TensorSpec("input", ("batch", 3, 32, 32))], tags={"vision", "classification", "ci"},
                dynamic_sizes={"batch": (1, 3)})
def resnet_tiny() -> nn.Module:
    """A two-stage narrow ResNet on 32x32 inputs (CI)."""
    return ResNet(layers=(1, 1), widths=(8, 16), num_classes=10)


@register_model(inputs=[TensorSpec("input", (1, 3, 32, 32))], tags={"vision", "classification", "ci"})
def mobilenet_tiny() -> nn.Module:
    """MobileNetV2 at width 0.25 with three stages on 32x32 inputs (CI)."""
    return MobileNetV2(num_classes=10, width=0.25, settings=((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 2, 2)))
