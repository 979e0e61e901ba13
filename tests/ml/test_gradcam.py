"""ml.gradcam: heatmaps on the input grid, hook hygiene, localisation scores; ml.bench on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ml.gradcam import (
    GradCAM,
    GraphedGradCAM,
    calcification_region,
    energy_inside_mask,
    pointing_game,
)
from ml.models import create_model, gradcam_layer


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # the CI box has 2 cores shared with other jobs: OpenMP threads that spin-wait for a
    # busy core make every op several times slower than one thread
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _hook_count(model: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_hooks)
        + len(getattr(m, "_backward_pre_hooks", {}))
        for m in model.modules()
    )


@pytest.mark.parametrize(
    ("name", "shape"),
    [
        ("irv2_cam", (2, 1, 16, 64, 64)),
        ("r3d_18", (2, 1, 8, 32, 32)),
        ("densenet121_3d", (2, 1, 8, 32, 32)),  # in-place ReLU right after the hooked layer
        ("irv2_2d", (2, 1, 64, 64)),
        ("resnet18_2d", (2, 1, 32, 32)),
    ],
)
def test_heatmaps_match_the_input_grid_and_hooks_go_away(name, shape):
    torch.manual_seed(0)
    model = create_model(name).train()
    x = torch.rand(shape)
    with GradCAM(model) as gc:
        assert _hook_count(model) == 1
        heat = gc.cam(x)
    assert _hook_count(model) == 0
    assert heat.shape == (shape[0],) + shape[2:]
    assert heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1
    for clip in heat:  # normalised per clip: each reaches 1 unless the map is flat
        assert clip.max() == pytest.approx(1) or clip.max() == 0
    assert gc.logits.shape == (shape[0], 1)
    assert model.training  # mode restored
    assert all(p.grad is None for p in model.parameters())  # parameters' grads untouched
    if name == "irv2_cam":
        assert [a.shape for a in gc.attention] == [heat.shape, heat.shape]
        assert all(0 <= a.min() and a.max() <= 1 for a in gc.attention)
    else:
        assert gc.attention == []


def test_hooks_are_removed_when_the_body_raises():
    model = create_model("resnet18_2d")
    with pytest.raises(ZeroDivisionError), GradCAM(model):
        1 / 0  # noqa: B018
    assert _hook_count(model) == 0


def test_heatmap_follows_the_evidence_in_time_and_space():
    # a layer with two channels on a 2x coarser grid: channel 0 sees only a patch (frames
    # 4-5, rows 8-11, cols 16-19 of the input), channel 1 the rest; the logit reads channel 0.
    # Grad-CAM must light the patch, on the same frame indices as the clip that went in.
    class Gate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            g = torch.zeros(1, 2, 6, 16, 16)
            g[:, 0, 2:3, 4:6, 8:10] = 1
            g[:, 1] = 1 - g[:, 0]
            self.register_buffer("g", g)

        def forward(self, x):
            return x * self.g  # (B, 2, 6, 16, 16)

    class Patch(torch.nn.Module):
        spatial_dims = 3
        attention_maps: list = []

        def __init__(self):
            super().__init__()
            self.pool = torch.nn.AvgPool3d(2)
            self.gate = Gate()

        def forward(self, x):
            a = self.gate(self.pool(x))  # (B, 2, T/2, H/2, W/2)
            return a[:, 0].mean(dim=(1, 2, 3))[:, None]  # (B, 1)

    model = Patch()
    with GradCAM(model, layer=model.gate) as gc:
        heat = gc.cam(torch.rand(1, 1, 12, 32, 32) + 0.1)
    t, h, w = np.unravel_index(heat[0].argmax(), heat[0].shape)
    assert 4 <= t <= 5 and 8 <= h < 12 and 16 <= w < 20
    assert heat[0, :3].max() == 0 and heat[0, 7:].max() == 0
    assert heat.max() == pytest.approx(1)


def test_hirescam_keeps_the_evidence_where_grad_cam_spreads_it():
    # the score is the brightest cell of a feature that is positive everywhere (a focus
    # detector's maximum): only the patch moves the score. Grad-CAM weighs the whole feature by
    # its mean gradient and paints all of it; HiResCAM weighs each cell by its own gradient.
    class Peak(torch.nn.Module):
        spatial_dims = 3
        attention_maps: list = []

        def __init__(self):
            super().__init__()
            self.pool = torch.nn.AvgPool3d(2)
            self.feature = torch.nn.Identity()

        def forward(self, x):
            return self.feature(self.pool(x)).amax(dim=(1, 2, 3, 4))[:, None]

    torch.manual_seed(0)
    x = torch.rand(1, 1, 12, 32, 32) * 0.5 + 0.1
    x[:, :, 4:6, 8:12, 16:20] = 2.0
    mask = np.zeros((1, 12, 32, 32), np.uint8)
    mask[:, 4:6, 8:12, 16:20] = 1
    model = Peak()
    energy = {}
    for method in ("hirescam", "gradcam"):
        with GradCAM(model, layer=model.feature, method=method) as gc:
            energy[method] = energy_inside_mask(gc.cam(x), mask).value[0]
    assert energy["hirescam"] > 0.9
    assert energy["gradcam"] < 0.5
    with pytest.raises(ValueError, match="method is one of"):
        GradCAM(model, method="saliency")


def test_only_the_layers_after_the_hooked_one_record_a_graph():
    # the stem before the hooked layer needs no gradient: it runs without autograd, and the
    # heatmap is the one a graph through the whole network gives (computed here by hand)
    torch.manual_seed(0)
    model = create_model("irv2_cam", config="small", focus_head=True).eval()
    layer = gradcam_layer(model)
    seen = []
    probe = model.stem.register_forward_hook(lambda m, i, o: seen.append(o.requires_grad))
    x = torch.rand(1, 1, 16, 64, 64)
    with GradCAM(model, method="gradcam") as gc:
        heat, logits = gc(x, target=0)
        plain = model(x)  # another forward in the block is left as it is
    probe.remove()
    assert seen == [False, True]  # Grad-CAM's forward, then the plain one with its graph
    assert torch.equal(plain.detach(), logits)

    kept = {}
    hook = layer.register_forward_hook(lambda m, i, o: kept.setdefault("act", o))
    out = model(x.clone().requires_grad_(True))
    hook.remove()
    (grad,) = torch.autograd.grad(-out[:, 0].sum(), kept["act"])
    cam = torch.relu((grad.mean(dim=(2, 3, 4), keepdim=True) * kept["act"]).sum(1, keepdim=True))
    cam = torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="trilinear")[:, 0]
    assert cam.max() > cam.min()  # a map with a place in it, not a flat one
    cam = (cam - cam.min()) / (cam.max() - cam.min())
    assert torch.allclose(heat, cam.detach(), atol=1e-5)


def _member_map(member: torch.nn.Module, x: torch.Tensor, method: str) -> torch.Tensor:
    """One member's map of its own logit on stage A, upsampled, not normalised."""
    kept = {}
    handle = member.stage_a.register_forward_hook(lambda m, i, o: kept.update(a=o))
    try:
        (grad,) = torch.autograd.grad(member(x)[:, 0].sum(), kept["a"])
    finally:
        handle.remove()
    if method == "gradcam":
        grad = grad.mean(dim=(2, 3, 4), keepdim=True)
    cam = torch.relu((grad * kept["a"]).sum(1, keepdim=True))
    return torch.nn.functional.interpolate(cam, size=x.shape[2:], mode="trilinear",
                                           align_corners=False)[:, 0].detach()


@pytest.mark.parametrize("method", ["hirescam", "gradcam"])
def test_an_ensemble_map_adds_every_members_map(method):
    from ml.models.ensemble import SeedEnsemble

    torch.manual_seed(0)
    members = [create_model("irv2_cam").eval(), create_model("irv2_cam").eval()]
    ensemble = SeedEnsemble(members)
    x = torch.rand(1, 1, 8, 32, 32)
    maps = [_member_map(m, x, method) for m in members]
    total = maps[0] + maps[1]  # the mean's gradient halves both: the same after min-max
    expected = (total - total.min()) / (total.max() - total.min())
    first = (maps[0] - maps[0].min()) / (maps[0].max() - maps[0].min())
    with GradCAM(ensemble, method=method) as gc:
        heat = gc.cam(x)
        assert gc.layers == [members[0].stage_a, members[1].stage_a]
    assert _hook_count(ensemble) == 0
    np.testing.assert_allclose(heat, expected.numpy(), atol=1e-5)
    assert not np.allclose(heat, first.numpy(), atol=1e-2)  # not the first member's alone


def test_tensor_call_works_under_inference_mode():
    model = create_model("r3d_18")
    with torch.inference_mode(), GradCAM(model) as gc:
        heat, logits = gc(torch.rand(1, 1, 8, 32, 32))
    assert heat.shape == (1, 8, 32, 32) and logits.shape == (1, 1)
    assert gradcam_layer(model) is model.layer4


def _irv2_cam_with_attention():
    torch.manual_seed(0)
    model = create_model("irv2_cam").eval()
    assert model.cfg.attention  # the maps beside the heatmap are part of what is served
    return model


@pytest.mark.parametrize("autocast", [None, torch.bfloat16])
def test_the_graphed_explainer_gives_gradcams_maps(autocast):
    model = _irv2_cam_with_attention()
    x = torch.rand(1, 1, 8, 32, 32)
    context = (torch.autocast("cpu", dtype=autocast) if autocast is not None
               else torch.autocast("cpu", enabled=False))
    with GradCAM(model) as gc, context:
        want_heat, want_logits, want_att = gc.explain(x)
    with GraphedGradCAM(model, torch.zeros_like(x), autocast=autocast) as explain:
        assert not explain.graphed  # a CPU runs the same work eagerly
        heat, logits, att = explain(x)
        again, _, _ = explain(torch.rand_like(x))
    assert _hook_count(model) == 0
    torch.testing.assert_close(heat, want_heat)
    torch.testing.assert_close(logits, want_logits)
    assert len(att) == len(want_att) == len(model.cfg.attention)
    for a, b in zip(att, want_att, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(again, heat)  # each call explains its own input


def test_the_explainer_can_hand_over_float16_maps():
    model = _irv2_cam_with_attention()
    x = torch.rand(1, 1, 8, 32, 32)
    with GradCAM(model) as gc:
        want_heat, want_logits, want_att = gc.explain(x)
    with GraphedGradCAM(model, x, maps_dtype=torch.float16) as explain:
        heat, logits, att = explain(x)
    assert heat.dtype == att[0].dtype == torch.float16 and logits.dtype == torch.float32
    torch.testing.assert_close(heat.float(), want_heat, atol=1e-3, rtol=0)
    torch.testing.assert_close(att[0].float(), want_att[0], atol=1e-3, rtol=0)
    torch.testing.assert_close(logits, want_logits)


def test_the_graphed_explainer_serves_only_its_shape():
    model = _irv2_cam_with_attention()
    example = torch.zeros(1, 1, 8, 32, 32)
    explainer = GraphedGradCAM(model, example)
    with pytest.raises(RuntimeError, match="with"):
        explainer(example)
    with explainer as explain:
        with pytest.raises(ValueError, match=r"serves \(1, 1, 8, 32, 32\)"):
            explain(torch.zeros(1, 1, 16, 32, 32))
        with pytest.raises(ValueError, match="float64"):
            explain(example.double())
    with pytest.raises(ValueError, match="CUDA"):
        GraphedGradCAM(model, example, graph=True)


def test_the_folded_explainer_gives_the_same_maps_and_leaves_the_model_alone():
    model = _irv2_cam_with_attention()
    for m in model.modules():  # statistics away from the identity start, as after training
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_var.uniform_(0.5, 1.5)
            m.running_mean.normal_(0, 0.2)
    norms = sum(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules())
    x = torch.rand(1, 1, 8, 32, 32)
    with GradCAM(model) as gc:
        want_heat, want_logits, want_att = gc.explain(x)
    with GraphedGradCAM(model, x, layer=model.stage_a, fold_norms=True) as explain:
        heat, logits, att = explain(x)
        assert explain._gradcam.layers[0] is not model.stage_a  # the copy's own stage A
    torch.testing.assert_close(heat, want_heat, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(logits, want_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(att[0], want_att[0], atol=1e-4, rtol=1e-4)
    assert sum(isinstance(m, torch.nn.BatchNorm3d) for m in model.modules()) == norms
    assert _hook_count(model) == 0
    with pytest.raises(ValueError, match="not a module"):
        GraphedGradCAM(model, x, layer=torch.nn.Conv3d(1, 1, 1), fold_norms=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_a_replayed_graph_gives_the_eager_maps_on_a_gpu():
    model = _irv2_cam_with_attention().cuda()
    x = torch.rand(1, 1, 16, 64, 64, device="cuda")
    with GradCAM(model) as gc:
        want_heat, want_logits, _ = gc.explain(x)
    for fold in (False, True):
        with GraphedGradCAM(model, torch.zeros_like(x), fold_norms=fold) as explain:
            assert explain.graphed and explain.capture_s > 0
            heat, logits, _ = explain(x)
            other, _, _ = explain(torch.rand_like(x))
        torch.testing.assert_close(heat, want_heat, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(logits, want_logits, atol=1e-3, rtol=1e-3)
        assert not torch.equal(other, heat)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_platform_heatmaps_on_a_gpu_replay_one_kept_graph(monkeypatch):
    from ml import inference

    model = _irv2_cam_with_attention().cuda()
    x = torch.rand(1, 1, 16, 64, 64, device="cuda")
    monkeypatch.setattr(inference, "CUDA_GRAPHS", False)
    _, want, want_att = inference.input_heatmaps(model, x, views=2)
    monkeypatch.setattr(inference, "CUDA_GRAPHS", True)
    monkeypatch.setattr(inference, "_explainers", type(inference._explainers)())
    _, got, got_att = inference.input_heatmaps(model, x, views=2)
    inference.input_heatmaps(model, x, views=2)
    assert len(inference._explainers) == 1  # both views and both calls: one graph
    # batch norms folded and float16 maps: rounding only
    np.testing.assert_allclose(got, want, atol=2e-3)
    np.testing.assert_allclose(got_att[0], want_att[0], atol=2e-3)
    # new weights loaded into the same model: the kept graph (of a folded copy) is captured
    # again, not replayed with the old weights
    other = create_model("irv2_cam").cuda().eval()
    model.load_state_dict(other.state_dict())
    monkeypatch.setattr(inference, "CUDA_GRAPHS", False)
    _, want_new, _ = inference.input_heatmaps(model, x, views=2)
    monkeypatch.setattr(inference, "CUDA_GRAPHS", True)
    _, got_new, _ = inference.input_heatmaps(model, x, views=2)
    assert len(inference._explainers) == 1
    np.testing.assert_allclose(got_new, want_new, atol=2e-3)
    assert not np.allclose(want_new, want, atol=1e-2)


def test_the_weights_version_moves_with_every_in_place_change():
    from ml.inference import _weights_version

    model = create_model("r3d_18")
    before = _weights_version(model)
    model.load_state_dict(create_model("r3d_18").state_dict())
    loaded = _weights_version(model)
    with torch.no_grad():
        next(model.buffers()).add_(1)
    assert before < loaded < _weights_version(model)
    with torch.inference_mode():  # tensors without a version counter: none to read
        frozen = create_model("r3d_18")
    assert _weights_version(frozen) == -1


# --------------------------------------------------------------------------- scores


def _clip_with_marks():
    mask = np.zeros((2, 6, 32, 32), np.uint8)
    mask[0, 2, 10:12, 10:12] = 1  # punctate focus, marked on frames 2-3
    mask[0, 3, 10:12, 11:13] = 1
    mask[0, 4, 25:30, 0:5] = 4  # comet-tail artefact: not a target
    mask[1, 1, 20:24, 20:26] = 2  # macrocalcification
    return mask


def test_a_map_on_the_marks_scores_one_and_beats_uniform():
    mask = _clip_with_marks()
    _, region = calcification_region(mask, dilate=1)
    heat = region.astype(np.float32)
    energy = energy_inside_mask(heat, mask, dilate=1)
    np.testing.assert_allclose(energy.value, 1.0)
    assert (energy.uniform < 0.05).all()
    point = pointing_game(heat, mask, dilate=1)
    np.testing.assert_allclose(point.value, 1.0)
    assert (point.uniform < 0.05).all()
    np.testing.assert_allclose(pointing_game(heat, mask, per="clip").value, 1.0)


def test_a_uniform_map_scores_the_uniform_value():
    mask = _clip_with_marks()
    heat = np.full(mask.shape, 0.3, np.float32)
    for score in (
        energy_inside_mask(heat, mask),
        energy_inside_mask(heat, mask, dilate=0, frames="all"),
        pointing_game(heat, mask),
        pointing_game(heat, mask, dilate=2, per="clip"),
    ):
        np.testing.assert_allclose(score.value, score.uniform)


def test_scores_count_the_right_frames_and_codes():
    mask = _clip_with_marks()
    heat = np.zeros(mask.shape, np.float32)
    heat[0, 4, 25:30, 0:5] = 1  # all heat on the comet-tail (an unmarked frame for codes 1-3)
    heat[0, 2, 10, 10] = 0.5  # a little on the focus
    assert energy_inside_mask(heat, mask).value[0] == pytest.approx(1.0)  # only marked frames
    assert energy_inside_mask(heat, mask, frames="all").value[0] == pytest.approx(0.5 / 25.5)
    assert pointing_game(heat, mask, per="clip").value[0] == 0  # the clip's peak is the artefact
    # frame 2's peak is on the focus, frame 3 is flat (ties split by area)
    frame3_chance = calcification_region(mask)[1][0, 3].mean()
    assert pointing_game(heat, mask).value[0] == pytest.approx((1 + frame3_chance) / 2)
    empty = np.zeros((1, 4, 8, 8), np.uint8)
    assert np.isnan(energy_inside_mask(np.ones(empty.shape), empty).value).all()


def test_dilation_forgives_a_near_miss_but_stays_in_the_frame():
    mask = np.zeros((1, 3, 16, 16), np.uint8)
    mask[0, 1, 8, 8] = 1
    heat = np.zeros(mask.shape)
    heat[0, 1, 9, 9] = 1  # one pixel off the focus
    assert pointing_game(heat, mask, dilate=0).value[0] == 0
    assert pointing_game(heat, mask, dilate=1).value[0] == 1
    _, region = calcification_region(mask, dilate=1)
    assert region[0, 0].sum() == 0 and region[0, 1].sum() == 9


def test_scores_on_2d_images():
    mask = np.zeros((3, 16, 16), np.uint8)
    mask[:2, 4:6, 4:6] = 3
    heat = np.random.default_rng(0).random(mask.shape)
    heat[0, 4, 4] = 2.0
    e, p = energy_inside_mask(heat, mask, dilate=0), pointing_game(heat, mask, dilate=0)
    assert p.value[0] == 1 and np.isnan(p.value[2]) and np.isnan(e.value[2])
    assert e.uniform[0] == pytest.approx(4 / 256)


# --------------------------------------------------------------------------- bench


def test_bench_runs_on_cpu_and_writes_json_and_markdown(tmp_path):
    from ml.bench import main, run_benchmark

    rows = run_benchmark(
        ["irv2_cam"],
        device="cpu",
        frames=8,
        size=32,
        batch_sizes=(2,),
        dtypes=("fp32",),
        compile=(False,),
        preset="small",
        out_dir=tmp_path,
        steps=1,
        warmup=1,
        gradcam_frames=8,
        reference=False,
        profile=True,
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert any(f.endswith(".json") for f in files) and any(f.endswith(".md") for f in files)
    report = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert report["device"] == "cpu" and report["rows"] == rows
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["arch"] for r in ok} == {"irv2_cam"}
    for r in ok:
        assert r["gflops_per_clip"] > 0 and r["train_clips_per_s"] > 0
        assert r["infer_clips_per_s"] > 0 and r["params_m"] > 0
    cam = report["gradcam"][0]
    assert cam["latency_s"] > 0 and cam["folded_latency_s"] > 0
    assert cam["folded_max_abs_diff"] < 1e-3  # folding the norms changes rounding only
    assert "graphed_latency_s" not in cam  # CUDA graphs on a GPU only
    # the training-step profile: shares of the kernel time and the profiler's table beside it
    profile = report["profile"]
    assert profile["arch"] == "irv2_cam" and profile["step_s"] > 0
    assert sum(profile["kernel_share"].values()) == pytest.approx(1, abs=0.01)
    assert profile["kernel_share"]["convolution"] > 0
    assert "convolution" in next(tmp_path.glob("*-profile.txt")).read_text()
    assert profile["kernel_share"]["fused"] == 0 and not profile["compiled"]  # eager kernels
    assert report["profile_compiled"] is None  # not asked for
    assert "Where a training step goes" in next(tmp_path.glob("*.md")).read_text()
    assert "batch norms folded" in next(tmp_path.glob("*.md")).read_text()
    assert "GFLOPs" in next(tmp_path.glob("*.md")).read_text()
    # a given (model, runner) is profiled as it is, e.g. a runner compiled by an earlier row
    from ml.bench import profile_training

    model = create_model("irv2_cam", config="small")
    summary, _ = profile_training("irv2_cam", device=torch.device("cpu"), preset="small",
                                  frames=8, size=32, batch=2, dtype_name="fp32",
                                  channels_last=False, steps=1, built=(model, model))
    assert summary["step_s"] > 0 and model.training
    # the CLI entry point the platform's `python -m ml bench` calls
    status = main(
        [
            "--device",
            "cpu",
            "--preset",
            "small",
            "--frames",
            "8",
            "--size",
            "32",
            "--archs",
            "resnet18_2d",
            "--batch-sizes",
            "2",
            "--dtypes",
            "fp32",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--no-gradcam",
            "--no-reference",
            "--tag",
            "second run",
            "--out-dir",
            str(tmp_path / "cli"),
        ]
    )
    assert status == 0
    written = list((tmp_path / "cli").glob("*.json"))
    assert [p.name.endswith("-small-second_run.json") for p in written] == [True]


def test_flop_count_matches_the_papers_r3d_18_anchor():
    from ml.bench import PAPER_ANCHORS, count_model

    # 651 GFLOPs is r3d_18 on 32 x 224 x 224 RGB clips; ours has one input channel, whose
    # 3 x 7 x 7 stem saves 2 x 2 x 147 x 64 x 32 x 112 x 112 FLOPs = 15.1 GFLOPs
    counted = count_model("r3d_18", "paper", 32, 224)
    expected = PAPER_ANCHORS["r3d_18_gflops_per_clip"] - 2 * 2 * 147 * 64 * 32 * 112 * 112 / 1e9
    assert counted["gflops_per_clip"] == pytest.approx(expected, rel=0.01)
