"""Calcification attention: CBAM-style channel attention plus a spatio-temporal gate.

Qian et al. (Cancer Imaging 2025) add a "calcification attention module" to a 3D
InceptionResNetV2 to raise sensitivity to microcalcifications; the paper's abstract does not give
its form. Ours follows CBAM (Woo et al., ECCV 2018): channel attention from average- and
max-pooled descriptors through a shared MLP, then a map A(t, h, w) in [0, 1] from channel
statistics. Two changes for tiny bright foci:

- the map also sees a few learned 1x1 projections of the features next to CBAM's channel mean and
  max, so it can learn "bright punctate focus" detectors rather than only "strong activation";
- the gate is residual, F * (1 + A), so a map that is still near zero early in training cannot
  switch features off (as in the residual attention network, Wang et al., CVPR 2017).

Each module keeps the map of its last forward in `attention_map`, so the map can be shown to a
reader and supervised with annotated calcification marks (`attention_supervision_loss`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .layers import conv, inflate

# Calcification type codes (docs/ml-interfaces.md): 1 punctate/micro, 2 macro, 3 rim are
# calcifications; 0 none and 4 large comet-tail artefact are not.
CALCIFICATION_CODES = (1, 2, 3)
PUNCTATE_CODES = (1,)  # the malignancy sign: microcalcifications / punctate echogenic foci


class CalcificationAttention(nn.Module):
    def __init__(
        self,
        channels: int,
        spatial_dims: int = 3,
        *,
        reduction: int = 16,  # CBAM's channel MLP bottleneck
        kernel: int = 7,  # CBAM's spatial kernel
        temporal_kernel: int = 3,  # short in time: a focus shows in only a few frames
        proj_channels: int = 8,  # learned descriptors next to mean and max
    ) -> None:
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.channel_mlp = nn.Sequential(
            conv(spatial_dims, channels, hidden, 1, bias=True),
            nn.ReLU(inplace=True),
            conv(spatial_dims, hidden, channels, 1, bias=True),
        )
        self.proj = conv(spatial_dims, channels, proj_channels, 1, bias=True)
        # bias 0 at init -> A = 0.5 everywhere: every position starts with the same gain.
        self.spatial = conv(
            spatial_dims,
            2 + proj_channels,
            1,
            inflate(spatial_dims, kernel, temporal_kernel),
            bias=True,
        )
        self.attention_map: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        axes = tuple(range(2, x.ndim))
        avg = x.mean(dim=axes, keepdim=True)  # (B, C, 1, 1, 1)
        mx = x.amax(dim=axes, keepdim=True)  # (B, C, 1, 1, 1)
        x = x * torch.sigmoid(self.channel_mlp(avg) + self.channel_mlp(mx))  # (B, C, T, H, W)
        stats = torch.cat(
            [x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True), self.proj(x)], dim=1
        )  # (B, 2 + P, T, H, W)
        a = torch.sigmoid(self.spatial(stats))  # (B, 1, T, H, W) in [0, 1]
        self.attention_map = a
        return x * (1 + a)


def calcification_target(calc_mask: torch.Tensor | object, spatial_dims: int,
                         codes: Sequence[int] = CALCIFICATION_CODES) -> torch.Tensor:
    """Type-code mask (B, T, H, W) or (B, H, W) [or with a channel axis] -> float (B, 1, ...).

    Integer masks hold type codes; the target is 1 where the code is one of `codes` (by default
    the calcifications 1-3; 0 and 4 are not). A bool mask is taken as already binary.
    """
    m = torch.as_tensor(calc_mask)
    if m.ndim == spatial_dims + 1:
        m = m.unsqueeze(1)
    if m.ndim != spatial_dims + 2:
        raise ValueError(f"mask of shape {tuple(m.shape)} does not fit {spatial_dims}D maps")
    if m.dtype == torch.bool:
        return m.float()
    if m.is_floating_point():
        m = m.round().long()
    return torch.isin(m, torch.as_tensor(tuple(codes), dtype=m.dtype)).float()


def attention_supervision_loss(
    attention_maps: Sequence[torch.Tensor],
    calc_mask: torch.Tensor,
    has_mask: torch.Tensor | Sequence[bool],
    *,
    dice_weight: float = 1.0,
    codes: Sequence[int] = CALCIFICATION_CODES,
) -> torch.Tensor:
    """Weak supervision of the attention maps with annotated calcification marks.

    attention_maps: the model's `attention_maps`, each (B, 1, T', H', W') (or (B, 1, H', W')).
    calc_mask: (B, T, H, W) type codes aligned to the clip (or (B, H, W) for 2D).
    has_mask: (B,) bool, True where the clip's calcifications were marked.

    The mask is max-pooled to each map's size, so a 1-pixel focus in one frame still marks its
    cell. Per map and clip: BCE (every cell, pushes the map down away from foci) plus soft dice
    (overlap, immune to how rare foci are), averaged over the maps. Clips without marks add
    nothing; the sum over marked clips is divided by B, like the classification loss's mean, so
    a batch with few marked clips gets a proportionally smaller push.
    """
    if not attention_maps:
        raise ValueError("the model produced no attention maps (is it an attention model?)")
    first = attention_maps[0]
    spatial_dims = first.ndim - 2
    has = torch.as_tensor(has_mask, dtype=torch.bool, device=first.device).reshape(-1)
    batch = first.shape[0]
    if has.numel() != batch:
        raise ValueError(f"has_mask has {has.numel()} entries for a batch of {batch}")
    if not bool(has.any()):
        # keeps the graph (and DDP's "every parameter gets a gradient") intact
        return sum(a.sum() for a in attention_maps) * 0.0
    target = calcification_target(calc_mask, spatial_dims, codes).to(first.device)[has]
    # target: (M, 1, ...)
    pool = F.adaptive_max_pool3d if spatial_dims == 3 else F.adaptive_max_pool2d
    total = first.new_zeros((), dtype=torch.float32)
    for a in attention_maps:
        a = a[has].float().clamp(1e-6, 1 - 1e-6)  # (M, 1, T', H', W')
        t = pool(target, a.shape[2:])  # (M, 1, T', H', W'): foci survive downsampling
        bce = F.binary_cross_entropy(a, t, reduction="none").flatten(1).mean(1)  # (M,)
        inter = (a * t).flatten(1).sum(1)
        dice = 1 - (2 * inter + 1) / (a.flatten(1).sum(1) + t.flatten(1).sum(1) + 1)  # (M,)
        total = total + (bce + dice_weight * dice).sum() / batch
    return total / len(attention_maps)


def focus_loss(
    focus_logits: torch.Tensor,
    calc_mask: torch.Tensor,
    has_mask: torch.Tensor | Sequence[bool],
    *,
    pos_weight: float = 10.0,
) -> torch.Tensor:
    """Supervision of a punctate-focus map (logits (B, 1, T', H', W')) with the punctate marks.

    The mask is max-pooled to the map's grid, so a 1-pixel focus marks its cell; BCE with
    `pos_weight` on the rare focus cells (a sweep has a few among hundreds). A marked clip with
    no punctate focus (a benign nodule with a macrocalcification, say) teaches the map to stay
    low. Clips without marks add nothing; the sum is divided by B, as in
    `attention_supervision_loss`.
    """
    spatial_dims = focus_logits.ndim - 2
    has = torch.as_tensor(has_mask, dtype=torch.bool, device=focus_logits.device).reshape(-1)
    if not bool(has.any()):
        return focus_logits.sum() * 0.0
    target = calcification_target(calc_mask, spatial_dims, PUNCTATE_CODES)
    target = target.to(focus_logits.device)[has]
    pool = F.adaptive_max_pool3d if spatial_dims == 3 else F.adaptive_max_pool2d
    logits = focus_logits[has].float()
    t = pool(target, logits.shape[2:])
    weight = torch.tensor(pos_weight, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, t, pos_weight=weight, reduction="none")
    return bce.flatten(1).mean(1).sum() / focus_logits.shape[0]


def tirads_loss(tirads_logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Supervision of the auxiliary TI-RADS head (logits (B, F)) with a reader's feature points
    scaled to [0, 1] (`ml.tirads.tirads_targets`, (B, F), NaN where not read).

    BCE with the scaled points as soft targets: an ordinal feature (echogenicity 0-3 points)
    is one number the head must rank, not F classes. Features that were not read add nothing;
    the sum is divided by B x F, so a batch with few readings gets a proportionally smaller
    push, as in `attention_supervision_loss`.
    """
    if tirads_logits.shape != targets.shape:
        raise ValueError(f"TI-RADS logits {tuple(tirads_logits.shape)} and targets "
                         f"{tuple(targets.shape)} differ")
    targets = targets.to(tirads_logits.device, torch.float32)
    read = ~torch.isnan(targets)
    if not bool(read.any()):
        return tirads_logits.sum() * 0.0
    bce = F.binary_cross_entropy_with_logits(
        tirads_logits.float(), torch.nan_to_num(targets), reduction="none")
    return (bce * read).sum() / targets.numel()
