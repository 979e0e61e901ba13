"""3D ResNet-18 and DenseNet-121 from MONAI, set up as video baselines.

MONAI's networks are N-d already; the builders choose the video-friendly stems and give the
instances the attributes `ml.models` promises (`spatial_dims`, `attention_maps`,
`gradcam_layer_name`), without a wrapper so that state-dict keys stay MONAI's.
"""

from __future__ import annotations

from monai.networks.nets import DenseNet, ResNet
from monai.networks.nets.resnet import ResNetBlock
from torch import nn

from .layers import check_dims


def _finish(net: nn.Module, spatial_dims: int, layer: str) -> nn.Module:
    net.spatial_dims = spatial_dims
    net.attention_maps = []
    net.gradcam_layer_name = layer
    return net


def resnet18(
    *, spatial_dims: int, in_channels: int, num_classes: int, config: str, **kw
) -> nn.Module:
    """ResNet-18 (He et al. 2016). In 3D, torchvision's `r3d_18` layout (Tran et al. 2018):
    a 3 x 7 x 7 stem strided only in space and no max-pool, so the network strides time 8x.
    That layout is what the paper's "651 GFLOPs per clip" anchor counts (32 x 224 x 224)."""
    check_dims(spatial_dims)
    if spatial_dims == 3:
        stem = dict(conv1_t_size=(3, 7, 7), conv1_t_stride=(1, 2, 2), no_max_pool=True)
    else:
        stem = dict(conv1_t_size=7, conv1_t_stride=2, no_max_pool=False)
    small = config == "small"
    args = dict(
        block=ResNetBlock,
        layers=[1, 1, 1, 1] if small else [2, 2, 2, 2],
        block_inplanes=[16, 32, 64, 128] if small else [64, 128, 256, 512],
        spatial_dims=spatial_dims,
        n_input_channels=in_channels,
        num_classes=num_classes,
        **stem,
    )
    args.update(kw)
    return _finish(ResNet(**args), spatial_dims, "layer4")


def densenet121(
    *, spatial_dims: int, in_channels: int, num_classes: int, config: str, **kw
) -> nn.Module:
    """DenseNet-121 (Huang et al. 2017; growth 32, blocks 6/12/24/16); `small` is growth 8,
    blocks 2/2/2/2. In 3D the stem conv and pool stride only in space: MONAI strides all axes 5
    times, which needs >= 32 frames, and a focus seen in 2-3 frames would be pooled away first."""
    check_dims(spatial_dims)
    small = config == "small"
    args = dict(
        spatial_dims=spatial_dims,
        in_channels=in_channels,
        out_channels=num_classes,
        init_features=16 if small else 64,
        growth_rate=8 if small else 32,
        block_config=(2, 2, 2, 2) if small else (6, 12, 24, 16),
    )
    args.update(kw)
    net = DenseNet(**args)
    if spatial_dims == 3:
        net.features.conv0.stride = (1, 2, 2)
        net.features.pool0.stride = (1, 2, 2)
    return _finish(net, spatial_dims, "features.norm5")
