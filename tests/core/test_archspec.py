"""Searched architectures: the spec string round-trips, bad specs are named, pruned ones rebuild."""

import numpy as np
import pytest
import torch

from fedge.core import archspec
from fedge.core.choices import STUDENTS
from fedge.core.config import ConfigError, RunConfig
from fedge.core.models import build_student, build_teacher, count_params, student_from_weights


def test_a_spec_round_trips_and_builds_the_layers_it_names():
    spec = "arch:c16k3p-c32k5-h64-hardswish"
    parsed = archspec.parse(spec)
    assert parsed.spec == spec
    assert parsed.convs == (archspec.Conv(16, 3, True), archspec.Conv(32, 5, False))
    model = build_student((1, 8, 8), 10, spec, seed=0)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(16, (3, 3)), (32, (5, 5))]
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.modules()) == 1
    assert sum(isinstance(m, torch.nn.Hardswish) for m in model.modules()) == 3
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert build_student((1, 40), 10, "arch:c8k7p-c8k7p-c8k7p-relu", 0)(
        torch.zeros(1, 1, 40)
    ).shape == (1, 10)
    assert build_student((20,), 3, "arch:h32-h16-relu", 0)(torch.zeros(1, 20)).shape == (1, 3)


def test_a_separable_convolution_is_depthwise_then_pointwise_and_rebuilds_when_pruned():
    spec = "arch:c16k3p-d32k3p-d64k5-relu"
    assert archspec.parse(spec).spec == spec and archspec.parse(spec).convs[1].separable
    model = build_student((1, 28, 28), 10, spec, seed=0)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    shapes = [(c.in_channels, c.out_channels, c.kernel_size, c.groups) for c in convs]
    assert shapes == [
        (1, 16, (3, 3), 1),
        (16, 16, (3, 3), 16),  # depthwise: one 3x3 filter per channel, no bias
        (16, 32, (1, 1), 1),  # pointwise
        (32, 32, (5, 5), 32),
        (32, 64, (1, 1), 1),
    ]
    assert convs[1].bias is None and model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    # a DS-CNN pays for its receptive field with far fewer weights than a full convolution
    full = build_student((1, 28, 28), 10, "arch:c16k3p-c32k3p-c64k5-relu", seed=0)
    weights = [sum(p.numel() for p in m.features.parameters()) for m in (model, full)]
    assert weights[0] * 10 < weights[1]
    pruned = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    pruned["features.6.1.weight"] = pruned["features.6.1.weight"][:40]  # 64 -> 40 channels
    pruned["features.6.1.bias"] = pruned["features.6.1.bias"][:40]
    pruned["classifier.0.weight"] = pruned["classifier.0.weight"][:, : 40 * 7 * 7]
    rebuilt = student_from_weights((1, 28, 28), 10, spec, pruned)
    assert rebuilt(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(ValueError, match="the first convolution sees the input's channels"):
        archspec.parse("arch:d16k3-relu")


def test_a_strided_convolution_computes_every_other_position_as_pooling_would_keep():
    spec = "arch:c16k3s-d32k3sp-d64k3p-relu"
    parsed = archspec.parse(spec)
    assert parsed.spec == spec
    assert [(c.strided, c.pooled) for c in parsed.convs] == [
        (True, False),
        (True, True),
        (False, True),
    ]
    model = build_student((1, 28, 28), 10, spec, seed=0)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.stride for c in convs] == [(2, 2), (2, 2), (1, 1), (1, 1), (1, 1)]  # dw strides
    # 28 -> 14 (stride) -> 7 (stride) -> 4 (pool, rounding up) -> 2 (pool): 64 x 2 x 2 features
    assert model.classifier[0].in_features == 64 * 2 * 2
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    pooled = build_student((1, 28, 28), 10, "arch:c16k3p-d32k3p-d64k3p-relu", seed=0)
    x = torch.randn(2, 1, 28, 28)
    # the same first layer: the stride keeps the positions a 2x2 window's top-left corner sees
    strided = build_student((1, 28, 28), 10, "arch:c16k3s-relu", seed=0)
    strided.features[0].load_state_dict(pooled.features[0].state_dict())
    full = torch.nn.functional.conv2d(
        x, pooled.features[0].weight, pooled.features[0].bias, padding=1
    )
    torch.testing.assert_close(strided.features[0](x), full[:, :, ::2, ::2])
    with pytest.raises(ValueError, match="poolings and strides shrink input"):
        build_student((1, 8, 8), 10, "arch:c8k3s-c8k3sp-c8k3p-relu", 0)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("arch:c16k4-relu", "kernels must be one of"),
        ("arch:h64-c16k3-relu", "bad layer 'c16k3'"),
        ("arch:c16k3-swish", "unknown activation 'swish'"),
        ("arch:relu", "1 to 6 layers"),
        ("arch:c9999k3-relu", "widths must be in"),
    ],
)
def test_a_bad_spec_is_refused_with_the_format(spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        RunConfig(student=spec)
    assert "format: arch:c<channels>" in str(err.value)


def test_shapes_the_spec_cannot_take_are_refused():
    with pytest.raises(ValueError, match="only hidden layers"):
        build_student((20,), 3, "arch:c8k3-relu", 0)
    with pytest.raises(ValueError, match="shrink input"):
        build_student((1, 8, 8), 10, "arch:c8k3p-c8k3p-c8k3p-c8k3p-relu", 0)


def test_a_pruned_searched_student_rebuilds_from_its_weights():
    spec = "arch:c16k3p-c32k3-h64-relu"
    model = build_student((1, 8, 8), 10, spec, seed=0)
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    keep = np.arange(10)  # structured pruning: the first conv keeps 10 of its 16 channels
    weights["features.0.weight"] = weights["features.0.weight"][keep]
    weights["features.0.bias"] = weights["features.0.bias"][keep]
    weights["features.3.weight"] = weights["features.3.weight"][:, keep]
    rebuilt = student_from_weights((1, 8, 8), 10, spec, weights)
    assert rebuilt.features[0].out_channels == 10 and rebuilt.features[3].in_channels == 10
    x = torch.ones(1, 1, 8, 8)
    assert rebuilt(x).shape == (1, 10)


def test_the_searchs_first_trials_are_the_hand_written_family_exactly():
    from fedge.core.models import SEPARABLE_STUDENTS, STUDENT_WIDTHS
    from fedge.pipeline.ship.search import seed_specs

    for shape in ((1, 8, 8), (1, 40), (1, 28, 28)):
        x = torch.randn(3, *shape)
        family = [*STUDENT_WIDTHS, *SEPARABLE_STUDENTS]
        for name, spec in zip(family, seed_specs(shape), strict=True):
            family, searched = build_student(shape, 10, name, 0), build_student(shape, 10, spec, 0)
            torch.testing.assert_close(family(x), searched(x))  # same layers, same start


def test_every_sampled_architecture_builds_and_some_stride_their_first_layer():
    import optuna

    from fedge.pipeline.ship.search_space import sample

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for shape in ((1, 8, 8), (1, 40), (1, 28, 28)):
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
        specs = [sample(study.ask(), shape) for _ in range(60)]
        for spec in specs:
            out = build_student(shape, 10, spec, 0)(torch.zeros(2, *shape))
            assert out.shape == (2, 10), spec
        strided = [archspec.parse(s).convs[0].strided for s in specs]
        assert any(strided) and not all(strided)


@pytest.mark.parametrize("kind", STUDENTS)
def test_every_student_name_federated_as_teacher_is_that_student(kind):
    # A separable student as --teacher once built the wide NormTeacher without a word.
    for shape in ((1, 28, 28), (1, 40)):
        teacher, student = build_teacher(shape, 10, 0, kind), build_student(shape, 10, kind, 0)
        assert count_params(teacher) == count_params(student), (kind, shape)
        assert count_params(teacher) < count_params(build_teacher(shape, 10, 0, "cnn"))
