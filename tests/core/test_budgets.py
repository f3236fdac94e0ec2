"""Device budgets: the tiers syntax, exact resource limits, and what misses them."""

import pytest

from fedge.core.budgets import Budget, BudgetError, parse_budget
from fedge.core.config import ConfigError, RunConfig


def test_a_number_is_a_latency_and_parts_are_exact_limits():
    assert parse_budget("15") == Budget(latency_us=15.0)
    mcu = parse_budget("flash=64k+ram=64k+macs=5m")
    assert mcu == Budget(None, 65536, 65536, 5_000_000) and mcu.resources_only
    assert parse_budget("latency=2000+ram=1.5k") == Budget(2000.0, None, 1536, None)
    assert mcu.describe() == "flash 64 KiB, ram 64 KiB, macs 5,000,000"
    assert Budget.from_json(mcu.to_json()) == mcu


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0", "latency '0' must be a finite number > 0"),
        ("inf", "finite number"),
        ("flash=64x", "number with an optional k or m suffix"),
        ("disk=3", "keys are latency, flash, ram, macs"),
        ("ram=1k+ram=2k", "each at most once"),
        ("ram=0", "at least 1"),
    ],
)
def test_a_bad_budget_names_the_part(text, message):
    with pytest.raises(BudgetError, match=message):
        parse_budget(text)


def test_misses_name_each_limit_exceeded_and_unknown_figures_miss():
    budget = Budget(latency_us=100.0, flash_bytes=1000, ram_bytes=500)
    assert budget.misses(90.0, 1000, 400, 10**9) == []  # macs: no limit
    assert budget.misses(120.0, 1001, None, None) == [
        "latency 120 µs > 100 µs",
        "flash 1,001 B > 1,000 B",
        "ram unknown, limit 500 B",
    ]


def test_the_tiers_setting_takes_resource_budgets():
    cfg = RunConfig(tiers="mcu:flash=32k+ram=16k,phone:latency=2000,gateway:100", student="auto")
    assert cfg.tier_budgets == {
        "mcu": Budget(None, 32768, 16384, None),
        "phone": Budget(2000.0, None, None, None),
        "gateway": Budget(100.0, None, None, None),
    }
    with pytest.raises(ConfigError, match=r"bad tier 'mcu:disk=1' in tiers \(budget part"):
        RunConfig(tiers="mcu:disk=1", student="auto")


def test_the_server_judges_a_latency_budget_with_its_margin():
    from fedge.pipeline.ship.tiers import with_margin

    judged = with_margin(parse_budget("latency=30+ram=2k"), 1.5)
    assert judged.latency_us == 20.0 and judged.ram_bytes == 2048  # resources stay exact
    assert judged.describe() == "latency 30 µs / margin 1.5 = 20 µs, ram 2 KiB"
    assert judged.misses(25.0, None, 100, None) == ["latency 25 µs > 20 µs"]
    assert with_margin(parse_budget("flash=1k"), 1.5) == parse_budget("flash=1k")
    with pytest.raises(ConfigError, match="tier-latency-margin"):
        RunConfig(tier_latency_margin=0.5)


def test_one_budget_gives_the_misses_the_distance_and_optunas_constraints():
    budget = Budget(latency_us=100.0, flash_bytes=1000, ram_bytes=500)
    assert budget.excess(50.0, 2000, 250, 10**9) == 2.0  # flash is twice its limit; no macs limit
    assert budget.excess(50.0, 500, None, None) == float("inf")  # the arena is unknown
    assert Budget().excess(1e9, 1, 1, 1) == 0.0
    assert budget.overs(120.0, 900, None, 5) == [20.0, -100.0, 1.0, -1.0]
