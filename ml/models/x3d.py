"""X3D-S: the efficient end of the 3D CNN baselines.

Feichtenhofer, "X3D: Expanding Architectures for Efficient Video Recognition", CVPR 2020.

Why X3D-S rather than an I3D-style inflated Inception as the fourth 3D baseline:
- I3D is an inflated Inception-v1, the same family (inflated multi-branch Inception blocks) as
  our 3D InceptionResNetV2, so it would add little to the comparison; X3D is a different design
  point: channel-wise (depthwise) 3 x 3 x 3 convs, squeeze-excite, a few million parameters and
  a few GFLOPs.
- X3D never strides in time, which suits foci that show in only a few frames, and it is the
  model a CPU-bound or edge deployment would actually pick.
- It makes the benchmark honest about FLOPs: depthwise 3D convs have few FLOPs but are
  memory-bound, so clips/s and FLOPs/clip disagree, which is worth seeing.

Layout as pytorchvideo's `create_x3d` for X3D-S/M (which differ only in input size): stem
1 x 3 x 3 conv (24 channels, spatial stride 2) + depthwise 5 x 1 x 1 conv in time; stages res2-5
with 3, 5, 11, 7 bottleneck blocks of widths 24, 48, 96, 192 and inner width 2.25x; SE (1/16)
on every other block; swish after the depthwise conv; conv5 to 432; head 432 -> 2048 -> K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import ConvNormAct, batch_norm, check_dims, conv, global_avg_pool, inflate


@dataclass(frozen=True)
class X3DConfig:
    widths: tuple[int, int, int, int] = (24, 48, 96, 192)  # res2..res5 (paper Table 1)
    depths: tuple[int, int, int, int] = (3, 5, 11, 7)  # X3D-S/M: 2.2 x (1, 2, 5, 3)
    expansion: float = 2.25  # bottleneck inner width / block width
    stem_width: int = 24
    conv5_width: int = 432  # 2.25 x 192
    head_width: int = 2048  # the 2048-d fc before the classifier
    se_ratio: float = 1 / 16  # squeeze-excite bottleneck, on blocks 0, 2, 4, ...
    stem_temporal_kernel: int = 5  # depthwise time conv of the stem
    drop_rate: float = 0.5


PRESETS = {
    "paper": X3DConfig(),
    "small": X3DConfig(
        widths=(12, 24, 48, 96),
        depths=(1, 1, 2, 1),
        stem_width=12,
        conv5_width=216,
        head_width=256,
        drop_rate=0.0,
    ),
}


def _round8(x: float) -> int:
    return max(8, int(x + 4) // 8 * 8)


class SqueezeExcite(nn.Module):
    def __init__(self, spatial_dims: int, channels: int, ratio: float) -> None:
        super().__init__()
        hidden = _round8(channels * ratio)
        self.pool = global_avg_pool(spatial_dims)
        self.fc = nn.Sequential(
            conv(spatial_dims, channels, hidden, 1, bias=True),
            nn.ReLU(inplace=True),
            conv(spatial_dims, hidden, channels, 1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(self.pool(x))  # (B, C, T, H, W)


class X3DBlock(nn.Module):
    def __init__(
        self, spatial_dims: int, cin: int, inner: int, cout: int, stride: int, se_ratio: float
    ) -> None:
        super().__init__()
        s = inflate(spatial_dims, stride, 1)  # never strides in time
        self.conv_a = ConvNormAct(spatial_dims, cin, inner, 1)
        self.conv_b = nn.Sequential(
            conv(spatial_dims, inner, inner, 3, s, groups=inner),  # depthwise 3 x 3 x 3
            batch_norm(spatial_dims, inner),
        )
        self.se = SqueezeExcite(spatial_dims, inner, se_ratio) if se_ratio > 0 else nn.Identity()
        self.act_b = nn.SiLU()  # swish
        self.conv_c = nn.Sequential(
            conv(spatial_dims, inner, cout, 1), batch_norm(spatial_dims, cout)
        )
        self.shortcut = (
            ConvNormAct(spatial_dims, cin, cout, 1, s, act=False)
            if stride != 1 or cin != cout
            else nn.Identity()
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv_c(self.act_b(self.se(self.conv_b(self.conv_a(x)))))
        return self.act(y + self.shortcut(x))


class X3D(nn.Module):
    gradcam_layer_name = "conv5"

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 1,
        cfg: X3DConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or X3DConfig()
        self.spatial_dims = check_dims(spatial_dims)
        self.attention_maps: list[torch.Tensor] = []
        stem: list[nn.Module] = [
            conv(
                spatial_dims,
                in_channels,
                cfg.stem_width,
                inflate(spatial_dims, 3, 1),
                inflate(spatial_dims, 2, 1),
            )
        ]
        if spatial_dims == 3:
            stem.append(
                conv(
                    3,
                    cfg.stem_width,
                    cfg.stem_width,
                    (cfg.stem_temporal_kernel, 1, 1),
                    groups=cfg.stem_width,
                )
            )
        stem += [batch_norm(spatial_dims, cfg.stem_width), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)
        stages, cin = [], cfg.stem_width
        for width, depth in zip(cfg.widths, cfg.depths, strict=True):
            inner = int(round(width * cfg.expansion))
            stages.append(
                nn.Sequential(
                    *[
                        X3DBlock(
                            spatial_dims,
                            cin if j == 0 else width,
                            inner,
                            width,
                            2 if j == 0 else 1,
                            cfg.se_ratio if j % 2 == 0 else 0.0,
                        )
                        for j in range(depth)
                    ]
                )
            )
            cin = width
        self.stages = nn.Sequential(*stages)
        self.conv5 = ConvNormAct(spatial_dims, cin, cfg.conv5_width, 1)
        self.pool = global_avg_pool(spatial_dims)
        self.head = nn.Sequential(
            nn.Linear(cfg.conv5_width, cfg.head_width, bias=False),
            nn.ReLU(inplace=True),
            nn.Dropout(cfg.drop_rate),
            nn.Linear(cfg.head_width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)  # (B, 24, T, H/2, W/2)
        x = self.stages(x)  # (B, 192, T, H/32, W/32)
        x = self.conv5(x)  # (B, 432, T, H/32, W/32)
        return self.head(self.pool(x).flatten(1))  # (B, K)
