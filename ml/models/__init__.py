"""Model builders: `create_model(name, ...)` over a plain dict of builders.

| name | what | dims |
|---|---|---|
| `irv2_cam` | InceptionResNetV2 + calcification attention after B and C (the study) | 3 (or 2) |
| `irv2` | the same network without attention (ablation) | 3 (or 2) |
| `r3d_18` | 3D ResNet-18 (MONAI, torchvision r3d_18 layout) | 3 |
| `r2plus1d_18` | R(2+1)D-18, factorised space/time convs | 3 (or 2) |
| `densenet121_3d` | DenseNet-121 (MONAI) | 3 |
| `x3d_s` | X3D-S, depthwise 3D convs (see `x3d.py` for why not I3D) | 3 (or 2) |
| `irv2_2d`, `resnet18_2d`, `densenet121_2d` | static key-frame baselines | 2 |

Every model takes float32 in [0, 1], (B, C, T, H, W) or (B, C, H, W), returns logits (B, K), and
has `spatial_dims`, `attention_maps` (empty unless it has attention modules) and
`gradcam_layer_name`. Configs: `paper` (published sizes) and `small` (trains on a CPU); extra
keyword arguments override fields of the architecture's config dataclass (or MONAI's arguments).
No pretrained weights: nothing is ever downloaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from torch import nn

from . import inception_resnet, monai_nets, r2plus1d, x3d
from .attention import (
    CalcificationAttention,
    attention_supervision_loss,
    calcification_target,
    focus_loss,
    tirads_loss,
)

__all__ = [
    "BUILDERS",
    "CONFIGS",
    "MODEL_NAMES",
    "CalcificationAttention",
    "attention_supervision_loss",
    "calcification_target",
    "focus_loss",
    "tirads_loss",
    "create_model",
    "gradcam_layer",
    "gradcam_layers",
    "parameter_count",
]

CONFIGS = ("small", "paper")


def _configured(presets: dict, config: str, kw: dict):
    cfg = presets[config]
    try:
        return dataclasses.replace(cfg, **kw)
    except TypeError as exc:
        fields = ", ".join(f.name for f in dataclasses.fields(cfg))
        raise TypeError(f"{exc}; options are: {fields}") from None


def _irv2(attention: tuple[str, ...]) -> Callable[..., nn.Module]:
    def build(*, spatial_dims: int, in_channels: int, num_classes: int, config: str, **kw):
        kw.setdefault("attention", attention)
        cfg = _configured(inception_resnet.PRESETS, config, kw)
        return inception_resnet.InceptionResNetV2(spatial_dims, in_channels, num_classes, cfg)

    return build


def _r2plus1d(*, spatial_dims: int, in_channels: int, num_classes: int, config: str, **kw):
    cfg = _configured(r2plus1d.PRESETS, config, kw)
    return r2plus1d.R2Plus1d(spatial_dims, in_channels, num_classes, cfg)


def _x3d(*, spatial_dims: int, in_channels: int, num_classes: int, config: str, **kw):
    cfg = _configured(x3d.PRESETS, config, kw)
    return x3d.X3D(spatial_dims, in_channels, num_classes, cfg)


# name -> (builder, default spatial_dims, allowed spatial_dims)
BUILDERS: dict[str, tuple[Callable[..., nn.Module], int, tuple[int, ...]]] = {
    "irv2_cam": (_irv2(("B", "C")), 3, (2, 3)),
    "irv2": (_irv2(()), 3, (2, 3)),
    "r3d_18": (monai_nets.resnet18, 3, (3,)),
    "r2plus1d_18": (_r2plus1d, 3, (2, 3)),
    "densenet121_3d": (monai_nets.densenet121, 3, (3,)),
    "x3d_s": (_x3d, 3, (2, 3)),
    "irv2_2d": (_irv2(()), 2, (2,)),
    "resnet18_2d": (monai_nets.resnet18, 2, (2,)),
    "densenet121_2d": (monai_nets.densenet121, 2, (2,)),
}
MODEL_NAMES: tuple[str, ...] = tuple(BUILDERS)


def create_model(
    name: str,
    *,
    spatial_dims: int | None = None,
    in_channels: int = 1,
    num_classes: int = 1,
    config: str = "small",
    **kw,
) -> nn.Module:
    """Build architecture `name` in `config` ("small" or "paper"), randomly initialised."""
    if name not in BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODEL_NAMES)}")
    if config not in CONFIGS:
        raise ValueError(f"unknown config {config!r}; choose from {', '.join(CONFIGS)}")
    build, default_dims, allowed = BUILDERS[name]
    dims = default_dims if spatial_dims is None else spatial_dims
    if dims not in allowed:
        raise ValueError(f"{name} is built for spatial_dims {allowed}, not {dims}")
    model = build(
        spatial_dims=dims, in_channels=in_channels, num_classes=num_classes, config=config, **kw
    )
    model.arch = name
    model.config_name = config
    return model


def gradcam_layers(model: nn.Module) -> list[nn.Module]:
    """The layers Grad-CAM hooks by default: the model's `gradcam_layer_names` (a seed
    ensemble: each member's layer), else its `gradcam_layer_name`, else the last conv layer."""
    model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
    names = getattr(model, "gradcam_layer_names", None)
    if names:
        return [model.get_submodule(name) for name in names]
    name = getattr(model, "gradcam_layer_name", None)
    if name is not None:
        return [model.get_submodule(name)]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv3d)]
    if not convs:
        raise ValueError(f"{type(model).__name__} has no conv layer for Grad-CAM")
    return [convs[-1]]


def gradcam_layer(model: nn.Module) -> nn.Module:
    """The first of `gradcam_layers(model)` (for a single network, its only one)."""
    return gradcam_layers(model)[0]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
