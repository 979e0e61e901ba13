"""R(2+1)D-18: ResNet-18 with every 3 x 3 x 3 conv factorised into space then time.

Tran, Wang, Torresani, Ray, LeCun, Paluri, "A Closer Look at Spatiotemporal Convolutions for
Action Recognition", CVPR 2018. Layout and widths as torchvision's `r2plus1d_18`: a (2+1)D stem
(1 x 7 x 7 to 45 channels, then 3 x 1 x 1 to 64), four stages of two basic blocks (64, 128, 256,
512), strides 2 in space and time from stage 2 on. The mid width M of each (2+1)D conv matches the
parameters of the full 3D conv it replaces (paper Sec. 3.5).

N-d: the first spatial axis is "time" (the factorised axis), the rest "space". With
spatial_dims=2 every 3 x 3 becomes 1 x 3 then 3 x 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import ConvNormAct, batch_norm, check_dims, conv, global_avg_pool


@dataclass(frozen=True)
class R2Plus1dConfig:
    widths: tuple[int, int, int, int] = (64, 128, 256, 512)  # stage widths (ResNet-18)
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)  # basic blocks per stage (ResNet-18)
    stem_mid: int = 45  # stem's mid width, param-matched to a 3 x 7 x 7 conv (torchvision)
    temporal_kernel: int = 3  # time extent of each factorised conv


PRESETS = {
    "paper": R2Plus1dConfig(),
    "small": R2Plus1dConfig(widths=(16, 32, 64, 128), layers=(1, 1, 1, 1), stem_mid=12),
}


def _mid(cin: int, cout: int, k: int, kt: int, spatial_dims: int) -> int:
    """M = t d^2 N_in N_out / (d^2 N_in + t N_out): as many parameters as the full conv."""
    area = k ** (spatial_dims - 1)
    return (kt * area * cin * cout) // (area * cin + kt * cout)


class Conv2Plus1d(nn.Sequential):
    """space conv (1, k, k) -> BN -> ReLU -> time conv (k_t, 1, 1); strides split the same way."""

    def __init__(
        self, spatial_dims: int, cin: int, cout: int, mid: int, stride: int = 1, kt: int = 3
    ) -> None:
        super().__init__(
            ConvNormAct(
                spatial_dims, cin, mid, _space(spatial_dims, 3), _space(spatial_dims, stride)
            ),
            conv(spatial_dims, mid, cout, _time(spatial_dims, kt), _time(spatial_dims, stride)),
        )


def _space(spatial_dims: int, size: int) -> tuple[int, ...]:
    return (1,) + (size,) * (spatial_dims - 1)


def _time(spatial_dims: int, size: int) -> tuple[int, ...]:
    return (size,) + (1,) * (spatial_dims - 1)


class BasicBlock(nn.Module):
    def __init__(self, spatial_dims: int, cin: int, cout: int, stride: int, kt: int) -> None:
        super().__init__()
        # torchvision uses the first conv's M for both convs of a block; so do we (same params)
        mid = _mid(cin, cout, 3, kt, spatial_dims)
        self.conv1 = nn.Sequential(
            Conv2Plus1d(spatial_dims, cin, cout, mid, stride, kt),
            batch_norm(spatial_dims, cout),
            nn.ReLU(inplace=True),
        )
        self.conv2 = nn.Sequential(
            Conv2Plus1d(spatial_dims, cout, cout, mid, 1, kt), batch_norm(spatial_dims, cout)
        )
        self.downsample = (
            ConvNormAct(spatial_dims, cin, cout, 1, stride, act=False)
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.downsample(x))


class R2Plus1d(nn.Module):
    gradcam_layer_name = "layer4"

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 1,
        cfg: R2Plus1dConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or R2Plus1dConfig()
        self.spatial_dims = check_dims(spatial_dims)
        self.attention_maps: list[torch.Tensor] = []
        kt, w = cfg.temporal_kernel, cfg.widths
        self.stem = nn.Sequential(
            ConvNormAct(
                spatial_dims,
                in_channels,
                cfg.stem_mid,
                _space(spatial_dims, 7),
                _space(spatial_dims, 2),
            ),
            ConvNormAct(spatial_dims, cfg.stem_mid, w[0], _time(spatial_dims, kt)),
        )
        stages, cin = [], w[0]
        for i, (cout, n) in enumerate(zip(w, cfg.layers, strict=True)):
            blocks = [
                BasicBlock(
                    spatial_dims, cin if j == 0 else cout, cout, 2 if (i > 0 and j == 0) else 1, kt
                )
                for j in range(n)
            ]
            stages.append(nn.Sequential(*blocks))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.pool = global_avg_pool(spatial_dims)
        self.fc = nn.Linear(w[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, 64, T, H/2, W/2)
        x = self.layer1(x)  # (B, 64, T, H/2, W/2)
        x = self.layer2(x)  # (B, 128, T/2, H/4, W/4)
        x = self.layer3(x)  # (B, 256, T/4, H/8, W/8)
        x = self.layer4(x)  # (B, 512, T/8, H/16, W/16)
        return self.fc(self.pool(x).flatten(1))  # (B, K)
