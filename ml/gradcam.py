"""Grad-CAM for 2D and 3D models, and scores of how well a heatmap finds the calcifications.

Grad-CAM: Selvaraju et al., ICCV 2017. For a target logit y and a layer's activations
A (B, C, T', H', W'): weights w_c = mean over (t, h, w) of dy/dA_c, map = ReLU(sum_c w_c A_c),
upsampled (trilinear for clips, bilinear for images) to the input's grid, so frame f of the
heatmap belongs to frame f of the clip that went in, then min-max normalised to [0, 1] per clip.

    with GradCAM(model) as gc:                 # hooks model's gradcam_layer(model)
        heat = gc.cam(clips)                   # np.ndarray (B, T, H, W) or (B, H, W)
        gc.logits                              # np.ndarray (B, K) of the same forward
        gc.attention                           # list of np.ndarray (B, T, H, W): attention maps
    # no hooks remain on the model here

`gc(x)` does the same in torch: `heat, logits = gc(x)` (tensors on x's device).

Only a forward hook is used: it keeps the layer's output, and the gradient is taken with
`torch.autograd.grad` with respect to that output, so parameters' `.grad` are left untouched
(Grad-CAM can run between training steps) and in-place ops after the layer cannot break a
module backward hook. The layers before the hooked one run without autograd (nothing there
needs a gradient): the hook turns recording on and starts the graph at the layer's output, so
the forward saves no activations for a backward pass that never reaches them.

Localisation scores (`energy_inside_mask`, `pointing_game`) compare a heatmap with the
calcification type-code mask (1-3 are calcifications; 0 none and 4 comet-tail are not), and
return the value a uniform heatmap would get beside the score, so "better than chance" is
visible. Arrays are (B, T, H, W) clips or (B, H, W) images: the first axis is always the clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ml.models import gradcam_layer

__all__ = ["GradCAM", "Score", "calcification_region", "energy_inside_mask", "pointing_game"]


class GradCAM:
    """Context manager: hooks `layer` (default `gradcam_layer(model)`) and unhooks on exit."""

    def __init__(self, model: nn.Module, layer: nn.Module | None = None) -> None:
        self.model = model
        self.layer = layer if layer is not None else gradcam_layer(model)
        self._handle = None
        self._activation: torch.Tensor | None = None
        self._explaining = False  # set while __call__ runs its forward
        self.logits: np.ndarray | None = None
        self.attention: list[np.ndarray] = []

    def __enter__(self) -> GradCAM:
        self._handle = self.layer.register_forward_hook(self._keep)
        return self

    def __exit__(self, *exc) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        self._activation = None

    def _keep(self, module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if not self._explaining or (torch.is_grad_enabled() and output.requires_grad):
            self._activation = output  # another forward in the block, or one with a graph
            return None
        # the forward so far ran without autograd: record from here on (the caller's
        # `no_grad` block restores its mode when the forward returns), from a leaf that holds
        # the layer's output; the clone passed on keeps in-place ops after the layer off it
        torch.set_grad_enabled(True)
        self._activation = output.detach().requires_grad_(True)
        return self._activation.clone()

    def __call__(
        self, x: torch.Tensor, target: int | Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(heatmaps (B, T, H, W) or (B, H, W) in [0, 1], logits (B, K)), as tensors.

        target: None explains the malignancy logit (one-logit models) or each clip's top class;
        an int or one int per clip names the class. With one logit, target 0 explains "benign"
        (the negated logit) and 1 "malignant".
        """
        if self._handle is None:
            raise RuntimeError("use GradCAM inside a `with` block")
        was_training = self.model.training
        self.model.eval()  # batch-norm statistics of the model, not of this batch
        try:
            # works even when the caller is in inference_mode or no_grad; the hook turns
            # autograd on at the layer
            with torch.inference_mode(False), torch.no_grad():
                self._activation = None
                self._explaining = True
                try:
                    logits = self.model(x)  # (B, K)
                finally:
                    self._explaining = False
                act = self._activation
                if act is None:
                    raise RuntimeError("the Grad-CAM layer did not run in the forward pass")
                score = _target_score(logits, target)
            (grad,) = torch.autograd.grad(score, act)
            heat = _grad_cam(act.detach().float(), grad.float(), tuple(x.shape[2:]))
            attention = [
                _upsample(a.detach().float(), tuple(x.shape[2:]))[:, 0]
                for a in getattr(self.model, "attention_maps", None) or []
            ]
        finally:
            self._activation = None
            self.model.train(was_training)
        self.logits = logits.detach().float().cpu().numpy()
        self.attention = [a.cpu().numpy() for a in attention]
        return heat, logits.detach()

    def cam(self, x: torch.Tensor, target: int | Sequence[int] | None = None) -> np.ndarray:
        """Heatmaps (B, T, H, W) for clips or (B, H, W) for images, float32 in [0, 1]."""
        heat, _ = self(x, target)
        return heat.cpu().numpy()


def _target_score(logits: torch.Tensor, target: int | Sequence[int] | None) -> torch.Tensor:
    b, k = logits.shape
    if k == 1:
        sign = torch.ones(b, device=logits.device)
        if target is not None:
            t = torch.as_tensor(target, device=logits.device).expand(b)
            sign = torch.where(t == 0, -1.0, 1.0)
        return (sign * logits[:, 0]).sum()
    if target is None:
        idx = logits.argmax(dim=1)
    else:
        idx = torch.as_tensor(target, device=logits.device).long().expand(b)
    return logits.gather(1, idx[:, None]).sum()


def _upsample(m: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    mode = "trilinear" if len(size) == 3 else "bilinear"
    return F.interpolate(m, size=size, mode=mode, align_corners=False)


def _grad_cam(act: torch.Tensor, grad: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    axes = tuple(range(2, act.ndim))
    weights = grad.mean(dim=axes, keepdim=True)  # (B, C, 1, 1, 1)
    cam = F.relu((weights * act).sum(dim=1, keepdim=True))  # (B, 1, T', H', W')
    cam = _upsample(cam, size)[:, 0]  # (B, T, H, W)
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * len(size)))
    hi = flat.max(dim=1).values.view(-1, *([1] * len(size)))
    span = hi - lo
    # a flat map carries no location: all zeros rather than 0 / 0
    return torch.where(span > 1e-12, (cam - lo) / span.clamp_min(1e-12), torch.zeros_like(cam))


# --------------------------------------------------------------------------- localisation


class Score(NamedTuple):
    """Per-clip score and what a uniform heatmap scores on the same masks, each (B,) float64.

    NaN where the clip has no calcification mark (nothing to find)."""

    value: np.ndarray
    uniform: np.ndarray


def calcification_region(mask: np.ndarray, dilate: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """(marks, region): bool arrays of mask's shape. `marks` are the type codes 1-3; `region`
    grows them by `dilate` pixels in-plane (a (2 d + 1)^2 square, never across frames), since a
    focus of a pixel or two is below the heatmap's resolution."""
    mask = np.asarray(mask)
    marks = mask if mask.dtype == bool else (mask >= 1) & (mask <= 3)
    if dilate <= 0:
        return marks, marks.copy()
    structure = np.ones((1,) * (mask.ndim - 2) + (2 * dilate + 1,) * 2, dtype=bool)
    return marks, ndimage.binary_dilation(marks, structure=structure)


def _as_frames(heat: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    heat, mask = np.asarray(heat, dtype=np.float64), np.asarray(mask)
    if heat.shape != mask.shape:
        raise ValueError(f"heatmap {heat.shape} and mask {mask.shape} differ")
    if heat.ndim == 3:  # (B, H, W) images: one frame per clip
        return heat[:, None], mask[:, None]
    if heat.ndim != 4:
        raise ValueError("expected (B, T, H, W) clips or (B, H, W) images")
    return heat, mask


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def energy_inside_mask(
    heat: np.ndarray, mask: np.ndarray, dilate: int = 1, *, frames: str = "marked"
) -> Score:
    """Share of the heatmap's energy (sum of its non-negative values) inside the dilated marks.

    frames="marked" (default) counts only frames with at least one mark, because annotators
    mark key frames and a focus may sit unmarked in its neighbours; "all" counts every frame,
    so heat on unmarked frames counts against the map. Uniform value: the dilated marks' share
    of the counted pixels.
    """
    heat, mask = _as_frames(heat, mask)
    marks, region = calcification_region(mask, dilate)
    if frames == "marked":
        counted = marks.any(axis=(2, 3))  # (B, T)
    elif frames == "all":
        counted = np.ones(marks.shape[:2], dtype=bool)
    else:
        raise ValueError("frames must be 'marked' or 'all'")
    counted &= marks.any(axis=(1, 2, 3))[:, None]  # clips without marks score NaN
    w = counted[:, :, None, None]  # (B, T, 1, 1)
    heat = np.clip(heat, 0, None) * w
    value = _ratio((heat * region).sum(axis=(1, 2, 3)), heat.sum(axis=(1, 2, 3)))
    area = counted.sum(axis=1) * marks.shape[2] * marks.shape[3]
    uniform = _ratio((region & w).sum(axis=(1, 2, 3)), area)
    return Score(value, uniform)


def pointing_game(
    heat: np.ndarray, mask: np.ndarray, dilate: int = 1, *, per: str = "frame", tol: float = 1e-6
) -> Score:
    """Does the heatmap's maximum fall on a (dilated) calcification mark?

    per="frame" (default): in every frame with a mark, a hit if the frame's maximum is in the
    region; a clip's value is its share of hits. per="clip": one hit or miss per clip, for the
    maximum over all its frames (looking at the wrong frame misses).
    Ties (values within `tol` of the maximum) are split: a hit counts the share of tied pixels
    in the region, i.e. the hit rate of random tie-breaking, so a flat map scores exactly its
    chance rate. Uniform value (chance rate): the region's share of the pixels searched.
    """
    heat, mask = _as_frames(heat, mask)
    marks, region = calcification_region(mask, dilate)
    has = marks.any(axis=(1, 2, 3))  # (B,)
    if per == "frame":
        peak = heat.max(axis=(2, 3), keepdims=True)  # (B, T, 1, 1)
        top = heat >= peak - tol
        hit = _ratio((top & region).sum(axis=(2, 3)), top.sum(axis=(2, 3)))  # (B, T)
        chance = region.mean(axis=(2, 3))  # (B, T)
        counted = marks.any(axis=(2, 3))  # (B, T)
        n = counted.sum(axis=1)
        value = _ratio(np.where(counted, hit, 0).sum(axis=1), n)
        uniform = _ratio(np.where(counted, chance, 0).sum(axis=1), n)
    elif per == "clip":
        peak = heat.max(axis=(1, 2, 3), keepdims=True)  # (B, 1, 1, 1)
        top = heat >= peak - tol
        value = _ratio((top & region).sum(axis=(1, 2, 3)), top.sum(axis=(1, 2, 3)))
        uniform = region.mean(axis=(1, 2, 3))
    else:
        raise ValueError("per must be 'frame' or 'clip'")
    return Score(np.where(has, value, np.nan), np.where(has, uniform, np.nan))
