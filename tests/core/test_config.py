import tomllib
from pathlib import Path

import pytest

from fedge.core.config import ConfigError, RunConfig

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_pyproject_defaults_equal_runconfig_defaults():
    app_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert app_config == RunConfig().to_run_config()


def test_round_trip_through_kebab_dict():
    cfg = RunConfig(dataset="mnist1d", clients=3, alpha=0.1, strategy="fedprox")
    assert RunConfig.from_run_config(cfg.to_run_config()) == cfg


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            {"dataset": "cifar"},
            "unknown dataset 'cifar'; allowed: digits, mnist1d, fmnist, npz:PATH",
        ),
        ({"partition": "zipf"}, "unknown partition 'zipf'; allowed: iid, dirichlet, pathological"),
        ({"strategy": "fedsgd"}, "unknown strategy 'fedsgd'; allowed: fedavg, fedprox, fedadam"),
        ({"alpha": 0.0}, "alpha must be > 0, got 0.0"),
        ({"alpha": -1}, "alpha must be > 0, got -1.0"),
        ({"rounds": 0}, "rounds must be >= 1, got 0"),
        ({"clients": 0}, "clients must be >= 1, got 0"),
        ({"roundz": 3}, "unknown setting 'roundz'"),
        ({"rounds": "3"}, "rounds must be an integer, got '3'"),
        ({"quant-per-channel": "true"}, "quant-per-channel must be true or false"),
        ({"teacher": "resnet"}, "unknown teacher 'resnet'; allowed: cnn, linear"),
        ({"kd-labels": "fuzzy"}, "unknown kd-labels 'fuzzy'; allowed: hard, soft"),
        ({"kd-queries": "all"}, "unknown kd-queries 'all'; allowed: pool, augmented"),
    ],
)
def test_bad_values_name_the_value_and_the_allowed_ones(settings, message):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_run_config(settings)
    assert message in str(err.value)


def test_ints_are_accepted_where_floats_are_expected():
    assert RunConfig.from_run_config({"alpha": 1}).alpha == 1.0


def test_the_config_knows_every_student_the_model_zoo_builds():
    from fedge.core.choices import STUDENTS
    from fedge.core.models import SEPARABLE_STUDENTS, STUDENT_WIDTHS

    assert set(STUDENTS) == set(STUDENT_WIDTHS) | set(SEPARABLE_STUDENTS)


def test_device_targets_tflite_without_tensorflow_is_refused_before_training(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tensorflow" else real(name)
    )
    with pytest.raises(ConfigError, match=r"device-targets onnx,tflite converts with TensorFlow"):
        RunConfig().replace(device_targets="onnx,tflite")
    assert RunConfig().replace(device_targets="onnx").device_targets == "onnx"
