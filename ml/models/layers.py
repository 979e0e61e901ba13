"""N-d building blocks shared by the hand-written networks.

Every helper takes `spatial_dims` (2 or 3) and builds the matching torch class through MONAI's
layer factories, so one definition serves images (B, C, H, W) and clips (B, C, T, H, W). In 3D
the first spatial axis is time.
"""

from __future__ import annotations

from collections.abc import Sequence

from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn

Size = int | Sequence[int]


def check_dims(spatial_dims: int) -> int:
    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
    return spatial_dims


def ntuple(value: Size, spatial_dims: int) -> tuple[int, ...]:
    """`3` -> (3, 3, 3); a sequence must already have one entry per spatial axis."""
    if isinstance(value, int):
        return (value,) * spatial_dims
    value = tuple(int(v) for v in value)
    if len(value) != spatial_dims:
        raise ValueError(f"expected {spatial_dims} entries, got {value}")
    return value


def inflate(spatial_dims: int, size: int, temporal: int) -> tuple[int, ...]:
    """A 2D kernel or stride `size` x `size`, inflated to (temporal, size, size) in 3D."""
    if spatial_dims == 2:
        return (size, size)
    return (temporal,) + (size,) * (spatial_dims - 1)


def along(spatial_dims: int, axis: int, size: int) -> tuple[int, ...]:
    """A 1-D kernel of length `size` along spatial `axis` (0 = time in 3D, -1 = width)."""
    kernel = [1] * spatial_dims
    kernel[axis] = size
    return tuple(kernel)


def same_padding(kernel: Size, spatial_dims: int) -> tuple[int, ...]:
    # k // 2 with any stride: stride 1 keeps the size, stride 2 gives ceil(n / 2), so tiny
    # test clips (8 x 32 x 32) survive every reduction.
    return tuple(k // 2 for k in ntuple(kernel, spatial_dims))


def conv(
    spatial_dims: int,
    in_channels: int,
    out_channels: int,
    kernel: Size = 1,
    stride: Size = 1,
    *,
    groups: int = 1,
    bias: bool = False,
) -> nn.Module:
    return Conv[Conv.CONV, spatial_dims](
        in_channels,
        out_channels,
        kernel_size=ntuple(kernel, spatial_dims),
        stride=ntuple(stride, spatial_dims),
        padding=same_padding(kernel, spatial_dims),
        groups=groups,
        bias=bias,
    )


def batch_norm(spatial_dims: int, channels: int, eps: float = 1e-5) -> nn.Module:
    return Norm[Norm.BATCH, spatial_dims](channels, eps=eps)


def max_pool(spatial_dims: int, kernel: Size, stride: Size) -> nn.Module:
    return Pool[Pool.MAX, spatial_dims](
        kernel_size=ntuple(kernel, spatial_dims),
        stride=ntuple(stride, spatial_dims),
        padding=same_padding(kernel, spatial_dims),
    )


def avg_pool(spatial_dims: int, kernel: Size, stride: Size = 1) -> nn.Module:
    return Pool[Pool.AVG, spatial_dims](
        kernel_size=ntuple(kernel, spatial_dims),
        stride=ntuple(stride, spatial_dims),
        padding=same_padding(kernel, spatial_dims),
        count_include_pad=False,
    )


def global_avg_pool(spatial_dims: int) -> nn.Module:
    return Pool[Pool.ADAPTIVEAVG, spatial_dims](1)


class ConvNormAct(nn.Sequential):
    """conv (no bias) -> batch norm -> ReLU, the unit every Inception branch is made of."""

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        kernel: Size = 1,
        stride: Size = 1,
        *,
        groups: int = 1,
        act: bool = True,
        eps: float = 1e-5,
    ) -> None:
        layers = [
            conv(spatial_dims, in_channels, out_channels, kernel, stride, groups=groups),
            batch_norm(spatial_dims, out_channels, eps=eps),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


def fold_batch_norms(model: nn.Module) -> int:
    """Fold every eval-mode batch norm that directly follows a convolution in a Sequential
    (every `ConvNormAct`) into that convolution's weights and bias, in place; returns how many.

    For inference only: the folded model computes the same function (up to float rounding)
    with one kernel and one pass over the activations fewer per unit, which is what a batch of
    one is made of on a GPU. A model in training mode is refused: its batch norms still learn.
    """
    from torch.nn.modules.batchnorm import _BatchNorm
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if any(m.training for m in model.modules()):
        raise ValueError("fold batch norms of a model in eval mode only")
    folded = 0
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        for i in range(len(seq) - 1):
            conv_, norm = seq[i], seq[i + 1]
            if (isinstance(conv_, nn.Conv1d | nn.Conv2d | nn.Conv3d)
                    and isinstance(norm, _BatchNorm) and norm.running_mean is not None):
                seq[i] = fuse_conv_bn_eval(conv_, norm)
                seq[i + 1] = nn.Identity()
                folded += 1
    return folded
