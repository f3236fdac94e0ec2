"""Settings are declared once: parsing of --run-config and flags, and what derives from it."""

import dataclasses
import tomllib
from pathlib import Path

import pytest

from fedge.core.config import COMPRESSION_SETTINGS, SETTINGS, ConfigError, RunConfig
from fedge.core.settings import parse_flags, parse_pairs

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_every_field_is_declared_with_help_and_pyproject_lists_them_in_order():
    fields = [f.name for f in dataclasses.fields(RunConfig)]
    assert [spec.name for spec in SETTINGS.values()] == fields
    assert all(spec.help for spec in SETTINGS.values())
    app_config = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]
    assert list(app_config) == list(SETTINGS)  # same keys, same order: no second copy drifts
    assert app_config == {k: spec.default for k, spec in SETTINGS.items()}


def test_run_config_pairs_are_typed_by_their_declaration():
    parsed = parse_pairs(
        "rounds=3 alpha=0.1 quant-per-channel=false student='small' out=\"/tmp/a b\"", SETTINGS
    )
    assert parsed == {
        "rounds": 3,
        "alpha": 0.1,
        "quant-per-channel": False,
        "student": "small",
        "out": "/tmp/a b",
    }
    assert parse_pairs("alpha=1", SETTINGS) == {"alpha": 1.0}  # an int where a float goes


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rounds", "pair 'rounds' is not key=value"),
        ("=3", "pair '=3' is not key=value"),
        ("roundz=3", "unknown setting 'roundz'; allowed: rounds, round-timeout"),
        ("rounds=three", "rounds must be an integer (>= 1), got 'three'"),
        ("rounds=1.5", "rounds must be an integer, got 1.5"),
        ("quant-per-channel=yes", "quant-per-channel must be true or false, got 'yes'"),
        ("student='small", "cannot be split into pairs"),
    ],
)
def test_bad_run_config_names_the_pair_and_what_is_allowed(text, message):
    with pytest.raises(ConfigError, match="^.*$") as err:
        parse_pairs(text, SETTINGS)
    assert message in str(err.value)


def test_flags_take_values_and_true_false_settings_take_no_or_a_word():
    parsed = parse_flags(
        ["--kd-epochs", "800", "--prune-ratio=0.5", "--no-quant-per-channel", "--resume"],
        SETTINGS,
    )
    assert parsed == {
        "kd-epochs": 800,
        "prune-ratio": 0.5,
        "quant-per-channel": False,
        "resume": True,
    }
    assert parse_flags(["--quant-per-channel", "false"], SETTINGS) == {"quant-per-channel": False}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--kd-epochz", "3"], "unknown setting --kd-epochz; allowed: kd-epochs"),
        (["--kd-epochs"], "--kd-epochs needs a value"),
        (["--no-clients"], "only true/false settings have a --no- form"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_bad_flags_are_named(args, message):
    with pytest.raises(ConfigError) as err:
        parse_flags(args, SETTINGS)
    assert message in str(err.value)


def test_what_compress_and_resume_may_change_comes_from_the_declarations():
    assert "student" in COMPRESSION_SETTINGS and "rounds" not in COMPRESSION_SETTINGS
    assert set(COMPRESSION_SETTINGS) == {k for k, s in SETTINGS.items() if s.compress}
    base = RunConfig()
    assert base.incompatible_with(base.replace(round_timeout=5.0, out="/x", resume=True)) == []
    assert base.incompatible_with(base.replace(seed=1)) == ["seed"]


def test_declared_ranges_are_checked():
    with pytest.raises(ConfigError, match=r"prune-ratio must be in \[0, 1\), got 1.0"):
        RunConfig(prune_ratio=1.0)
    with pytest.raises(ConfigError, match=r"dp-delta must be in \(0, 1\), got 0.0"):
        RunConfig(dp_delta=0.0)


def test_a_true_false_flag_names_a_bad_value_instead_of_calling_it_an_argument():
    from fedge.core.config import SETTINGS
    from fedge.core.settings import ConfigError, parse_flags

    with pytest.raises(ConfigError, match="quant-per-channel must be true or false, got 'maybe'"):
        parse_flags(["--quant-per-channel", "maybe"], SETTINGS)
    assert parse_flags(["--quant-per-channel", "--seed", "3"], SETTINGS) == {
        "quant-per-channel": True,
        "seed": 3,
    }
