"""A seed ensemble: members of one architecture trained from different seeds.

The ensemble's logit is the mean of its members' logits. With a few hundred training sweeps a
single network's score on a new centre moves by several hundredths of AUROC from one seed to
the next; the mean of independently trained members is steadier and better (docs/ml-results.md).
Members are trained as ordinary runs, side by side (`ml.ensemble`), then joined here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class SeedEnsemble(nn.Module):
    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError("an ensemble needs at least two members")
        self.members = nn.ModuleList(members)
        first = members[0]
        self.spatial_dims = int(getattr(first, "spatial_dims", 3))
        self.arch = getattr(first, "arch", None)
        self.config_name = getattr(first, "config_name", None)
        # Grad-CAM of the ensemble's score on every member's own layer (ml.gradcam adds the
        # maps): the gradient of the mean reaches each member's activations only.
        layer = getattr(first, "gradcam_layer_name", None)
        if layer is not None:
            self.gradcam_layer_names = [f"members.{k}.{layer}" for k in range(len(members))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x) for m in self.members]).mean(dim=0)

    @property
    def attention_maps(self) -> list[torch.Tensor]:
        """The members' attention maps, first member first (the one review pages show)."""
        return [a for m in self.members for a in (getattr(m, "attention_maps", None) or [])]


def members_of(model: nn.Module) -> list[nn.Module]:
    """The networks whose logits `model` averages: a seed ensemble's members, else `model`."""
    return list(model.members) if isinstance(model, SeedEnsemble) else [model]
