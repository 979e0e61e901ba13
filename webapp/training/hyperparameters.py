"""The hyperparameters a user may set for a run, their types and ranges, and the checks that
refuse a configuration before it reaches a worker: values out of range, an input the
architecture cannot take, a snapshot with too few cases of a class.

Everything not listed keeps the preset's value (`ml.train.PRESETS`, `ml.train.TrainConfig`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace


@dataclass(frozen=True)
class Param:
    name: str
    kind: type
    minimum: float | None = None
    maximum: float | None = None
    help: str = ""
    # a keyword of the architecture (`TrainConfig.model_options`), not a TrainConfig field
    model_option: bool = False

    @property
    def label(self) -> str:
        """The name a person reads on the form and in errors."""
        return self.name.replace("_", " ").replace("tirads", "TI-RADS")


PARAMETERS: tuple[Param, ...] = (
    Param("epochs", int, 1, 1000, "Upper bound; early stopping may end the run sooner."),
    Param("batch_size", int, 2, 512, "Clips per GPU per step."),
    Param("lr", float, 1e-7, 1.0, "AdamW peak learning rate."),
    Param("weight_decay", float, 0.0, 1.0, "AdamW weight decay."),
    Param("warmup_epochs", float, 0.0, 100.0, "Linear warm-up before the cosine decay."),
    Param("frames", int, 2, 256, "Frames sampled per sweep (3D models)."),
    Param("size", int, 16, 512, "Model input side in pixels."),
    Param("patience", int, 0, 1000, "Stop after this many epochs without a better "
                                     "validation AUROC (0: never)."),
    Param("grad_accum", int, 1, 128, "Micro-batches per optimiser step."),
    Param("attention_loss_weight", float, 0.0, 10.0,
          "Weight of the attention supervision (used when cases have calcification masks)."),
    Param("seed", int, 0, 2**31 - 1, "Model initialisation, sampling and augmentation."),
    Param("augment", bool, help="Training augmentation."),
    Param("roi", bool, help="Crop to the annotated nodule where a case has boxes (then "
                            "predictions crop to the accepted annotation's boxes too)."),
    Param("roi_max_side", int, 0, 4096,
          "Largest side, in stored-clip pixels, of the crop around the nodule (0: no cap): a "
          "large nodule is shrunk no more than this, so its calcification foci survive."),
    Param("context_channel", bool,
          help="Beside the capped nodule crop, the model also sees the whole nodule as a "
               "second input channel, so a large nodule's margin, shape and rim stay in view "
               "(with roi max side). Measured with the calcification attention model; the "
               "network without it did not learn with this channel (docs/ml-results.md)."),
    Param("temporal_views", int, 1, 8,
          "Validation, evaluation and predictions score this many interleaved clips of the "
          "sampled frames and average them (3D models): with 2, almost every calcification "
          "focus of a sweep is seen."),
    Param("flip_average", bool, help="Validation, evaluation and predictions also score the "
                                     "left-right mirror of a clip and average the two."),
    Param("members", int, 1, 8,
          "A seed ensemble: this many networks (seeds seed, seed + 1, ...) trained side by "
          "side, one process each; the score is their mean."),
    Param("focus_head", bool, model_option=True,
          help="A punctate-focus detector on stage A, taught by the punctate calcification "
               "marks (InceptionResNetV2 models)."),
    Param("focus_count", bool, model_option=True,
          help="The classifier also reads the focus head's expected number of foci, not only "
               "its strongest ones (needs the focus head)."),
    Param("focus_logit", bool, model_option=True,
          help="The focus head's evidence gets a logit of its own, added to the network's "
               "and taught to classify by itself (needs the focus head)."),
    Param("focus_detach", bool, model_option=True,
          help="The classifier reads the focus head's evidence without training the head, "
               "which then learns from the punctate marks alone (needs the focus head)."),
    Param("focus_norm", bool, model_option=True,
          help="The focus evidence is standardised before its own logit, so that the logit "
               "learns from how the evidence varies, not its offset (needs focus logit)."),
    Param("tirads_head", bool, model_option=True,
          help="An auxiliary head taught to read the annotators' TI-RADS composition, "
               "echogenicity, shape and margin from the network's features (InceptionResNetV2 "
               "models; cases without a TI-RADS reading teach it nothing)."),
    Param("tirads_loss_weight", float, 0.0, 100.0,
          "Weight of the TI-RADS head's supervision by the annotators' readings."),
    Param("focus_loss_weight", float, 0.0, 100.0,
          "Weight of the focus head's supervision by the punctate marks."),
    Param("evidence_loss_weight", float, 0.0, 100.0,
          "Weight of the classification loss on the focus evidence's own logit (with "
          "focus logit)."),
    Param("evidence_lr_scale", float, 0.01, 1000.0,
          "Learning rate of the focus evidence's own logit, as a multiple of the learning "
          "rate (with focus logit and focus norm)."),
    Param("num_workers", int, 0, 64, "Data loader processes per GPU."),
    Param("log_every", int, 1, 100000, "Optimiser steps between loss points."),
)
BY_NAME: dict[str, Param] = {p.name: p for p in PARAMETERS}

# An architecture option that reads another's output: (the option it needs, why).
OPTION_NEEDS: dict[str, tuple[str, str]] = {
    "focus_count": ("focus_head", "The focus count is read from the focus head's map: turn "
                                  "the focus head on too."),
    "focus_logit": ("focus_head", "The focus logit is read from the focus head's map: turn "
                                  "the focus head on too."),
    "focus_detach": ("focus_head", "Detaching the focus head's evidence needs the focus "
                                   "head: turn it on too."),
    "focus_norm": ("focus_logit", "The focus norm standardises the focus logit's evidence: "
                                  "turn the focus logit on too."),
}


class ConfigError(Exception):
    """A configuration that cannot run; `errors` maps a field (or "__all__") to reasons."""

    def __init__(self, errors: Mapping[str, list[str]]):
        self.errors = {k: list(v) for k, v in errors.items()}
        super().__init__(" ".join(m for msgs in self.errors.values() for m in msgs))


def defaults(preset: str) -> dict:
    """The effective value of every listed parameter under `preset`."""
    from ml.train import make_config

    cfg = make_config(preset)
    return {p.name: cfg.model_options.get(p.name, False) if p.model_option
            else getattr(cfg, p.name) for p in PARAMETERS}


def train_overrides(preset: str, hyperparameters: Mapping) -> dict:
    """Clean hyperparameters as `ml.train.TrainConfig` overrides: the architecture's keywords
    (focus_head, focus_count, focus_logit, focus_detach, focus_norm) go into `model_options`,
    on top of the preset's."""
    from ml.train import make_config

    preset_options = make_config(preset).model_options
    overrides, options = {}, {}
    for k, v in hyperparameters.items():
        if not (k in BY_NAME and BY_NAME[k].model_option):
            overrides[k] = v
        elif v or k in preset_options:  # "off" for an option the preset lacks changes nothing
            options[k] = v
    if options:
        overrides["model_options"] = {**preset_options, **options}
    return overrides


def coerce(values: Mapping) -> tuple[dict, dict[str, list[str]]]:
    """(typed values, errors) for user input; unknown names and out-of-range values are
    errors. None means "the preset's value" and is dropped."""
    clean, errors = {}, {}
    for name, raw in values.items():
        param = BY_NAME.get(name)
        if param is None:
            errors.setdefault(name, []).append(
                f"{name} cannot be set here; settable: {', '.join(BY_NAME)}.")
            continue
        if raw is None or raw == "":
            continue
        try:
            if param.kind is bool:
                if not isinstance(raw, bool):
                    raise ValueError
                value = raw
            elif param.kind is int:
                if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                    raise ValueError
                value = int(raw)
            else:
                if isinstance(raw, bool):
                    raise ValueError
                value = float(raw)
        except (TypeError, ValueError):
            errors.setdefault(name, []).append(f"{name} must be a {param.kind.__name__}.")
            continue
        if param.minimum is not None and value < param.minimum:
            errors.setdefault(name, []).append(f"{name} must be at least {param.minimum}.")
        elif param.maximum is not None and value > param.maximum:
            errors.setdefault(name, []).append(f"{name} must be at most {param.maximum}.")
        else:
            clean[name] = value
    return clean, errors


@functools.lru_cache(maxsize=256)
def input_refusal(arch: str, preset: str, frames: int, size: int,
                  options: tuple[tuple[str, object], ...] = ()) -> str | None:
    """Why `arch` (built with the model `options`) cannot take clips of `frames` x `size` x
    `size`, or None when it can.

    The network is built and run on PyTorch's meta device: shapes are checked, nothing is
    computed or allocated, so this costs well under a second even for the paper's sizes.
    """
    import torch

    from ml.models import create_model

    try:
        with torch.device("meta"):
            model = create_model(arch, config=preset, **dict(options)).eval()
            dims = int(getattr(model, "spatial_dims", 3))
            shape = (1, 1, frames, size, size) if dims == 3 else (1, 1, size, size)
            model(torch.zeros(shape))
    except TypeError:  # a keyword the architecture does not have
        names = " or ".join(BY_NAME[k].label if k in BY_NAME else k.replace("_", " ")
                            for k, _ in options)
        return f"{arch} has no option {names}: only the InceptionResNetV2 models have one."
    except (RuntimeError, ValueError) as exc:
        what = f"{frames} frames of {size} x {size} pixels" if dims == 3 else \
            f"key frames of {size} x {size} pixels"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return (f"{arch} ({preset}) cannot take {what}: {first}. Use a larger input size "
                "(or more frames).")
    return None


def split_refusal(counts: Mapping, min_per_class: int) -> str | None:
    """ml.train's own rule for too few cases of a class in train or val, on a snapshot's
    frozen counts ({split: {n, benign, malignant}})."""
    from ml.data import DataError
    from ml.train import check_splits

    records = [SimpleNamespace(split=split, label=label)
               for split, c in counts.items()
               for label, key in ((0, "benign"), (1, "malignant"))
               for _ in range(int(c.get(key, 0)))]
    try:
        check_splits(records, min_per_class)
    except DataError as exc:
        return f"The snapshot cannot train this model: {exc}"
    return None


def check(*, arch: str, preset: str, hyperparameters: Mapping, gpus: int, max_gpus: int,
          counts: Mapping | None) -> dict:
    """The clean hyperparameters, or ConfigError with every reason found."""
    from ml.models import MODEL_NAMES
    from ml.train import PRESETS, make_config

    errors: dict[str, list[str]] = {}
    if arch not in MODEL_NAMES:
        errors["arch"] = [f"Unknown architecture {arch!r}; choose from {', '.join(MODEL_NAMES)}."]
    if preset not in PRESETS:
        errors["preset"] = [f"Unknown preset {preset!r}; choose from {', '.join(PRESETS)}."]
    if not isinstance(gpus, int) or isinstance(gpus, bool) or not 1 <= gpus <= max_gpus:
        errors["gpus"] = [f"The number of GPUs must be between 1 and {max_gpus}."]
    clean, value_errors = coerce(hyperparameters)
    errors.update(value_errors)
    if clean.get("members", 1) > 1 and isinstance(gpus, int) and gpus > 1:
        errors["members"] = ["A seed ensemble trains its members side by side on one device: "
                             "choose one GPU, or one member on several GPUs."]
    if errors:
        raise ConfigError(errors)
    try:
        cfg = make_config(preset, arch=arch, **train_overrides(preset, clean))
    except (TypeError, ValueError) as exc:
        raise ConfigError({"__all__": [str(exc)]}) from exc
    options = tuple(sorted((k, v) for k, v in cfg.model_options.items() if k in BY_NAME))
    chosen = dict(options)
    if errors := {k: [why] for k, (needed, why) in OPTION_NEEDS.items()
                  if chosen.get(k) and not chosen.get(needed)}:
        raise ConfigError(errors)
    if refusal := input_refusal(arch, preset, cfg.frames, cfg.size, options):
        if options and refusal.startswith(f"{arch} has no option"):
            field = options[0][0]
        else:
            field = "size" if "size" in clean or "frames" not in clean else "frames"
        raise ConfigError({field: [refusal]})
    if counts is not None and (refusal := split_refusal(counts, cfg.min_per_class)):
        raise ConfigError({"snapshot": [refusal]})
    return clean


def effective(preset: str, arch: str, hyperparameters: Mapping) -> dict:
    """The whole TrainConfig a run will use, for display."""
    from ml.train import make_config

    return dataclasses.asdict(make_config(preset, arch=arch,
                                          **train_overrides(preset, hyperparameters)))
