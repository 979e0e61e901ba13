"""ml.train: overfitting, exact resume, the metrics log, refusals, DDP on gloo."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import ml.train as train_mod
from ml.data import ClipDataset, ClipSpec, DataError, read_manifest, write_manifest
from ml.train import TrainConfig, lr_lambda, make_config, train
from tests.ml.test_data import make_tiny_dataset

ROOT = Path(__file__).resolve().parents[2]


class TinyNet(nn.Module):
    """A few hundred parameters with a spatio-temporal attention map, as attention models have:
    enough to find a bright focus, fast enough for unit tests."""

    gradcam_layer_name = "conv"

    def __init__(self, spatial_dims: int = 3):
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.spatial_dims = spatial_dims
        self.conv = conv(1, 8, 3, padding=1)
        self.norm = nn.BatchNorm3d(8) if spatial_dims == 3 else nn.BatchNorm2d(8)
        self.att = conv(8, 1, 1)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(8, 1)
        self.attention_maps: list[torch.Tensor] = []

    def forward(self, x):
        f = torch.relu(self.norm(self.conv(x)))  # (B, 8, T, H, W)
        a = torch.sigmoid(self.att(f))  # (B, 1, T, H, W)
        self.attention_maps = [a]
        f = (f * (1 + a)).flatten(2).amax(2)  # (B, 8)
        return self.fc(self.drop(f))  # (B, 1)


def tiny_model(cfg: TrainConfig) -> nn.Module:
    return TinyNet(spatial_dims=2 if cfg.arch.endswith("2d") else 3)


@pytest.fixture
def tiny_models(monkeypatch):
    monkeypatch.setattr(train_mod, "build_model", tiny_model)


def tiny_config(**kw) -> TrainConfig:
    base = dict(arch="tiny", frames=6, size=16, batch_size=4, epochs=2, lr=3e-2,
                warmup_epochs=0.5, num_workers=0, threads=1, log_every=1)
    return make_config("small", **{**base, **kw})


@pytest.fixture
def tiny(tmp_path) -> Path:
    return make_tiny_dataset(tmp_path / "data")


def _events(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_lambda(s, warmup_steps=4, total_steps=20, min_ratio=0.01) for s in range(21)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:], strict=False))
    assert lrs[-1] == pytest.approx(0.01)


def test_optimizer_decays_weights_only_and_is_unfused_on_cpu():
    model = TinyNet()
    opt = train_mod.make_optimizer(model, TrainConfig(weight_decay=0.05))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.05 and all(p.ndim >= 2 for p in decay["params"])
    assert no_decay["weight_decay"] == 0.0 and all(p.ndim < 2 for p in no_decay["params"])
    # fused AdamW is a CUDA kernel: on the CPU the default implementation runs
    assert not opt.defaults["fused"]


@pytest.mark.parametrize(
    ("options", "scale", "evidence_lr"),
    [
        ({"focus_logit": True, "focus_norm": True}, 20.0, 0.02),  # its own, faster group
        ({"focus_logit": True, "focus_norm": True}, 1.0, None),  # the shared groups
        ({}, 20.0, None),  # no evidence layer: the scale has nothing to act on
    ],
)
def test_evidence_layer_learns_at_its_own_rate(options, scale, evidence_lr):
    from ml.models import create_model

    model = create_model("irv2_cam", focus_head=True, **options)
    opt = train_mod.make_optimizer(model, TrainConfig(lr=1e-3, evidence_lr_scale=scale))
    if evidence_lr is None:
        assert len(opt.param_groups) == 2
        return
    decay, no_decay, evidence = opt.param_groups
    assert evidence["lr"] == pytest.approx(evidence_lr) and evidence["weight_decay"] == 0.0
    assert {id(p) for p in evidence["params"]} == {id(p) for p in model.evidence_fc.parameters()}
    shared = {id(p) for p in decay["params"] + no_decay["params"]}
    assert not shared & {id(p) for p in evidence["params"]}  # each parameter in one group
    assert len(shared) + 2 == len(list(model.parameters()))
    torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)  # the schedule scales each group
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([5e-4, 5e-4, evidence_lr / 2])
    with pytest.raises(ValueError, match="evidence_lr_scale is a positive multiple"):
        make_config("small", evidence_lr_scale=0)


def test_make_config_presets_and_overrides():
    cfg = make_config("paper", epochs=3, lr=None)
    assert cfg.preset == "paper" and cfg.epochs == 3 and cfg.lr == train_mod.PRESETS["paper"]["lr"]
    with pytest.raises(ValueError, match="unknown preset"):
        make_config("huge")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        make_config("small", learning_rate=1)
    with pytest.raises(ValueError, match="attention_target is one of calcifications, punctate"):
        make_config("small", attention_target="rim")
    with pytest.raises(ValueError, match="roi_side"):
        make_config("small", roi_side=-5)
    spec = make_config("small", roi_side=120).clip_spec(3)
    assert spec.roi_side == 120 and ClipSpec.from_dict(vars(spec)) == spec
    with pytest.raises(ValueError, match="roi_max_side"):
        make_config("small", roi_max_side=-1)
    spec = make_config("small", roi_max_side=112).clip_spec(3)
    assert spec.roi_max_side == 112 and ClipSpec.from_dict(vars(spec)) == spec


@pytest.mark.parametrize(
    "amp, amp_dtype, device, expected",
    [
        (True, "bf16", "cuda", torch.bfloat16),
        (True, "fp16", "cuda", torch.float16),
        (False, "bf16", "cuda", None),
        # never on CPU: its bf16 conv3d weight gradients are wrong for short clips
        (True, "bf16", "cpu", None),
    ],
)
def test_training_autocasts_on_cuda_only(amp, amp_dtype, device, expected):
    cfg = make_config("small", amp=amp, amp_dtype=amp_dtype)
    assert train_mod.autocast_dtype(cfg, torch.device(device)) == expected


def test_cpu_training_runs_in_fp32_channels_last_and_says_so(tiny, tmp_path, monkeypatch):
    """The small preset's CPU path: fp32 on channels-last clips through a real InceptionResNetV2
    with the calcification attention module; the start event names the precision, so a run's
    figures can be traced to it."""
    seen = []
    real_build = train_mod.build_model

    def build_and_watch(cfg):
        model = real_build(cfg)
        model.register_forward_pre_hook(lambda _, args: seen.append(
            (args[0].dtype, args[0].is_contiguous(memory_format=torch.channels_last_3d))))
        return model

    monkeypatch.setattr(train_mod, "build_model", build_and_watch)
    run = tmp_path / "run"
    train(tiny_config(arch="irv2_cam", epochs=1, frames=16, size=64), tiny, run)
    log = _events(run)
    assert log[0]["event"] == "start" and log[0]["autocast"] == "fp32"
    assert seen and set(seen) == {(torch.float32, True)}
    losses = [e["loss"] for e in log if e["event"] == "step"]
    assert losses and all(np.isfinite(losses))


def test_overfits_a_tiny_batch(tiny):
    torch.manual_seed(0)
    cfg = tiny_config()
    ds = ClipDataset(tiny, "train", cfg.clip_spec(3))
    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    model = TinyNet()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2)
    y = batch["label"].float()
    for _ in range(150):
        loss = nn.functional.binary_cross_entropy_with_logits(model(batch["clip"])[:, 0], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_train_writes_run_directory_and_metrics_log(tiny, tmp_path, tiny_models):
    run = tmp_path / "run"
    events = []
    summary = train(tiny_config(), tiny, run, progress=events.append)
    assert {p.name for p in run.iterdir()} >= {"config.json", "checkpoint.pt",
                                               "model.safetensors", "metrics.jsonl"}
    log = _events(run)
    assert [e["event"] for e in log] == [e["event"] for e in events]
    kinds = [e["event"] for e in log]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("epoch") == 2
    steps = [e for e in log if e["event"] == "step"]
    assert len(steps) == 2 * 2  # 8 draws / batch 4, every step logged
    assert {"loss", "lr", "step", "steps_total", "attention_loss"} <= set(steps[0])
    assert steps[0]["attention_loss"] is not None  # masks exist and the model has attention
    epochs = [e for e in log if e["event"] == "epoch"]
    for e in epochs:
        assert {"train_loss", "val_loss", "val_auroc", "lr", "time"} <= set(e)
        assert 0 <= e["val_auroc"] <= 1
    assert log[-1]["threshold"] == summary["threshold"]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["arch"] == "tiny" and config["spec"]["frames"] == 6
    assert config["threshold"] == summary["threshold"] and config["best_epoch"] >= 1
    assert config["counts"]["val"] == {"n": 4, "malignant": 2, "benign": 2}
    # the best weights are loadable without unpickling anything
    TinyNet().load_state_dict(load_file(run / "model.safetensors"))


def test_no_attention_loss_when_weight_is_zero(tiny, tmp_path, tiny_models):
    run = tmp_path / "run"
    train(tiny_config(epochs=1, attention_loss_weight=0.0), tiny, run)
    steps = [e for e in _events(run) if e["event"] == "step"]
    assert all(e["attention_loss"] is None for e in steps)


class TinyEvidenceNet(TinyNet):
    """TinyNet with a second logit of its own, as IRv2's `focus_logit` exposes."""

    def __init__(self, spatial_dims: int = 3):
        super().__init__(spatial_dims)
        self.evidence_fc = nn.Linear(1, 1)
        self.evidence_logits = None

    def forward(self, x):
        self.evidence_logits = self.evidence_fc(x.flatten(1).amax(1, keepdim=True))
        return super().forward(x) + self.evidence_logits


def test_the_evidence_logit_has_a_classification_loss_of_its_own(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(train_mod, "build_model", lambda cfg: TinyEvidenceNet())

    def first_loss(weight: float) -> float:
        run = tmp_path / f"run-{weight}"
        train(tiny_config(epochs=1, evidence_loss_weight=weight, attention_loss_weight=0.0),
              tiny, run)
        return next(e["loss"] for e in _events(run) if e["event"] == "step")

    # same seed, same first batch and weights: the weighted BCE of the evidence logit adds on
    alone, weighted = first_loss(0.0), first_loss(5.0)
    assert weighted > alone + 0.5


class TinyTiradsNet(TinyNet):
    """TinyNet with an auxiliary TI-RADS head on its pooled features, as IRv2's `tirads_head`."""

    def __init__(self, spatial_dims: int = 3):
        super().__init__(spatial_dims)
        self.tirads_fc = nn.Linear(8, 4)
        self.tirads_logits = None

    def forward(self, x):
        f = torch.relu(self.norm(self.conv(x))).flatten(2).amax(2)  # (B, 8)
        self.tirads_logits = self.tirads_fc(f)
        return self.fc(self.drop(f))


def _with_tirads_readings(root: Path) -> Path:
    """The tiny dataset with TI-RADS points: malignant nodules very hypoechoic and lobulated,
    benign ones iso- and smooth; one case of each split unread."""
    records, seen = [], set()
    for r in read_manifest(root):
        unread = r.split not in seen
        seen.add(r.split)
        records.append(dataclasses.replace(
            r, tirads_composition=None if unread else 2,
            tirads_echogenicity=None if unread else (3 if r.label else 1),
            tirads_shape=None if unread else 0,
            tirads_margin=None if unread else (2 if r.label else 0)))
    write_manifest(root / "manifest.csv", records)
    return root


def test_the_tirads_head_learns_from_the_readings_only_when_weighted(tiny, tmp_path,
                                                                     monkeypatch):
    _with_tirads_readings(tiny)
    models: dict[float, TinyTiradsNet] = {}

    def build(cfg):
        models[cfg.tirads_loss_weight] = TinyTiradsNet()
        return models[cfg.tirads_loss_weight]

    monkeypatch.setattr(train_mod, "build_model", build)

    def first_loss(weight: float) -> float:
        run = tmp_path / f"run-{weight}"
        torch.manual_seed(0)
        train(tiny_config(epochs=1, tirads_loss_weight=weight, attention_loss_weight=0.0),
              tiny, run)
        return next(e["loss"] for e in _events(run) if e["event"] == "step")

    alone, weighted = first_loss(0.0), first_loss(5.0)
    assert weighted > alone + 0.5  # the weighted BCE of the readings adds on
    # the head's weights move only when its loss is on (no gradient, no AdamW step)
    torch.manual_seed(0)
    init = TinyTiradsNet()
    assert torch.equal(models[0.0].tirads_fc.weight, init.tirads_fc.weight)
    assert not torch.equal(models[5.0].tirads_fc.weight, init.tirads_fc.weight)


def test_a_tirads_head_without_readings_is_refused_with_the_reason(tiny, tmp_path):
    cfg = make_config("small", arch="irv2_cam", frames=6, size=32, batch_size=4, epochs=1,
                      num_workers=0, threads=1, model_options={"tirads_head": True})
    with pytest.raises(DataError, match="no training case has a TI-RADS reading"):
        train(cfg, tiny, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
    # without the head's loss there is nothing to refuse
    train(dataclasses.replace(cfg, tirads_loss_weight=0.0), tiny, tmp_path / "run-unweighted")


def test_an_irv2_tirads_head_trains_and_its_run_predicts(tiny, tmp_path):
    _with_tirads_readings(tiny)
    cfg = make_config("small", arch="irv2_cam", frames=6, size=32, batch_size=4, epochs=1,
                      num_workers=0, threads=1, log_every=1,
                      model_options={"tirads_head": True})
    torch.manual_seed(cfg.seed)
    untrained = train_mod.build_model(cfg).tirads_fc.weight.detach().clone()
    summary = train(cfg, tiny, tmp_path / "run")
    assert summary["best_epoch"] == 1
    from ml.inference import load_model, predict, spec_of

    loaded, config = load_model(tmp_path / "run")
    assert config["train"]["model_options"]["tirads_head"] is True
    assert not torch.equal(loaded.tirads_fc.weight, untrained)
    spec = spec_of(config)
    clip, _, boxes = ClipDataset(tiny, "val", spec).load(0)
    assert 0 <= predict(loaded, clip, spec, boxes=boxes) <= 1


class Interrupt(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tiny, tmp_path, tiny_models):
    cfg = tiny_config(epochs=3, num_workers=1, ema_decay=0.9)  # a worker, as in real runs
    full = tmp_path / "full"
    train(cfg, tiny, full)

    def stop_after_first_epoch(event):
        if event["event"] == "epoch" and event["epoch"] == 1:
            raise Interrupt

    part = tmp_path / "part"
    with pytest.raises(Interrupt):
        train(cfg, tiny, part, progress=stop_after_first_epoch)
    assert _events(part)[-1]["event"] == "error"
    train(TrainConfig(), tiny, part, resume=True)  # the stored config wins

    ckpt_a = torch.load(full / "checkpoint.pt", weights_only=True)
    ckpt_b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert ckpt_a["epoch"] == ckpt_b["epoch"] == 3
    for k, v in ckpt_a["model"].items():
        assert torch.equal(v, ckpt_b["model"][k]), k
    a, b = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    kinds = [e["event"] for e in _events(part)]
    assert kinds.count("start") == 2 and kinds[-1] == "done"


def test_resume_without_checkpoint_is_refused(tiny, tmp_path):
    with pytest.raises(DataError, match="nothing to resume"):
        train(tiny_config(), tiny, tmp_path / "none", resume=True)


def test_refuses_a_split_with_too_few_cases_of_a_class(tiny, tmp_path, tiny_models):
    records = read_manifest(tiny)
    kept = [r for r in records if not (r.split == "val" and r.label == 1)]
    write_manifest(tiny / "manifest.csv", kept)
    run = tmp_path / "run"
    with pytest.raises(DataError, match=r"split 'val' has 0 malignant case\(s\)"):
        train(tiny_config(), tiny, run)
    assert _events(run)[-1]["event"] == "error"
    assert "0 malignant" in _events(run)[-1]["message"]
    assert not (run / "checkpoint.pt").exists()


def test_2d_model_trains_on_key_frames(tiny, tmp_path, tiny_models):
    run = tmp_path / "run2d"
    train(tiny_config(arch="tiny_2d", epochs=1), tiny, run)
    config = json.loads((run / "config.json").read_text())
    assert config["spec"]["spatial_dims"] == 2 and config["spec"]["frames"] == 1


DDP_SCRIPT = """
import sys
import ml.train as t
from tests.ml.test_train import tiny_model, tiny_config
t.build_model = tiny_model
t.train(tiny_config(epochs=1), sys.argv[1], sys.argv[2])
"""


@pytest.mark.slow
def test_ddp_with_two_gloo_processes(tiny, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    run = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(29500 + os.getpid() % 1000), str(script), str(tiny), str(run)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = _events(run)
    start = log[0]
    assert start["world_size"] == 2 and log[-1]["event"] == "done"
    # rank 0 writes alone: one start line, one line per step (4 draws per rank / batch 4)
    assert [e["event"] for e in log].count("start") == 1
    assert len([e for e in log if e["event"] == "step"]) == 1
    assert np.isfinite([e["val_auroc"] for e in log if e["event"] == "epoch"]).all()


def test_refuses_to_overwrite_a_run(tiny, tmp_path, tiny_models):
    run = tmp_path / "run"
    train(tiny_config(epochs=1), tiny, run)
    before = (run / "metrics.jsonl").read_text()
    with pytest.raises(DataError, match="already holds a run"):
        train(tiny_config(epochs=1), tiny, run)
    assert (run / "metrics.jsonl").read_text() == before


def test_select_after_keeps_early_epochs_from_being_best(tiny, tmp_path, tiny_models):
    run = tmp_path / "run"
    summary = train(tiny_config(epochs=4, select_after=0.5), tiny, run)
    epochs = [e for e in _events(run) if e["event"] == "epoch"]
    assert not any(e["improved"] for e in epochs[:2])
    assert summary["best_epoch"] >= 3


def test_keep_snapshots_saves_every_eligible_epoch_and_the_best_is_one_of_them(
        tiny, tmp_path, tiny_models):
    run = tmp_path / "run"
    summary = train(tiny_config(epochs=4, select_after=0.5, keep_snapshots=True), tiny, run)
    snapshots = sorted(p.name for p in (run / "snapshots").iterdir())
    assert snapshots == ["epoch-003.safetensors", "epoch-004.safetensors"]
    best = load_file(str(run / "model.safetensors"))
    chosen = load_file(str(run / "snapshots" / f"epoch-{summary['best_epoch']:03d}.safetensors"))
    assert best.keys() == chosen.keys()
    assert all(torch.equal(best[k], chosen[k]) for k in best)


def test_no_snapshots_unless_asked(tiny, tmp_path, tiny_models):
    run = tmp_path / "run"
    train(tiny_config(epochs=2), tiny, run)
    assert not (run / "snapshots").exists()


def test_a_context_channel_gives_the_model_two_input_channels(tiny, tmp_path):
    cfg = make_config("small", arch="irv2_cam", frames=6, size=32, batch_size=4, epochs=1,
                      num_workers=0, threads=1, context_channel=True, roi_max_side=20)
    model = train_mod.build_model(cfg)
    assert model.stem[0][0].in_channels == 2
    summary = train(cfg, tiny, tmp_path / "run")
    assert summary["best_epoch"] == 1
    from ml.inference import load_model, predict, spec_of

    loaded, config = load_model(tmp_path / "run")
    spec = spec_of(config)
    assert spec.context_channel and spec.channels == 2
    clip, _, boxes = ClipDataset(tiny, "val", spec).load(0)
    assert 0 <= predict(loaded, clip, spec, boxes=boxes) <= 1
    # heatmaps follow the first channel's crop, as evaluation's localisation scores them
    from ml.evaluate import evaluate_run
    from ml.inference import predict_with_heatmaps

    out = predict_with_heatmaps(loaded, clip, spec, boxes=boxes)
    assert out.gradcam.shape == clip.shape and out.gradcam_input.shape == (6, 32, 32)
    assert "localisation" in evaluate_run(tmp_path / "run")["external_test"]


def test_augment_options_override_the_augmentation_defaults():
    from ml.data import AugmentSpec
    from ml.train import augment_spec

    spec = augment_spec(make_config("small", augment_options={"crop_scale": [0.75, 1.5]}))
    assert spec.crop_scale == (0.75, 1.5) and spec.hflip == AugmentSpec().hflip
    assert augment_spec(make_config("small", augment=False)).hflip == 0.0
    with pytest.raises(ValueError, match="unknown augment options.*crop_zoom"):
        augment_spec(make_config("small", augment_options={"crop_zoom": 2}))


def test_the_resolved_architecture_is_recorded_so_a_preset_change_cannot_alter_a_saved_run(
        monkeypatch):
    from ml.models import create_model, inception_resnet
    from ml.train import build_model, resolved_model_options

    cfg = make_config("small", arch="irv2_cam", model_options={"attention": ["B"]})
    options = resolved_model_options(create_model("irv2_cam", attention=("B",)), cfg)
    assert options["attention"] == ["B"] and options["pooling"] == "avgmax"
    assert options["blocks"] == [1, 2, 1] and options["width"] == 0.25
    saved = dataclasses.replace(cfg, model_options=options)
    # A later release changes the small preset: the saved run still builds what it trained.
    changed = dataclasses.replace(inception_resnet.PRESETS["small"], pooling="avg", width=0.5)
    monkeypatch.setitem(inception_resnet.PRESETS, "small", changed)
    model = build_model(saved)
    assert model.cfg.pooling == "avgmax" and model.cfg.width == 0.25


def test_cpu_train_step_benchmark_compares_every_setting_with_fp32(tmp_path):
    """benchmarks/cpu_train_step.py, the measurement behind CPU training's fp32 on channels-last
    clips, runs and writes its table; fp32 gradients pass its check; a usage error is a
    message, not a traceback."""
    import importlib.util

    path = ROOT / "benchmarks" / "cpu_train_step.py"
    spec = importlib.util.spec_from_file_location("cpu_train_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--steps", "1", "--trials", "2", "--out", str(tmp_path)]) == 0
    (written,) = tmp_path.glob("cpu-train-step-*.json")
    report = json.loads(written.read_text())
    assert [r["setting"] for r in report["rows"]] == [s[0] for s in module.SETTINGS]
    assert report["rows"][0]["speedup_vs_fp32"] == 1.0
    assert all(r["median_step_s"] > 0 for r in report["rows"])
    assert all(r["wrong_gradient_trials"] == 0 for r in report["rows"] if not r["bf16"])
    with pytest.raises(SystemExit) as stop:
        module.main(["--steps", "0"])
    assert stop.value.code == 2
