"""Load a trained run safely and score clips, with heatmaps for the reader.

The platform stores a standardised clip per video ((T, H, W) uint8 from `ml.video`); `predict`
prepares it with `ml.data.prepare_clip`, the very function evaluation uses, so a score here equals
the score in the run's `predictions.csv`. Weights load from safetensors (or `torch.load` with
`weights_only=True`): nothing is ever unpickled.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from ml.data import ClipSpec, DataError, prepare_clip, resize_clip

log = logging.getLogger(__name__)

# Heatmaps on a GPU replay a CUDA graph per (model, input shape) (`ml.gradcam.GraphedGradCAM`,
# batch norms folded into the convolutions): one clip otherwise leaves the GPU waiting on the
# host's kernel launches. Each graph keeps its activations' memory (about 2.6 GiB for the
# paper model on 64 frames), so few are kept. ML_CUDA_GRAPHS=0 turns them off (eager
# Grad-CAM, the same maps).
CUDA_GRAPHS = os.environ.get("ML_CUDA_GRAPHS", "1") != "0"
GRAPHED_EXPLAINERS_KEPT = 2
# key -> (model, its weights' version at capture, explainer or None where capture failed)
_explainers: OrderedDict[tuple, tuple] = OrderedDict()
_explainers_lock = threading.Lock()


def load_model(
    source: str | Path | tuple[str | Path, Mapping | str | Path],
    *,
    device: str | torch.device = "cpu",
) -> tuple[nn.Module, dict]:
    """(model in eval mode, run config) from a run directory or (weights path, config).

    `config` is the run's `config.json` content (a dict) or its path. The config always
    carries `train` (the TrainConfig fields), `spec` (the ClipSpec) and `threshold`.
    """
    from ml import train as train_mod

    if isinstance(source, tuple):
        weights, config = source
        if not isinstance(config, Mapping):
            config = json.loads(Path(config).read_text())
    else:
        run = Path(source)
        if not (run / "config.json").is_file():
            raise FileNotFoundError(f"{run} is not a run directory (no config.json)")
        config = json.loads((run / "config.json").read_text())
        weights = run / "model.safetensors"
    config = dict(config)
    weights = Path(weights)
    if not weights.is_file():
        raise FileNotFoundError(f"no weights at {weights}")
    cfg = train_mod.config_from_dict(config["train"])
    model = train_mod.build_model(cfg)
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights))
    else:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("model", state)  # a training checkpoint or a bare state dict
    model.load_state_dict(state)
    model.to(device).eval()
    if "spec" not in config:
        config["spec"] = vars(cfg.clip_spec(int(getattr(model, "spatial_dims", 3))))
    return model, config


def spec_of(config: Mapping) -> ClipSpec:
    return ClipSpec.from_dict(config["spec"])


def gradcam_layer_of(model: nn.Module, config: Mapping) -> list[nn.Module] | None:
    """The layers the run's config names for Grad-CAM (`train.gradcam_layer`, comma-separated
    for a seed ensemble's members), or None for the model's default
    (`ml.models.gradcam_layers`)."""
    names = [n.strip() for n in (config.get("train", {}).get("gradcam_layer") or "").split(",")]
    names = [n for n in names if n]
    return [model.get_submodule(n) for n in names] if names else None


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def check_clip(clip: np.ndarray) -> None:
    """Refuse what is not a stored clip (T, H, W)."""
    shape = tuple(np.shape(clip))
    if len(shape) != 3:
        raise DataError(f"a clip is (T, H, W) uint8; got shape {shape}")


def match_clip_size(
    clip: np.ndarray, spec: ClipSpec, boxes: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The clip (and its boxes) resampled to the stored size the model learnt from.

    A centre may standardise videos at another size than the training export did (or change
    the setting later). Cropping and resizing to the model grid would still work, but a focus
    then covers a different number of stored pixels before the crop is resized, so the model
    would see sharper or blurrier foci than in training. Resampling first keeps the input as
    trained; scoring never refuses a video for its size.
    """
    check_clip(clip)
    if spec.clip_size is None or tuple(np.shape(clip)[1:]) == tuple(spec.clip_size):
        return clip, boxes
    h0, w0 = np.shape(clip)[1:]
    h, w = spec.clip_size
    resized = np.clip(np.rint(resize_clip(np.asarray(clip), (h, w))), 0, 255).astype(np.uint8)
    if boxes is not None:
        boxes = np.asarray(boxes, np.float64) * np.array([w / w0, h / h0, w / w0, h / h0])
    return resized, boxes


def temporal_views(x: torch.Tensor, views: int) -> list[torch.Tensor]:
    """The interleaved clips of a batch sampled at `views` x the model's frames: view v holds
    frames v, v + views, ...; each keeps the frame spacing the model learnt. Images and
    `views` <= 1: the batch itself."""
    if views <= 1 or x.ndim != 5:
        return [x]
    if x.shape[2] % views:
        raise ValueError(f"{x.shape[2]} frames do not split into {views} views")
    return [x[:, :, v::views] for v in range(views)]


@torch.no_grad()
def logits_of(
    model: nn.Module, x: torch.Tensor, flip_average: bool, views: int = 1
) -> torch.Tensor:
    """(B, K) logits for a prepared batch, as evaluation and inference score it: with
    `flip_average` (the run's `ClipSpec.flip_average`) the mean of the logits of the batch and
    of its left-right mirror (the probe's orientation carries no diagnosis); with `views`
    (`ClipSpec.temporal_views`) the mean over the batch's interleaved temporal views."""
    parts = temporal_views(x, views)
    total = None
    for v in parts:
        logits = model(v)
        if flip_average:
            logits = (logits + model(torch.flip(v, dims=[-1]))) / 2
        total = logits if total is None else total + logits
    return total if len(parts) == 1 else total / len(parts)


def predict(
    model: nn.Module, clip: np.ndarray, spec: ClipSpec, boxes: np.ndarray | None = None
) -> float:
    """Probability of malignancy for one stored clip (T, H, W) uint8.

    Pass the nodule's `boxes` ((T, 4), NaN where out of view) when the model was trained on ROI
    crops (`spec.roi`); without them it sees the whole image.
    """
    clip, boxes = match_clip_size(clip, spec, boxes)
    model.eval()
    x = torch.from_numpy(prepare_clip(clip, spec, boxes=boxes)["clip"])[None]
    with torch.no_grad():
        logits = logits_of(model, x.to(_device(model)), spec.flip_average, spec.temporal_views)
    return float(torch.sigmoid(logits[0, 0].float()))


@dataclass
class Heatmaps:
    """Heatmaps aligned to the stored clip: frame f of `gradcam` belongs to frame f of the clip.

    Maps are float16 in [0, 1], (T, H, W) of the clip; zero outside the ROI crop, before the
    first and after the last frame the model saw (and, for 2D models, on every frame but the
    key frame). `gradcam_input` and `attention_input` are the
    same maps on the model's input grid (the sampled frames, the crop at model size), which is
    where localisation is scored against the aligned mask.
    """

    probability: float
    gradcam: np.ndarray
    attention: list[np.ndarray]
    frame_indices: np.ndarray  # (T',) clip frames the model saw
    crop_box: tuple[int, int, int, int]  # (x0, y0, x1, y1) in clip pixels
    gradcam_input: np.ndarray = field(repr=False)  # (T', h, w) float32
    attention_input: list[np.ndarray] = field(repr=False)  # each (T', h, w) float32


def input_heatmaps(
    model: nn.Module, x: torch.Tensor, layer: nn.Module | list[nn.Module] | None = None,
    views: int = 1, method: str | None = None,
) -> tuple[torch.Tensor, np.ndarray, list[np.ndarray]]:
    """(logits (B, 1), Grad-CAM, attention maps) for an input batch; the maps are
    (B, T, H, W) (or (B, H, W)) on the input grid, Grad-CAM in [0, 1] per case. With `views`,
    each temporal view is explained on its own (Grad-CAM normalised per view) and its maps
    go back to the view's frames; the logits are the views' mean. `method`: `ml.gradcam`'s
    (None: its default)."""
    from ml.gradcam import DEFAULT_METHOD, GradCAM

    method = method or DEFAULT_METHOD
    parts = temporal_views(x, views)
    heat = np.zeros((x.shape[0], *x.shape[2:]), np.float32)
    attention: list[np.ndarray] = []
    total = None
    graphed = _graphed_explainer(model, parts[0], layer, method)
    with contextlib.ExitStack() as stack:
        gc = None
        for v, part in enumerate(parts):
            if graphed is not None and tuple(part.shape) == graphed.shape:
                h, logits, maps = graphed(part)
            else:
                gc = gc or stack.enter_context(GradCAM(model, layer, method=method))
                h, logits, maps = gc.explain(part)
            frames = slice(v, None, len(parts)) if len(parts) > 1 else slice(None)
            heat[:, frames] = h.cpu().numpy()
            if not attention:
                attention = [np.zeros_like(heat) for _ in maps]
            for full, a in zip(attention, maps, strict=True):
                full[:, frames] = a.cpu().numpy()
            total = logits if total is None else total + logits
    return total / len(parts), heat, attention


def _graphed_explainer(
    model: nn.Module, x: torch.Tensor, layer: nn.Module | list[nn.Module] | None, method: str
):
    """The CUDA-graph explainer of (model, x's shape, layer, method), captured on first use and
    kept for the next clip; None on a CPU, with CUDA_GRAPHS off, or where capture failed (the
    caller then explains eagerly: the same maps, only slower).

    The explainer works on a folded copy of the weights: a kept one is captured again when the
    model's parameters or buffers have changed in place since (their version counters)."""
    from ml.gradcam import GraphedGradCAM

    if not CUDA_GRAPHS or x.device.type != "cuda":
        return None
    layers = () if layer is None else (layer,) if isinstance(layer, nn.Module) else tuple(layer)
    # ids are safe keys: an entry holds its model (and so its layers) alive, so no id is reused
    key = (id(model), tuple(x.shape), x.dtype, str(x.device), method,
           tuple(id(m) for m in layers))
    version = _weights_version(model)
    with _explainers_lock:
        kept = _explainers.pop(key, None)
        if kept is not None and kept[1] == version:
            _explainers[key] = kept  # now the most recently used
            return kept[2]
        if kept is not None and kept[2] is not None:
            kept[2].__exit__(None, None, None)  # the weights changed: capture again
        try:
            # float16 maps: what the platform stores (`Heatmaps`), half the copy to the host
            explainer = GraphedGradCAM(model, torch.zeros_like(x), layer, method=method,
                                       fold_norms=True, maps_dtype=torch.float16)
            explainer.__enter__()
        except Exception as exc:  # noqa: BLE001 - fall back to eager Grad-CAM, never fail a case
            log.warning("CUDA-graph Grad-CAM unavailable for %s: %s; explaining eagerly",
                        tuple(x.shape), exc)
            explainer = None
        _explainers[key] = (model, version, explainer)  # a failure is remembered too
        while len(_explainers) > GRAPHED_EXPLAINERS_KEPT:
            _, (_, _, old) = _explainers.popitem(last=False)
            if old is not None:
                old.__exit__(None, None, None)
        return explainer


def _weights_version(model: nn.Module) -> int:
    """Changes whenever a parameter or buffer of the model is modified in place (an optimiser
    step, `load_state_dict`): the sum of their autograd version counters. -1 for a model made
    under `torch.inference_mode`, whose tensors keep no counter (and cannot be changed outside
    it)."""
    try:
        return sum(t._version for t in (*model.parameters(), *model.buffers()))
    except RuntimeError:
        return -1


def to_clip_grid(
    heat: np.ndarray,
    frame_indices: np.ndarray,
    crop_box: tuple[int, int, int, int],
    clip_shape: tuple[int, int, int],
) -> np.ndarray:
    """Map a heatmap on the model grid ((T', h, w), or (h, w) for a key frame) to the clip:
    every clip frame takes the nearest sampled frame's map, pasted into the crop box."""
    t0, h0, w0 = clip_shape
    x0, y0, x1, y1 = crop_box
    heat = np.asarray(heat, np.float32)
    if heat.ndim == 2:
        heat = heat[None]
    out = np.zeros(clip_shape, np.float16)
    pasted = np.stack([cv2.resize(h, (x1 - x0, y1 - y0), interpolation=cv2.INTER_LINEAR)
                       for h in heat])
    pasted = np.clip(pasted, 0, 1).astype(np.float16)
    idx = np.asarray(frame_indices)
    if len(idx) == 1:  # 2D model: the key frame only
        out[idx[0], y0:y1, x0:x1] = pasted[0]
        return out
    nearest = np.abs(np.arange(t0)[:, None] - idx[None, :]).argmin(1)  # (T0,)
    seen = slice(int(idx.min()), int(idx.max()) + 1)  # frames outside were never looked at
    out[seen, y0:y1, x0:x1] = pasted[nearest[seen]]
    return out


def predict_with_heatmaps(
    model: nn.Module,
    clip: np.ndarray,
    spec: ClipSpec,
    boxes: np.ndarray | None = None,
    layer: nn.Module | list[nn.Module] | None = None,
    method: str | None = None,
) -> Heatmaps:
    """Probability, Grad-CAM and attention maps for one stored clip (T, H, W) uint8, on the
    clip's own grid whatever size the model learnt from."""
    shape = tuple(np.shape(clip))
    clip, boxes = match_clip_size(clip, spec, boxes)
    prep = prepare_clip(clip, spec, boxes=boxes)
    x = torch.from_numpy(prep["clip"])[None].to(_device(model))
    logits, heat, att = input_heatmaps(model, x, layer, spec.temporal_views, method)
    if spec.flip_average:  # the heatmaps stay those of the clip as shown
        with torch.no_grad():
            mirror = logits_of(model, torch.flip(x, dims=[-1]), False, spec.temporal_views)
        logits = (logits.detach() + mirror) / 2
    heat_in = heat[0].astype(np.float32)
    att_in = [a[0].astype(np.float32) for a in att]
    # The crop box in the caller's clip pixels (it was found on the resampled clip).
    sy, sx = shape[1] / np.shape(clip)[1], shape[2] / np.shape(clip)[2]
    x0, y0, x1, y1 = prep["crop_box"]
    crop_box = (int(round(x0 * sx)), int(round(y0 * sy)),
                max(int(round(x1 * sx)), int(round(x0 * sx)) + 1),
                max(int(round(y1 * sy)), int(round(y0 * sy)) + 1))
    return Heatmaps(
        probability=float(torch.sigmoid(logits[0, 0].float())),
        gradcam=to_clip_grid(heat_in, prep["frame_indices"], crop_box, shape),
        attention=[to_clip_grid(a, prep["frame_indices"], crop_box, shape) for a in att_in],
        frame_indices=prep["frame_indices"],
        crop_box=crop_box,
        gradcam_input=heat_in,
        attention_input=att_in,
    )
