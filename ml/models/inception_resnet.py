"""InceptionResNetV2 for images and clips, with optional calcification attention.

Szegedy, Ioffe, Vanhoucke, Alemi, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning", AAAI 2017 (arXiv:1602.07261). Layout:

    stem -> Inception-ResNet-A x5 -> Reduction-A -> Inception-ResNet-B x10 -> Reduction-B
         -> Inception-ResNet-C x5 -> 1x1 conv -> global average pool -> dropout -> linear

Block counts are the paper's (Fig. 15). Branch widths and the residual scales 0.17 / 0.1 / 0.2
are those of the released TF-slim model (the one timm and Keras port): the paper's figures give
channel counts that do not add up (e.g. 1154 into a 1152-wide block), the released widths do.
The released model repeats the blocks 10 / 20 / 10 times; `blocks=(10, 20, 10)` builds that.

3D inflation (Carreira & Zisserman, CVPR 2017): a k x k kernel becomes 3 x k x k (5 x 5 -> 3 x
5 x 5, to bound the stem's cost); the factorised 1 x 7 / 7 x 1 (B) and 1 x 3 / 3 x 1 (C)
branches get a third 1-D conv along time, so they stay factorised. Time is strided only after
the first 56 x 56 stage and twice in all (`temporal_strides`): 32 frames reach the C stage as 8,
so a focus visible in 2-3 frames still owns a cell. Padding is "same" (k // 2) everywhere, so
224 x 224 gives the usual 28 / 14 / 7 grids and tiny test clips stay valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ml.tirads import FEATURES as TIRADS_FEATURES

from .attention import CalcificationAttention
from .layers import ConvNormAct, along, avg_pool, check_dims, conv, global_avg_pool, inflate
from .layers import max_pool as _max_pool

BN_EPS = 1e-3  # the released model's batch-norm epsilon


@dataclass(frozen=True)
class IRv2Config:
    width: float = 1.0  # multiplier on every conv's channels (1.0 = published widths)
    blocks: tuple[int, int, int] = (5, 10, 5)  # Inception-ResNet-A / B / C repeats (paper Fig. 15)
    scales: tuple[float, float, float] = (0.17, 0.10, 0.20)  # residual scaling (paper Sec. 3.3)
    # stride along time of: conv1a, pool3a, pool5a, Reduction-A, Reduction-B (3D only)
    temporal_strides: tuple[int, int, int, int, int] = (1, 1, 2, 2, 1)
    temporal_kernel: int = 3  # time extent of inflated kernels and of the factorised time conv
    attention: tuple[str, ...] = ()  # stages ("A", "B", "C") followed by calcification attention
    attention_reduction: int = 16  # channel-MLP bottleneck of the attention module
    drop_rate: float = 0.2  # dropout before the classifier (released model: keep 0.8)
    # "avg": the release's global average pool. "avgmax": average and max pools side by side,
    # so a focus that lights up a few cells of a few frames is not averaged away over the clip.
    pooling: str = "avg"
    # A punctate-focus detector on stage A's finer grid (1/8 of the input): a map of logits
    # supervised with the punctate marks only (`ml.models.focus_loss`), whose strongest
    # responses join the pooled features before the classifier. Punctate foci are the
    # malignancy sign that carries from one scanner to another; macro and rim
    # calcifications are not (docs/ml-results.md).
    focus_head: bool = False
    focus_level: str = "A"  # where the focus head reads: "A" (1/8, after stage A) or "stem"
    # (1/4 of the input and every frame, after the stem's conv4a: finer for 1-2 px foci)
    # A third focus feature, log(1 + the sum of the cells' focus probabilities): the expected
    # number of focus cells. The peak and the soft maximum follow the brightest focus; the
    # count is what separates a benign nodule's stray focus from a malignant one's several.
    focus_count: bool = False
    # The focus evidence gets its own linear logit, added to the trunk's, and exposed as
    # `evidence_logits` so that training can give it a classification loss of its own
    # (`TrainConfig.evidence_loss_weight`). The evidence must then separate the classes by
    # itself, and the trunk only adds what it misses: on the synthetic data the punctate
    # foci carry from one centre to another, the trunk's other cues do not
    # (docs/ml-results.md, "Sixth round").
    focus_logit: bool = False
    # The classifier reads the focus evidence without sending gradients back into the focus
    # head, which then stays a detector taught by the punctate marks alone: with a
    # classification loss of its own (`focus_logit`) the head drifted from counting foci to
    # whatever separated the training centres (docs/ml-results.md, "Sixth round").
    focus_detach: bool = False
    # The evidence is standardised (batch norm without affine terms, running statistics at
    # test time) before its own logit (`focus_logit`), whose layer then starts at zero: raw,
    # the features sit far from zero with a small spread (soft maximum about -3.5 +- 0.3), and
    # a random start of three weights ranked the cases backwards. The features only become
    # informative late in training, so the layer also needs `TrainConfig.evidence_lr_scale`
    # to move in time (docs/ml-results.md, "Seventh round").
    focus_norm: bool = False
    # An auxiliary head that reads a reader's ACR TI-RADS features (composition, echogenicity,
    # shape, margin; `ml.tirads`) from the pooled features, taught by the readers' points
    # (`ml.models.tirads_loss`): the nodule cues other than the foci, which a malignant
    # nodule without foci must be recognised by. The classifier does not read the head; the
    # head only shapes the features both share. Its logits are `tirads_logits`.
    tirads_head: bool = False


PRESETS = {
    "paper": IRv2Config(),
    # keeps every stage and branch, a quarter of the width and 1 / 2 / 1 blocks: trains on a CPU.
    # Avg+max pooling: with so few channels a focus averaged over the whole clip is lost
    # (docs/ml-results.md).
    "small": IRv2Config(width=0.25, blocks=(1, 2, 1), pooling="avgmax"),
}


STEM_CONV4A = 5  # index of conv4a in `Stem`: the last layer at 1/4 of the input
FOCUS_EVIDENCE = 2  # features the focus map adds: its peak and its soft maximum


def focus_evidence(logits: torch.Tensor, count: bool = False) -> torch.Tensor:
    """(B, 1, ...) focus logits -> (B, 2): the strongest cell and a soft maximum over all
    cells (log-mean-exp), which grows with the number of cells that respond; with `count`
    (B, 3): and log(1 + sum of the cells' probabilities), the expected number of focus cells."""
    flat = logits.flatten(1).float()
    soft = torch.logsumexp(flat, dim=1) - math.log(flat.shape[1])
    features = [flat.amax(dim=1), soft]
    if count:
        features.append(torch.log1p(torch.sigmoid(flat).sum(dim=1)))
    return torch.stack(features, dim=1).to(logits.dtype)


class _Builder:
    """Width scaling and kernel inflation in one place, so the blocks read like the paper."""

    def __init__(self, spatial_dims: int, cfg: IRv2Config) -> None:
        self.dims = spatial_dims
        self.cfg = cfg

    def ch(self, n: int) -> int:
        return max(4, int(round(n * self.cfg.width)))

    def k(self, size: int, temporal: int | None = None) -> tuple[int, ...]:
        return inflate(self.dims, size, self.cfg.temporal_kernel if temporal is None else temporal)

    def s(self, size: int, temporal: int) -> tuple[int, ...]:
        return inflate(self.dims, size, temporal)

    def cna(self, cin: int, cout: int, kernel=1, stride=1, act: bool = True) -> ConvNormAct:
        return ConvNormAct(self.dims, cin, cout, kernel, stride, act=act, eps=BN_EPS)

    def factorised(self, cin: int, widths: tuple[int, ...], size: int) -> nn.Sequential:
        """1 x k then k x 1 (2D); in 3D also k_t x 1 x 1 along time. `widths` per 1-D conv."""
        axes = [-1, -2] if self.dims == 2 else [-1, -2, 0]
        layers, c = [], cin
        for axis, w in zip(axes, widths, strict=True):
            length = self.cfg.temporal_kernel if (self.dims == 3 and axis == 0) else size
            layers.append(self.cna(c, w, along(self.dims, axis, length)))
            c = w
        return nn.Sequential(*layers)


class Mixed5b(nn.Module):
    """The released stem's last block: 192 -> 320 channels (35 x 35 grid in the paper)."""

    def __init__(self, b: _Builder, cin: int) -> None:
        super().__init__()
        self.branch0 = b.cna(cin, b.ch(96))
        self.branch1 = nn.Sequential(b.cna(cin, b.ch(48)), b.cna(b.ch(48), b.ch(64), b.k(5)))
        self.branch2 = nn.Sequential(
            b.cna(cin, b.ch(64)),
            b.cna(b.ch(64), b.ch(96), b.k(3)),
            b.cna(b.ch(96), b.ch(96), b.k(3)),
        )
        self.branch3 = nn.Sequential(avg_pool(b.dims, 3), b.cna(cin, b.ch(64)))
        self.out_channels = b.ch(96) + b.ch(64) + b.ch(96) + b.ch(64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch0, self.branch1, self.branch2, self.branch3)
        return torch.cat([f(x) for f in branches], dim=1)


class Stem(nn.Sequential):
    def __init__(self, b: _Builder, in_channels: int) -> None:
        ts = b.cfg.temporal_strides
        layers = [
            b.cna(in_channels, b.ch(32), b.k(3), b.s(2, ts[0])),  # conv1a: (B, 32, T, H/2, W/2)
            b.cna(b.ch(32), b.ch(32), b.k(3)),  # conv2a
            b.cna(b.ch(32), b.ch(64), b.k(3)),  # conv2b
            _max_pool(b.dims, b.k(3, ts[1]), b.s(2, ts[1])),  # pool3a: (B, 64, T, H/4, W/4)
            b.cna(b.ch(64), b.ch(80)),  # conv3b
            b.cna(b.ch(80), b.ch(192), b.k(3)),  # conv4a
            _max_pool(b.dims, b.k(3), b.s(2, ts[2])),  # pool5a: (B, 192, T/2, H/8, W/8)
        ]
        mixed = Mixed5b(b, b.ch(192))  # (B, 320, T/2, H/8, W/8)
        super().__init__(*layers, mixed)
        self.out_channels = mixed.out_channels


class _Residual(nn.Module):
    """x + scale * up(concat(branches(x))), then ReLU: the Inception-ResNet unit."""

    def __init__(self, b: _Builder, channels: int, scale: float, act: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()
        self.channels = channels

    def _finish(self, x: torch.Tensor, branches: list[torch.Tensor]) -> torch.Tensor:
        up = self.up(torch.cat(branches, dim=1))  # (B, C, T, H, W)
        return self.act(x + self.scale * up)


class BlockA(_Residual):
    """Inception-ResNet-A (35 x 35 grid in the paper; Block35 in the release)."""

    def __init__(self, b: _Builder, channels: int, scale: float) -> None:
        super().__init__(b, channels, scale)
        c32, c48, c64 = b.ch(32), b.ch(48), b.ch(64)
        self.branch0 = b.cna(channels, c32)
        self.branch1 = nn.Sequential(b.cna(channels, c32), b.cna(c32, c32, b.k(3)))
        self.branch2 = nn.Sequential(
            b.cna(channels, c32), b.cna(c32, c48, b.k(3)), b.cna(c48, c64, b.k(3))
        )
        self.up = conv(b.dims, c32 + c32 + c64, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(x, [self.branch0(x), self.branch1(x), self.branch2(x)])


class BlockB(_Residual):
    """Inception-ResNet-B (17 x 17; Block17): 1 x 7 / 7 x 1 factorised branch."""

    def __init__(self, b: _Builder, channels: int, scale: float) -> None:
        super().__init__(b, channels, scale)
        c128, c160, c192 = b.ch(128), b.ch(160), b.ch(192)
        self.branch0 = b.cna(channels, c192)
        self.branch1 = nn.Sequential(
            b.cna(channels, c128), b.factorised(c128, (c160, c192, c192)[: b.dims], 7)
        )
        self.up = conv(b.dims, c192 + c192, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(x, [self.branch0(x), self.branch1(x)])


class BlockC(_Residual):
    """Inception-ResNet-C (8 x 8; Block8): 1 x 3 / 3 x 1 factorised branch."""

    def __init__(self, b: _Builder, channels: int, scale: float, act: bool = True) -> None:
        super().__init__(b, channels, scale, act)
        c192, c224, c256 = b.ch(192), b.ch(224), b.ch(256)
        self.branch0 = b.cna(channels, c192)
        self.branch1 = nn.Sequential(
            b.cna(channels, c192), b.factorised(c192, (c224, c256, c256)[: b.dims], 3)
        )
        self.up = conv(b.dims, c192 + c256, channels, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._finish(x, [self.branch0(x), self.branch1(x)])


class ReductionA(nn.Module):
    """35 -> 17 (Mixed_6a; paper Fig. 7 with k, l, m, n = 256, 256, 384, 384)."""

    def __init__(self, b: _Builder, cin: int) -> None:
        super().__init__()
        stride = b.s(2, b.cfg.temporal_strides[3])
        c256, c384 = b.ch(256), b.ch(384)
        self.branch0 = b.cna(cin, c384, b.k(3), stride)
        self.branch1 = nn.Sequential(
            b.cna(cin, c256), b.cna(c256, c256, b.k(3)), b.cna(c256, c384, b.k(3), stride)
        )
        self.branch2 = _max_pool(b.dims, b.k(3), stride)
        self.out_channels = cin + 2 * c384

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch0(x), self.branch1(x), self.branch2(x)], dim=1)


class ReductionB(nn.Module):
    """17 -> 8 (Mixed_7a; paper Fig. 18)."""

    def __init__(self, b: _Builder, cin: int) -> None:
        super().__init__()
        stride = b.s(2, b.cfg.temporal_strides[4])
        c256, c288, c320, c384 = b.ch(256), b.ch(288), b.ch(320), b.ch(384)
        self.branch0 = nn.Sequential(b.cna(cin, c256), b.cna(c256, c384, b.k(3), stride))
        self.branch1 = nn.Sequential(b.cna(cin, c256), b.cna(c256, c288, b.k(3), stride))
        self.branch2 = nn.Sequential(
            b.cna(cin, c256), b.cna(c256, c288, b.k(3)), b.cna(c288, c320, b.k(3), stride)
        )
        self.branch3 = _max_pool(b.dims, b.k(3), stride)
        self.out_channels = cin + c384 + c288 + c320

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch0, self.branch1, self.branch2, self.branch3)
        return torch.cat([f(x) for f in branches], dim=1)


class InceptionResNetV2(nn.Module):
    """InceptionResNetV2 for (B, C, H, W) images or (B, C, T, H, W) clips -> logits (B, K)."""

    # Grad-CAM on the output of stage A (1/8 of the input), not the last conv (1/32): a 1-2 px
    # focus is a small part of one cell even at 1/8, and at 1/32 a cell holds the whole nodule.
    # On the synthetic external centre, heatmap energy inside the calcification masks of
    # malignant cases was 1.2x uniform at conv_final, 3.1x at stage_b and 4.3x at stage_a
    # (docs/ml-results.md).
    gradcam_layer_name = "stage_a"

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 1,
        cfg: IRv2Config | None = None,
    ) -> None:
        super().__init__()
        cfg = cfg or IRv2Config()
        unknown = set(cfg.attention) - {"A", "B", "C"}
        if unknown:
            raise ValueError(f"attention stages must be among A, B, C; got {sorted(unknown)}")
        if cfg.pooling not in ("avg", "avgmax"):
            raise ValueError(f"pooling is 'avg' or 'avgmax'; got {cfg.pooling!r}")
        self.spatial_dims = check_dims(spatial_dims)
        self.cfg = cfg
        b = _Builder(spatial_dims, cfg)
        n_a, n_b, n_c = cfg.blocks
        s_a, s_b, s_c = cfg.scales

        self.stem = Stem(b, in_channels)
        c = self.stem.out_channels
        self.stage_a = self._stage(b, "A", [BlockA(b, c, s_a) for _ in range(n_a)], c)
        if cfg.focus_level not in ("A", "stem"):
            raise ValueError(f"focus_level is 'A' or 'stem'; got {cfg.focus_level!r}")
        if cfg.focus_count and not cfg.focus_head:
            raise ValueError("focus_count needs focus_head")
        for option in ("focus_logit", "focus_detach", "focus_norm"):
            if getattr(cfg, option) and not cfg.focus_head:
                raise ValueError(f"{option} needs focus_head")
        if cfg.focus_norm and not cfg.focus_logit:
            raise ValueError("focus_norm needs focus_logit")
        self.focus_head: nn.Module | None = None
        if cfg.focus_head:
            source = c if cfg.focus_level == "A" else b.ch(192)  # stage A or conv4a channels
            hidden = max(8, source // 4)
            self.focus_head = nn.Sequential(
                b.cna(source, hidden, inflate(spatial_dims, 3, 3)),
                conv(spatial_dims, hidden, 1, 1, bias=True),
            )
        self.focus_logits: torch.Tensor | None = None
        self.reduction_a = ReductionA(b, c)
        c = self.reduction_a.out_channels
        self.stage_b = self._stage(b, "B", [BlockB(b, c, s_b) for _ in range(n_b)], c)
        self.reduction_b = ReductionB(b, c)
        c = self.reduction_b.out_channels
        # the release leaves the last C block without ReLU, before the final 1x1 conv
        blocks_c = [BlockC(b, c, s_c, act=i < n_c - 1) for i in range(n_c)]
        self.stage_c = self._stage(b, "C", blocks_c, c)
        self.conv_final = b.cna(c, b.ch(1536))
        self.num_features = b.ch(1536) * (2 if cfg.pooling == "avgmax" else 1)
        self.pool = global_avg_pool(spatial_dims)
        self.dropout = nn.Dropout(cfg.drop_rate)
        evidence = (FOCUS_EVIDENCE + cfg.focus_count) if cfg.focus_head else 0
        self.evidence_fc: nn.Linear | None = None
        self.evidence_logits: torch.Tensor | None = None
        self.evidence_norm: nn.Module = nn.Identity()
        if cfg.focus_norm:
            self.evidence_norm = nn.BatchNorm1d(evidence, affine=False)
        if cfg.focus_logit:
            self.evidence_fc = nn.Linear(evidence, num_classes)
            if cfg.focus_norm:  # start neutral: a random start can rank the cases backwards
                nn.init.zeros_(self.evidence_fc.weight)
                nn.init.zeros_(self.evidence_fc.bias)
            evidence = 0  # the trunk's classifier reads the pooled features only
        self.fc = nn.Linear(self.num_features + evidence, num_classes)
        self.tirads_fc: nn.Linear | None = None
        if cfg.tirads_head:
            self.tirads_fc = nn.Linear(self.num_features, len(TIRADS_FEATURES))
        self.tirads_logits: torch.Tensor | None = None

    def _stage(self, b: _Builder, name: str, blocks: list[nn.Module], c: int) -> nn.Sequential:
        if name in self.cfg.attention:
            blocks.append(
                CalcificationAttention(
                    c,
                    b.dims,
                    reduction=self.cfg.attention_reduction,
                    temporal_kernel=self.cfg.temporal_kernel,
                )
            )
        return nn.Sequential(*blocks)

    @property
    def attention_maps(self) -> list[torch.Tensor]:
        """(B, 1, T', H', W') maps in [0, 1] from the last forward, B stage before C."""
        return [
            m.attention_map
            for m in self.modules()
            if isinstance(m, CalcificationAttention) and m.attention_map is not None
        ]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.focus_head is not None and self.cfg.focus_level == "stem":
            for i, layer in enumerate(self.stem):
                x = layer(x)
                if i == STEM_CONV4A:
                    self.focus_logits = self.focus_head(x)  # (B, 1, T, H/4, W/4)
        else:
            x = self.stem(x)  # (B, 320, T/2, H/8, W/8)
        x = self.stage_a(x)  # (B, 320, T/2, H/8, W/8)
        if self.focus_head is not None and self.cfg.focus_level == "A":
            self.focus_logits = self.focus_head(x)  # (B, 1, T/2, H/8, W/8)
        x = self.reduction_a(x)  # (B, 1088, T/4, H/16, W/16)
        x = self.stage_b(x)  # (B, 1088, T/4, H/16, W/16)
        x = self.reduction_b(x)  # (B, 2080, T/4, H/32, W/32)
        x = self.stage_c(x)  # (B, 2080, T/4, H/32, W/32)
        return self.conv_final(x)  # (B, 1536, T/4, H/32, W/32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        pooled = self.pool(x).flatten(1)  # (B, 1536)
        if self.cfg.pooling == "avgmax":
            pooled = torch.cat([pooled, x.flatten(2).amax(2)], dim=1)  # (B, 3072)
        pooled = self.dropout(pooled)
        if self.tirads_fc is not None:
            self.tirads_logits = self.tirads_fc(pooled)  # (B, 4)
        if self.focus_head is None:
            return self.fc(pooled)  # (B, K)
        focus = self.focus_logits.detach() if self.cfg.focus_detach else self.focus_logits
        evidence = focus_evidence(focus, self.cfg.focus_count)  # (B, 2 or 3)
        if self.evidence_fc is None:
            return self.fc(torch.cat([pooled, evidence], dim=1))
        self.evidence_logits = self.evidence_fc(self.evidence_norm(evidence))  # (B, K)
        return self.fc(pooled) + self.evidence_logits
