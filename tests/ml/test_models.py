"""ml.models: every architecture builds, runs, learns; attention maps and their supervision."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ml.models import (
    MODEL_NAMES,
    attention_supervision_loss,
    calcification_target,
    create_model,
    focus_loss,
    gradcam_layer,
    parameter_count,
)
from ml.models.inception_resnet import focus_evidence
from ml.models.layers import fold_batch_norms

TINY_3D = (2, 1, 8, 32, 32)
TINY_2D = (2, 1, 32, 32)
N_D = ("irv2_cam", "irv2", "r2plus1d_18", "x3d_s")  # written once for 2D and 3D
SLOW = {"irv2_cam", "irv2", "r2plus1d_18", "x3d_s"}  # > 1 s to overfit on 2 cores


@pytest.fixture(autouse=True, scope="module")
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny_input(model, batch: int = 2) -> torch.Tensor:
    shape = TINY_3D if model.spatial_dims == 3 else TINY_2D
    return torch.rand((batch,) + shape[1:])


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_small_model_gives_one_finite_logit_per_clip(name):
    torch.manual_seed(0)
    model = create_model(name, config="small").eval()
    x = _tiny_input(model)
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, 1)
    assert torch.isfinite(y).all()
    assert model.spatial_dims == (2 if name.endswith("_2d") else 3)
    assert isinstance(model.attention_maps, list)
    assert (len(model.attention_maps) > 0) == (name == "irv2_cam")
    assert isinstance(gradcam_layer(model), torch.nn.Module)


@pytest.mark.parametrize("name", N_D)
def test_nd_architectures_also_build_in_2d(name):
    model = create_model(name, spatial_dims=2, num_classes=3, in_channels=3).eval()
    with torch.no_grad():
        y = model(torch.rand(2, 3, 32, 32))
    assert y.shape == (2, 3) and torch.isfinite(y).all()
    assert model.spatial_dims == 2


def test_bad_requests_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="unknown model"):
        create_model("vit")
    with pytest.raises(ValueError, match="unknown config"):
        create_model("irv2", config="huge")
    with pytest.raises(ValueError, match="spatial_dims"):
        create_model("resnet18_2d", spatial_dims=3)
    with pytest.raises(TypeError, match="options are"):
        create_model("irv2", depth=3)


def _meta_params(name: str, **kw) -> int:
    with torch.device("meta"):  # no memory, no init, no forward at full size
        return parameter_count(create_model(name, config="paper", **kw))


# (name, low, high) in millions for the `paper` config with one input channel and one logit
PAPER_PARAMS = [
    ("irv2_cam", 45, 50),  # 5/10/5 blocks (Szegedy 2016, Fig. 15)
    ("irv2", 45, 50),
    ("r3d_18", 32.5, 33.5),  # torchvision r3d_18: 33.4M with RGB input and 400 classes
    ("r2plus1d_18", 31, 31.6),  # torchvision r2plus1d_18: 31.5M, likewise
    ("densenet121_3d", 11, 11.5),
    ("x3d_s", 2.8, 3.1),  # X3D-S: 3.76M with the 2048 x 400 classifier (0.82M)
    ("irv2_2d", 31, 34),
    ("resnet18_2d", 11, 11.3),  # 11.7M with RGB and 1000 classes
    ("densenet121_2d", 6.8, 7.1),  # 8.0M with 1000 classes
]


@pytest.mark.parametrize(("name", "low", "high"), PAPER_PARAMS)
def test_paper_config_parameter_counts(name, low, high):
    assert low * 1e6 < _meta_params(name) < high * 1e6


def test_irv2_cam_with_released_block_counts_matches_the_studys_72m_parameters():
    # Qian et al. 2025 report 72M parameters for 3D IRv2 + attention; the released
    # InceptionResNetV2 repeats its blocks 10 / 20 / 10 times.
    assert 71e6 < _meta_params("irv2_cam", blocks=(10, 20, 10)) < 73.5e6


def test_small_config_is_much_smaller_than_paper():
    for name in MODEL_NAMES:
        with torch.device("meta"):
            small = parameter_count(create_model(name, config="small"))
        assert small < _meta_params(name) / 4, name


def test_attention_maps_are_probabilities_on_the_stage_grids():
    torch.manual_seed(0)
    model = create_model("irv2_cam").eval()
    with torch.no_grad():
        model(torch.rand(2, 1, 16, 64, 64))
    maps = model.attention_maps
    # B stage: time / 4, space / 16; C stage: time / 4, space / 32
    assert [tuple(a.shape) for a in maps] == [(2, 1, 4, 4, 4), (2, 1, 4, 2, 2)]
    for a in maps:
        assert a.min() >= 0 and a.max() <= 1
    assert create_model("irv2").attention_maps == []


def test_attention_stages_are_configurable():
    model = create_model("irv2_cam", attention=("A", "B", "C")).eval()
    with torch.no_grad():
        model(torch.rand(1, 1, 16, 64, 64))
    assert len(model.attention_maps) == 3
    with pytest.raises(ValueError, match="attention stages"):
        create_model("irv2_cam", attention=("D",))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_avgmax_pooling_doubles_the_classifier_input(spatial_dims):
    model = create_model("irv2_cam", spatial_dims=spatial_dims, pooling="avgmax").eval()
    averaged = create_model("irv2_cam", spatial_dims=spatial_dims, pooling="avg")
    assert model.fc.in_features == 2 * averaged.fc.in_features
    assert create_model("irv2_cam", config="paper").cfg.pooling == "avg"  # as released
    shape = TINY_3D if spatial_dims == 3 else TINY_2D
    with torch.no_grad():
        logits = model(torch.rand(shape))
    assert logits.shape == (2, 1) and torch.isfinite(logits).all()
    with pytest.raises(ValueError, match="pooling"):
        create_model("irv2_cam", pooling="median")


def _mask_with_focus(batch: int = 2) -> torch.Tensor:
    mask = torch.zeros(batch, 16, 64, 64, dtype=torch.uint8)
    mask[:, 5, 10, 12] = 1  # one-pixel punctate focus in one frame
    mask[:, 6:8, 40:44, 40:46] = 2  # a macrocalcification
    mask[:, 12, 50:60, 5:15] = 4  # comet-tail artefact: not a calcification
    return mask


def test_attention_loss_is_lowest_for_maps_that_match_the_marks():
    mask = _mask_with_focus()
    target = ((mask >= 1) & (mask <= 3)).float()[:, None]
    shapes = [(4, 8, 8), (2, 4, 4)]
    matching = [F.adaptive_max_pool3d(target, s) for s in shapes]
    # the one-pixel focus survives the 16x downsampling
    assert matching[0][0, 0, 1, 1, 1] == 1
    flat = [torch.full_like(m, 0.5) for m in matching]
    inverted = [1 - m for m in matching]
    has = torch.tensor([True, True])
    losses = [attention_supervision_loss(maps, mask, has) for maps in (matching, flat, inverted)]
    assert losses[0] < 0.05 < losses[1] < losses[2]


@pytest.mark.parametrize("codes, marked", [
    ((1, 2, 3), {1, 2, 3}),  # every calcification (the default)
    ((1,), {1}),  # punctate foci only: the macrocalcification and the rim are background
])
def test_calcification_target_marks_exactly_the_chosen_types(codes, marked):
    mask = torch.tensor([[0, 1, 2, 3, 4]], dtype=torch.uint8)
    target = calcification_target(mask, 1, codes)[0, 0]
    assert target.tolist() == [1.0 if c in marked else 0.0 for c in range(5)]


def test_punctate_supervision_prefers_maps_without_the_macrocalcification():
    mask = _mask_with_focus()
    shape = (4, 8, 8)
    punctate = F.adaptive_max_pool3d((mask == 1).float()[:, None], shape)
    every = F.adaptive_max_pool3d(((mask >= 1) & (mask <= 3)).float()[:, None], shape)
    has = torch.tensor([True, True])
    for codes, best, worse in (((1,), punctate, every), ((1, 2, 3), every, punctate)):
        assert (attention_supervision_loss([best], mask, has, codes=codes)
                < attention_supervision_loss([worse], mask, has, codes=codes))


def test_attention_loss_ignores_clips_without_marks():
    mask = _mask_with_focus()
    maps = [torch.rand(2, 1, 4, 8, 8, requires_grad=True)]
    none = attention_supervision_loss(maps, mask, torch.tensor([False, False]))
    assert none.item() == 0 and none.requires_grad
    one = attention_supervision_loss(maps, mask, torch.tensor([True, False]))
    # clip 1's map does not matter when clip 1 has no marks
    maps2 = [torch.cat([maps[0][:1], torch.rand(1, 1, 4, 8, 8)])]
    assert attention_supervision_loss(maps2, mask, [True, False]).item() == pytest.approx(
        one.item()
    )


def _train_on_marks(model, loss_of, steps: int = 8) -> tuple[list[float], torch.Tensor]:
    """A few Adam steps on one batch with `_mask_with_focus` marks, minimising
    `loss_of(model, mask, has_mask)` alone; returns the losses and the batch."""
    x = torch.rand(2, 1, 16, 64, 64)
    mask = _mask_with_focus()
    has = torch.tensor([True, True])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        model(x)
        loss = loss_of(model, mask, has)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, x


def test_training_on_the_attention_loss_moves_the_maps_to_the_marks():
    torch.manual_seed(0)
    losses, _ = _train_on_marks(
        create_model("irv2_cam"),
        lambda m, mask, has: attention_supervision_loss(m.attention_maps, mask, has))
    assert losses[-1] < 0.7 * losses[0]


@pytest.mark.parametrize("level, grid", [
    ("A", (8, 8, 8)),  # after stage A: T/2 and 1/8 of the input
    ("stem", (16, 16, 16)),  # after the stem's conv4a: every frame, 1/4 of the input
])
def test_focus_head_maps_its_level_and_feeds_the_classifier(level, grid):
    model = create_model("irv2_cam", focus_head=True, focus_level=level)
    x = torch.rand(2, 1, 16, 64, 64)
    logits = model(x)
    assert logits.shape == (2, 1)
    assert model.focus_logits.shape == (2, 1, *grid)
    assert model.fc.in_features == model.num_features + 2
    # the classifier reads the focus map: raising its strongest cell changes the output
    model.eval()
    with torch.no_grad():
        base = model(x)
        bias = model.focus_head[-1].bias
        bias += 5.0
        assert not torch.allclose(model(x), base)
    assert create_model("irv2_cam").focus_logits is None
    with pytest.raises(ValueError, match="focus_level"):
        create_model("irv2_cam", focus_head=True, focus_level="B")


def test_focus_count_is_the_expected_number_of_focus_cells():
    # one confident cell and one, three or six: the peak and the soft maximum barely move
    # after the second, the count keeps rising (log(1 + n))
    def evidence(n_cells):
        logits = torch.full((1, 1, 4, 8, 8), -30.0)
        logits.view(-1)[:n_cells] = 30.0
        return focus_evidence(logits, count=True)[0]

    one, three, six = evidence(1), evidence(3), evidence(6)
    assert one[0] == three[0] == six[0]  # the peak
    assert torch.allclose(torch.stack([one[2], three[2], six[2]]),
                          torch.log1p(torch.tensor([1.0, 3.0, 6.0])))
    assert focus_evidence(torch.zeros(2, 1, 4, 8, 8)).shape == (2, 2)


def test_focus_count_adds_a_classifier_input():
    model = create_model("irv2_cam", focus_head=True, focus_count=True)
    assert model.fc.in_features == model.num_features + 3
    assert model(torch.rand(2, 1, 16, 64, 64)).shape == (2, 1)
    with pytest.raises(ValueError, match="focus_count needs focus_head"):
        create_model("irv2_cam", focus_count=True)


def test_focus_logit_is_added_to_the_trunks_and_exposed_for_its_own_loss():
    model = create_model("irv2_cam", focus_head=True, focus_count=True, focus_logit=True)
    assert model.fc.in_features == model.num_features  # the trunk reads pooled features only
    assert model.evidence_fc.in_features == 3
    model.eval()
    x = torch.rand(2, 1, 16, 64, 64)
    with torch.no_grad():
        logits = model(x)
        trunk = model.fc(torch.cat([model.pool(model.forward_features(x)).flatten(1),
                                    model.forward_features(x).flatten(2).amax(2)], dim=1))
    assert model.evidence_logits.shape == (2, 1)
    assert torch.allclose(logits, trunk + model.evidence_logits, atol=1e-5)
    assert create_model("irv2_cam", focus_head=True).evidence_logits is None
    with pytest.raises(ValueError, match="focus_logit needs focus_head"):
        create_model("irv2_cam", focus_logit=True)


@pytest.mark.parametrize(("detach", "head_learns_from_the_label"), [(False, True), (True, False)])
def test_focus_detach_keeps_the_classification_gradient_out_of_the_focus_head(
        detach, head_learns_from_the_label):
    model = create_model("irv2_cam", focus_head=True, focus_logit=True, focus_detach=detach)
    model(torch.rand(2, 1, 16, 64, 64)).sum().backward()
    grad = model.focus_head[-1].weight.grad
    assert (grad is not None and bool(grad.abs().sum() > 0)) is head_learns_from_the_label
    assert model.evidence_fc.weight.grad.abs().sum() > 0  # the evidence is still read
    with pytest.raises(ValueError, match="focus_detach needs focus_head"):
        create_model("irv2_cam", focus_detach=True)


def test_focus_norm_standardises_the_evidence_before_its_logit():
    model = create_model("irv2_cam", focus_head=True, focus_count=True, focus_logit=True,
                         focus_detach=True, focus_norm=True)
    # starts neutral: a random start of three weights can rank the cases backwards
    assert not model.evidence_fc.weight.any() and not model.evidence_fc.bias.any()
    with torch.no_grad():
        model.focus_head[-1].bias.fill_(-4.0)  # evidence far from zero, as after training
        model.evidence_fc.weight.copy_(torch.tensor([[1.0, -0.5, 0.25]]))
    model.train()
    for _ in range(30):  # the running statistics settle on the batches' evidence
        with torch.no_grad():
            model(torch.rand(4, 1, 16, 64, 64))
    model.eval()
    x = torch.rand(2, 1, 16, 64, 64)
    with torch.no_grad():
        model(x)
        evidence = focus_evidence(model.focus_logits, count=True)
        norm = model.evidence_norm
        standard = (evidence - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps)
    assert norm.running_mean[0] < -1.0  # the offset the layer no longer has to learn
    assert torch.allclose(model.evidence_logits, model.evidence_fc(standard), atol=1e-5)
    assert standard.abs().max() < 10  # a standardised scale, not the raw offset
    with pytest.raises(ValueError, match="focus_norm needs focus_logit"):
        create_model("irv2_cam", focus_head=True, focus_norm=True)


def test_focus_loss_learns_punctate_marks_only():
    mask = _mask_with_focus()  # a punctate focus, a macrocalcification, a comet tail
    shape = (4, 8, 8)
    punctate = F.adaptive_max_pool3d((mask == 1).float()[:, None], shape)
    macro = F.adaptive_max_pool3d((mask == 2).float()[:, None], shape)
    has = torch.tensor([True, True])

    def loss_of(target):
        return focus_loss((target * 2 - 1) * 6, mask, has).item()  # confident logits

    assert loss_of(punctate) < 0.05 < loss_of(macro)
    none = focus_loss(torch.zeros(2, 1, *shape, requires_grad=True), mask, [False, False])
    assert none.item() == 0 and none.requires_grad


def test_training_on_the_focus_loss_raises_the_map_at_the_focus():
    torch.manual_seed(0)
    model = create_model("irv2_cam", focus_head=True)
    losses, x = _train_on_marks(model, lambda m, mask, has: focus_loss(m.focus_logits, mask, has))
    assert losses[-1] < 0.7 * losses[0]
    model(x)
    focus_cell = model.focus_logits[0, 0, 2, 1, 1]  # frame 5 -> 2, pixel (10, 12) -> (1, 1)
    assert focus_cell > model.focus_logits[0, 0, 3, 5, 5]  # the macrocalcification's cell


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODEL_NAMES]
)
def test_every_architecture_overfits_a_tiny_batch(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    x = _tiny_input(model, batch=4)
    y = torch.tensor([[0.0], [1.0], [0.0], [1.0]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = F.binary_cross_entropy_with_logits(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert min(losses[-3:]) < 0.5 * losses[0], losses


def test_ml_models_never_imports_django():
    code = "import sys, ml.models, ml.gradcam, ml.bench; assert 'django' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def _with_learnt_norms(model: torch.nn.Module) -> torch.nn.Module:
    """Batch norms with statistics and affine terms away from their identity start, as after
    training, so that folding them is not trivially right."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return model.eval()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_folding_batch_norms_keeps_the_models_function(name):
    torch.manual_seed(0)
    model = _with_learnt_norms(create_model(name, config="small"))
    x = _tiny_input(model)
    with torch.no_grad():
        want = model(x)
        folded = fold_batch_norms(model)
        got = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if name.startswith("irv2"):  # every IRv2 norm sits in a ConvNormAct: none is left
        assert folded > 0 and not norms


def test_folding_refuses_a_model_in_training():
    model = create_model("irv2_cam", config="small").train()
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norms(model)
