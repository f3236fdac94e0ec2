"""Searched architectures: the spec string round-trips, bad specs are named, pruned ones rebuild."""

import numpy as np
import pytest
import torch

from fedge.core import archspec
from fedge.core.config import ConfigError, RunConfig
from fedge.core.models import build_student, student_from_weights


def test_a_spec_round_trips_and_builds_the_layers_it_names():
    spec = "arch:c16k3p-c32k5-h64-hardswish"
    parsed = archspec.parse(spec)
    assert parsed.spec == spec and parsed.convs == ((16, 3, True), (32, 5, False))
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
    from fedge.core.models import STUDENT_WIDTHS
    from fedge.pipeline.ship.search import seed_specs

    for shape in ((1, 8, 8), (1, 40)):
        x = torch.randn(3, *shape)
        for name, spec in zip(STUDENT_WIDTHS, seed_specs(shape), strict=True):
            family, searched = build_student(shape, 10, name, 0), build_student(shape, 10, spec, 0)
            torch.testing.assert_close(family(x), searched(x))  # same layers, same start
