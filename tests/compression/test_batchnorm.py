"""Training-time BatchNorm (student-norm batch): folded away exactly, the architecture unchanged."""

import pytest
import torch

from fedge.compression.batchnorm import fold_batchnorm, with_batchnorm
from fedge.compression.distill import DistillConfig, distill
from fedge.compression.kd import KDConfig
from fedge.core.config import RunConfig
from fedge.core.models import build_student

CASES = [
    ((1, 12, 12), "ds-small", 3),  # separable 2-D: the first convolution, two pointwise
    ((1, 12, 12), "arch:c8k3s-d16k5p-h12-relu", 2),  # strided, a hidden layer left alone
    ((1, 40), "deep-small", 3),  # 1-D signals
    ((1, 12, 12), "small", 2),
    ((20,), "small", 0),  # an MLP has no convolutions
]


@pytest.mark.parametrize(("shape", "name", "convs"), CASES)
def test_folding_keeps_the_function_and_the_parameter_names(shape, name, convs):
    """Differential: the model with its trained BatchNorm (eval) and the folded model agree."""
    model = build_student(shape, 10, name, seed=0)
    names = {k: v.shape for k, v in model.state_dict().items()}
    assert with_batchnorm(model) == convs
    torch.manual_seed(1)
    model.train()
    for _ in range(5):  # running statistics and affine parameters away from their start
        model(torch.randn(32, *shape) * 3 + 1)
    for parameter in model.parameters():
        parameter.data.add_(0.1 * torch.randn_like(parameter))
    model.eval()
    x = torch.randn(16, *shape)
    with torch.no_grad():
        normed = model(x)
        assert fold_batchnorm(model) == convs
        folded = model(x)
    assert {k: v.shape for k, v in model.state_dict().items()} == names
    assert torch.allclose(normed, folded, atol=1e-4)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def test_distillation_with_batchnorm_ships_the_same_architecture_trained_differently(
    teacher, digits_fed
):
    """student-norm batch: same layers and names as student-norm none, other weights."""
    pool = digits_fed.server.public_pool
    kd = KDConfig(temperature=4.0, labels="hard", queries="pool", seed=0, batch_size=32)
    students = {
        norm: distill(
            teacher,
            pool,
            DistillConfig(student="ds-small", epochs=3, kd=kd, norm=norm),
            input_shape=(1, 8, 8),
            num_classes=10,
        )
        for norm in ("none", "batch")
    }
    plain, normed = students["none"].state_dict(), students["batch"].state_dict()
    assert {k: v.shape for k, v in plain.items()} == {k: v.shape for k, v in normed.items()}
    assert not torch.equal(plain["features.0.weight"], normed["features.0.weight"])
    x = torch.from_numpy(digits_fed.server.test.x)
    agree = (teacher(x).argmax(1) == students["batch"](x).argmax(1)).float().mean()
    assert agree > 0.5  # it learned from the teacher, through the fold


def test_an_unknown_norm_is_refused():
    kd = KDConfig(temperature=4.0, labels="hard", queries="pool", seed=0)
    with pytest.raises(ValueError, match="layer"):
        DistillConfig(student="ds-small", epochs=1, kd=kd, norm="layer")


def test_the_run_setting_reaches_distillation():
    cfg = RunConfig(dataset="digits", student="ds-small", student_norm="batch")
    assert DistillConfig.from_run(cfg).norm == "batch"
    assert DistillConfig.from_run(RunConfig(dataset="digits", student="ds-small")).norm == "none"
