"""ResNet bottleneck stages and initialisation (torchvision's), for the truncated ResNets of
NPR and FreqNet."""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import Bottleneck


def bottleneck_layer(inplanes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """A torchvision ResNet stage of ``blocks`` Bottlenecks (the first one downsamples)."""
    out = planes * Bottleneck.expansion
    downsample = nn.Sequential(
        nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out),
    )
    layers = [Bottleneck(inplanes, planes, stride, downsample)]
    layers += [Bottleneck(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers)


def init_resnet_weights(model: nn.Module) -> None:
    """torchvision's ResNet initialisation: Kaiming-normal convolutions, unit BatchNorm."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.constant_(module.weight, 1)
            nn.init.constant_(module.bias, 0)
