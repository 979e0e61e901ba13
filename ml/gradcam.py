"""Grad-CAM for 2D and 3D models, and scores of how well a heatmap finds the calcifications.

Two ways to turn a layer's activations A (B, C, T', H', W') and the gradient G = dy/dA of a
target logit y into a map, both with only a forward hook and one backward pass:

- "hirescam" (the default; Draelos & Carin, "Use HiResCAM instead of Grad-CAM for faithful
  explanations of convolutional neural networks", 2020): map = ReLU(sum_c G_c * A_c), each
  location weighted by its own gradient: the first-order share of each location in the
  score (exact when the layers above only average-pool and add), so the map shows where the
  model found its evidence.
- "gradcam" (Selvaraju et al., ICCV 2017): weights w_c = mean over (t, h, w) of G_c,
  map = ReLU(sum_c w_c A_c). Averaging the gradient spreads a channel's weight over every
  location it is active in: on our IRv2 models one seed's map sits on the calcifications and
  another's covers the whole nodule (docs/ml-results.md, "Heatmaps"), so it is kept for
  comparison only.

The map is upsampled (trilinear for clips, bilinear for images) to the input's grid, so frame
f of the heatmap belongs to frame f of the clip that went in, then min-max normalised to
[0, 1] per clip.

    with GradCAM(model) as gc:                 # hooks ml.models.gradcam_layers(model)
        heat = gc.cam(clips)                   # np.ndarray (B, T, H, W) or (B, H, W)
        gc.logits                              # np.ndarray (B, K) of the same forward
        gc.attention                           # list of np.ndarray (B, T, H, W): attention maps
    # no hooks remain on the model here

`GradCAM(model, method="gradcam")` for the classic map. `gc(x)` does the same in torch:
`heat, logits = gc(x)` (tensors on x's device). `GraphedGradCAM(model, example)` serves clips
of one shape from a CUDA graph captured once: the whole explanation of one clip in one launch,
where a batch of one otherwise leaves the GPU waiting on the host.

Several layers (a seed ensemble hooks each member's own layer): each layer's map is computed
as above from the gradient of the one target score, and the maps (before normalisation) are
added, so every member's evidence for the ensemble's score is shown, weighted as the score
weighs it, rather than one member's view of the case.

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

import copy
import functools
import time
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from ml.models import gradcam_layers
from ml.models.layers import fold_batch_norms

METHODS = ("hirescam", "gradcam")
DEFAULT_METHOD = "hirescam"

__all__ = ["DEFAULT_METHOD", "METHODS", "GradCAM", "GraphedGradCAM", "Score",
           "calcification_region", "energy_inside_mask", "pointing_game"]


class GradCAM:
    """Context manager: hooks `layer` (a module or a sequence of them; default
    `ml.models.gradcam_layers(model)`) and unhooks on exit."""

    def __init__(self, model: nn.Module, layer: nn.Module | Sequence[nn.Module] | None = None,
                 *, method: str = DEFAULT_METHOD) -> None:
        if method not in METHODS:
            raise ValueError(f"method is one of {', '.join(METHODS)}; got {method!r}")
        self.model = model
        self.method = method
        if layer is None:
            self.layers = gradcam_layers(model)
        elif isinstance(layer, nn.Module):
            self.layers = [layer]
        else:
            self.layers = list(layer)
        if not self.layers:
            raise ValueError("Grad-CAM needs at least one layer")
        self._handles: list = []
        self._activations: dict[int, torch.Tensor] = {}
        self._explaining = False  # set while __call__ runs its forward
        self.logits: np.ndarray | None = None
        self.attention: list[np.ndarray] = []

    def __enter__(self) -> GradCAM:
        self._handles = [layer.register_forward_hook(functools.partial(self._keep, k))
                         for k, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._activations = {}

    def _keep(self, k: int, module: nn.Module, inputs, output: torch.Tensor
              ) -> torch.Tensor | None:
        if not self._explaining:
            return None  # a forward of the caller's own: nothing to keep
        if torch.is_grad_enabled() and output.requires_grad:
            self._activations[k] = output  # a later layer (an ensemble's next member)
            return None
        # the forward so far ran without autograd: record from here on (the caller's
        # `no_grad` block restores its mode when the forward returns), from a leaf that holds
        # the layer's output; the clone passed on keeps in-place ops after the layer off it
        torch.set_grad_enabled(True)
        self._activations[k] = output.detach().requires_grad_(True)
        return self._activations[k].clone()

    def __call__(
        self, x: torch.Tensor, target: int | Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(heatmaps (B, T, H, W) or (B, H, W) in [0, 1], logits (B, K)), as tensors.

        target: None explains the malignancy logit (one-logit models) or each clip's top class;
        an int or one int per clip names the class. With one logit, target 0 explains "benign"
        (the negated logit) and 1 "malignant".
        """
        heat, logits, attention = self.explain(x, target)
        self.logits = logits.float().cpu().numpy()
        self.attention = [a.cpu().numpy() for a in attention]
        return heat, logits

    def explain(
        self, x: torch.Tensor, target: int | Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(heatmaps, logits, attention maps (B, T, H, W) each), all tensors on x's device.

        Launches device work only: no copy to the host and no value read back, so a CUDA graph
        can capture it (`GraphedGradCAM`)."""
        if not self._handles:
            raise RuntimeError("use GradCAM inside a `with` block")
        was_training = self.model.training
        self.model.eval()  # batch-norm statistics of the model, not of this batch
        try:
            # works even when the caller is in inference_mode or no_grad; the hook turns
            # autograd on at the (first) layer
            with torch.inference_mode(False), torch.no_grad():
                self._activations = {}
                self._explaining = True
                try:
                    logits = self.model(x)  # (B, K)
                finally:
                    self._explaining = False
                if len(self._activations) < len(self.layers):
                    raise RuntimeError("the Grad-CAM layer did not run in the forward pass")
                acts = [self._activations[k] for k in range(len(self.layers))]
                score = _target_score(logits, target)
            grads = torch.autograd.grad(score, acts)
            size = tuple(x.shape[2:])
            cam = sum(_upsample(_layer_cam(a.detach().float(), g.float(), self.method), size)
                      for a, g in zip(acts, grads, strict=True))
            heat = _normalise(cam[:, 0])
            attention = [
                _upsample(a.detach().float(), size)[:, 0]
                for a in getattr(self.model, "attention_maps", None) or []
            ]
        finally:
            self._activations = {}
            self.model.train(was_training)
        return heat, logits.detach(), attention

    def cam(self, x: torch.Tensor, target: int | Sequence[int] | None = None) -> np.ndarray:
        """Heatmaps (B, T, H, W) for clips or (B, H, W) for images, float32 in [0, 1]."""
        heat, _ = self(x, target)
        return heat.cpu().numpy()


class GraphedGradCAM:
    """Inference + Grad-CAM of clips of one shape, captured once as a CUDA graph and replayed.

    One clip leaves a GPU idle most of the time: on an H100 the forward of one 64-frame clip
    kept it busy 15% of the wall time (docs/benchmarks.md), the rest being the host launching
    ~1,100 small kernels one by one. A CUDA graph launches the forward, Grad-CAM's partial
    backward and the map arithmetic as one unit. The price is a fixed shape: the explainer
    serves inputs of the example's shape and dtype only (anything else is a ValueError), and
    capture costs a few warm-up passes once.

    On a CPU (or with `graph=False`) the same work runs eagerly with the same results, so
    callers need not care where they run. `fold_norms` explains a copy of the model whose
    batch norms are folded into the convolutions (`ml.models.layers.fold_batch_norms`): the
    same maps up to float rounding, a third fewer kernels and activation passes; the caller's
    model is left as it is. `maps_dtype` (e.g. float16) casts the heatmap and attention maps
    on the device: half the bytes to copy to the host, for a platform that stores them in
    float16 anyway.

        with GraphedGradCAM(model, example, autocast=torch.bfloat16) as explain:
            heat, logits, attention = explain(x)   # like GradCAM.explain, on x's device

    The returned tensors are the caller's own (copied out of the graph's static outputs), so
    the next call does not overwrite them. The model must not be moved or have its
    parameters replaced while the explainer is open; in-place updates are seen, except with
    `fold_norms`, whose copy is made when the explainer is.
    """

    def __init__(
        self,
        model: nn.Module,
        example: torch.Tensor,
        layer: nn.Module | Sequence[nn.Module] | None = None,
        *,
        method: str = DEFAULT_METHOD,
        target: int | Sequence[int] | None = None,
        autocast: torch.dtype | None = None,
        graph: bool | None = None,
        warmup: int = 3,
        fold_norms: bool = False,
        maps_dtype: torch.dtype | None = None,
    ) -> None:
        if fold_norms:
            model, layer = _folded_copy(model, layer)
        self._gradcam = GradCAM(model, layer, method=method)
        self.target = target
        self.autocast = autocast
        self.device = example.device
        self.graphed = (self.device.type == "cuda") if graph is None else graph
        if self.graphed and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA input")
        self.warmup = max(1, warmup)
        self.maps_dtype = maps_dtype
        # the static input keeps the example's strides (channels-last or not): the graph's
        # kernels were chosen for them
        self._input = example.detach().clone()
        self._graph: torch.cuda.CUDAGraph | None = None
        self._outputs: tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]] | None = None
        self.capture_s: float | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._input.shape)

    def __enter__(self) -> GraphedGradCAM:
        self._gradcam.__enter__()
        try:
            if self.graphed:
                self._capture()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._gradcam.__exit__()
        self._graph = None
        self._outputs = None

    def _run(self) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        if self.autocast is None:
            heat, logits, attention = self._gradcam.explain(self._input, self.target)
        else:
            # no cast cache: a graph must recast the weights on every replay (docs of
            # torch.cuda.make_graphed_callables)
            with torch.autocast(self.device.type, dtype=self.autocast, cache_enabled=False):
                heat, logits, attention = self._gradcam.explain(self._input, self.target)
        if self.maps_dtype is not None:
            heat = heat.to(self.maps_dtype)
            attention = [a.to(self.maps_dtype) for a in attention]
        return heat, logits, attention

    def _capture(self) -> None:
        t0 = time.perf_counter()
        # warm up on a side stream (cuDNN autotuning, lazy initialisation), as capture needs
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self._run()
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._outputs = self._run()
        self._graph = graph
        torch.cuda.synchronize(self.device)
        self.capture_s = time.perf_counter() - t0

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        """(heatmaps, logits, attention maps) for x, which must match the example."""
        if not self._gradcam._handles:
            raise RuntimeError("use GraphedGradCAM inside a `with` block")
        if tuple(x.shape) != self.shape or x.dtype != self._input.dtype:
            raise ValueError(
                f"this explainer serves {tuple(self.shape)} {self._input.dtype} inputs; "
                f"got {tuple(x.shape)} {x.dtype}"
            )
        if x.device != self.device:
            raise ValueError(f"this explainer runs on {self.device}; the input is on {x.device}")
        self._input.copy_(x)
        if self._graph is None:
            return self._run()
        self._graph.replay()
        heat, logits, attention = self._outputs
        return heat.clone(), logits.clone(), [a.clone() for a in attention]


def _folded_copy(
    model: nn.Module, layer: nn.Module | Sequence[nn.Module] | None
) -> tuple[nn.Module, list[nn.Module] | None]:
    """(a copy of model with its batch norms folded, the copy's modules named as `layer`'s)."""
    names = {id(m): n for n, m in model.named_modules()}
    if layer is not None:
        layers = [layer] if isinstance(layer, nn.Module) else list(layer)
        missing = [m for m in layers if id(m) not in names]
        if missing:
            raise ValueError("the Grad-CAM layer is not a module of the model")
    # tensors a forward left on the modules (attention maps, focus logits) are not copied:
    # they may hold an autograd graph, which cannot be deep-copied, and the copy makes its own
    leftovers = {id(v): None for m in model.modules() for v in vars(m).values()
                 if isinstance(v, torch.Tensor)}
    folded = copy.deepcopy(model, leftovers).eval()
    fold_batch_norms(folded)
    if layer is None:
        return folded, None
    return folded, [folded.get_submodule(names[id(m)]) for m in layers]


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


def _layer_cam(act: torch.Tensor, grad: torch.Tensor, method: str) -> torch.Tensor:
    """(B, 1, T', H', W') map of one layer on its own grid, before normalisation."""
    if method == "gradcam":
        grad = grad.mean(dim=tuple(range(2, act.ndim)), keepdim=True)  # (B, C, 1, 1, 1)
    return F.relu((grad * act).sum(dim=1, keepdim=True))


def _normalise(cam: torch.Tensor) -> torch.Tensor:
    """Min-max to [0, 1] per clip; a flat map carries no location: all zeros, not 0 / 0."""
    ones = [1] * (cam.ndim - 1)
    flat = cam.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *ones)
    hi = flat.max(dim=1).values.view(-1, *ones)
    span = hi - lo
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
