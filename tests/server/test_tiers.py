"""Device tiers: one search, a student per latency budget, each node its tier's bundle."""

import json
from dataclasses import replace

import pytest

from fedge.client.app import app as client_app
from fedge.client.node import simulated_store
from fedge.client.runtime.store import ModelStore
from fedge.client.runtime.verify import load_public_key
from fedge.compression.bundle import generate_keypair, load_private_key, make_bundle
from fedge.compression.latency import fit, probe_graphs
from fedge.core import messages as m
from fedge.core.config import ConfigError
from fedge.core.profile import load_profile, probe_index
from fedge.pipeline.rundir.paths import staged_run_dir
from fedge.pipeline.ship.search import SearchError, run_search
from fedge.pipeline.ship.tiers import TierTools, tier_of
from fedge.server.deploy import deploy_bundle
from fedge.server.nodes import Nodes
from fedge.server.run import run_server
from tests.client.conftest import bundle_config, device_model
from tests.flower_local import LocalGrid, in_process_engine
from tests.server.test_server import QUICKER


def params_search(*args, **kwargs):
    """The real search, with trial latency := parameter count (timing is tested elsewhere)."""
    found = run_search(*args, **kwargs)
    for trial in found.trials:
        trial.latency_us = float(trial.params)
    return found


PARAMS_AS_LATENCY = TierTools(search=params_search)  # trial latencies known before the run


@pytest.mark.slow
def test_each_node_gets_the_most_accurate_student_within_its_tiers_budget(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDGE_SIMULATION", "1")  # simulated nodes install one at a time
    tiers = "small:latency=10000+flash=64k+ram=16k,big:1000000"  # latency and exact resources
    cfg = QUICKER.replace(tiers=tiers, search_trials=3, student="auto")
    grid = LocalGrid(client_app, num_nodes=4)
    grid.contexts[100].node_config["device-class"] = "big"  # partition 0 would be "small"
    batches = []
    send = grid.send_and_receive

    def recording(messages, *, timeout=None):
        messages = list(messages)
        if messages and messages[0].metadata.message_type == "query.deploy":
            batches.append(len(messages))
        return send(messages, timeout=timeout)

    grid.send_and_receive = recording
    with staged_run_dir(tmp_path / "run") as work:
        results = run_server(grid, cfg, work, PARAMS_AS_LATENCY).to_json()
    assert batches == [1, 1, 1, 1]
    run = tmp_path / "run"
    tiers = {t["tier"]: t for t in results["tiers"]}
    assert list(tiers) == ["small", "big"]
    for name, tier in tiers.items():
        assert tier["bytes"] > 0 and (run / "bundles" / name / "model.onnx").is_file()
        manifest = json.loads((run / "bundles" / name / "manifest.json").read_text())
        assert manifest["tier"] == name  # signed for its tier only
    assert json.loads((run / "bundle" / "manifest.json").read_text())["tier"] == "big"
    small = tiers["small"]  # measured on the shipped model.onnx before it was signed
    assert small["bytes"] <= 65536 and 0 < small["arena_bytes"] <= 16384 and small["macs"] > 0
    assert small["budget"] == {"latency_us": 10000.0, "flash_bytes": 65536, "ram_bytes": 16384,
                               "macs": None, "margin": 1.0}  # fmt: skip
    assert small["latency_margin"] == 1.5
    saved = {r["tier"]: r["search_trial"] for r in json.loads((run / "tiers.json").read_text())}
    assert saved["small"]["latency_us"] <= 10000 / 1.5  # judged with the margin
    assert saved["big"]["latency_us"] <= 1000000 / 1.5
    assert saved["big"]["val_accuracy"] >= saved["small"]["val_accuracy"]  # it had more to pick
    expected = {0: "big", 1: "big", 2: "small", 3: "big"}  # device-class, then partition % 2
    rows = {c["partition_id"]: c for c in results["clients"]}
    for partition, tier in expected.items():
        assert rows[partition]["tier"] == tier and rows[partition]["installed"]
        store = ModelStore(run / "nodes" / f"partition-{partition}" / "model-store")
        assert store.current_version() == tiers[tier]["version"]
        installed = store.root / "versions" / str(store.current_version()) / "manifest.json"
        assert json.loads(installed.read_text())["tier"] == tier
    assert tiers["small"]["nodes"] == 1 and tiers["big"]["nodes"] == 3
    assert "## Device tiers" in (run / "report.md").read_text()


def test_tier_settings_and_mapping():
    assert tier_of(5, "", ["a", "b"]) == "b" and tier_of(5, "a", ["a", "b"]) == "a"
    assert tier_of(4, "unknown", ["a", "b"]) == "a"
    for bad in ("mcu:0", "Mcu:3", "a:1,a:2", "mcu", "a:x"):
        with pytest.raises(ConfigError, match="bad tier"):
            QUICKER.replace(tiers=bad, student="auto")
    with pytest.raises(ConfigError, match="allowed with tiers: student auto"):
        QUICKER.replace(tiers="a:10")  # QUICKER names a student
    with pytest.raises(ConfigError, match="not kd-source 'federated'"):
        QUICKER.replace(tiers="a:10", student="auto", kd_source="federated")


def slow_device_profile(path, name="slow-board", fixed_us=1000.0, per_node_us=50.0):
    """A valid profile of an overhead-bound device: each probe takes fixed + per node µs."""
    graphs = probe_graphs()
    probes = {
        probe: {
            "sha256": row["sha256"],
            "batches": {
                "1": {
                    "p50_us": fixed_us + per_node_us * graphs[probe].nodes,
                    "p95_us": 2 * fixed_us,
                }
            },
        }
        for probe, row in probe_index().items()
    }
    profile = {
        "fedge_profile": 1,
        "device": {"name": name},
        "threads": 1,
        "batches": [1],
        "probes": probes,
    }
    path.write_text(json.dumps(profile))
    return path


@pytest.mark.slow
def test_nodes_send_their_device_profiles_and_each_tier_is_judged_on_its_nodes(tmp_path):
    slow = slow_device_profile(tmp_path / "slow.json")
    (tmp_path / "bad.json").write_text('{"fedge_profile": 99}')
    cfg = QUICKER.replace(tiers="board:1000000,server:1000000", search_trials=2, student="auto")
    grid = LocalGrid(client_app, num_nodes=4)  # partitions 0, 2: board; 1, 3: server
    grid.contexts[100].node_config["device-profile"] = str(slow)
    grid.contexts[102].node_config["device-profile"] = str(slow)
    grid.contexts[101].node_config["device-profile"] = str(tmp_path / "bad.json")  # refused
    grid.contexts[103].node_config["device-profile"] = str(tmp_path / "missing.json")
    here = TierTools(time_us=lambda model, sample: 42.0)  # this machine's timing, injected
    with staged_run_dir(tmp_path / "run") as work:
        results = run_server(grid, cfg, work, here).to_json()
    tiers = {t["tier"]: t for t in results["tiers"]}
    model = (tmp_path / "run" / "bundles" / "board" / "model.onnx").read_bytes()
    predicted = fit(load_profile(slow)).predict_us(model, 1)
    assert tiers["board"]["judged_on"] == "slow-board" and predicted > 1000
    assert tiers["board"]["latency_us"] == pytest.approx(predicted)
    assert tiers["server"]["judged_on"] == "this machine" and tiers["server"]["latency_us"] == 42.0
    for tier in tiers.values():  # every node timed its own install: onnxruntime call, predict
        assert tier["node_latency_us_max"] > 0 and tier["node_predict_us_max"] > 0


def test_a_hostile_profile_counts_as_none():
    from fedge.server.tiers import _checked

    assert _checked("", 1) is None
    assert _checked("[" * 100_000, 1) is None  # deep nesting: RecursionError, not a crash
    assert _checked(" " * ((1 << 20) + 1), 1) is None  # too big: not even parsed
    assert _checked('{"fedge_profile": 1, "probes": 3}', 1) is None


def test_a_tier_budget_found_impossible_in_a_simulation_is_one_line_exit_2(tmp_path):
    import fedge.simulations.runner as runner

    # Flower's engine logs what the ServerApp raised, it does not raise it
    engine = in_process_engine(4, swallowed=(SearchError,))
    out = tmp_path / "run"  # 0.1 µs: below onnxruntime's own cost per call, whatever the model
    cfg = QUICKER.replace(tiers="mcu:0.1", search_trials=2, student="auto", out=str(out))
    with pytest.raises(ConfigError, match=r"tier 'mcu': no architecture of 2 tried meets"):
        runner.simulate(cfg, engine=engine)
    assert not out.exists() and (tmp_path / "run.partial" / "checkpoints").is_dir()


def test_a_deploy_reply_from_an_older_node_without_the_onnx_timing_is_read():
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    from fedge.server.deploy import _client_row
    from tests.flower_local import set_task_identity

    set_task_identity()  # Flower's Message needs a run to belong to
    metrics = {"partition-id": 3, "installed": 1, "accuracy": 0.9, "latency-us-p50": 20.0}
    content = RecordDict(
        {
            "metrics": MetricRecord({**metrics, "num-examples": 10}),
            "status": ConfigRecord({"reason": "installed"}),
        }
    )
    row = _client_row(Message(content, dst_node_id=1, message_type="query.deploy"), 3)
    assert row.installed and row.latency_us_p50 == 20.0 and row.onnx_us_p50 is None
    del content["metrics"]["latency-us-p50"]  # install-timing off: the node timed nothing
    row = _client_row(Message(content, dst_node_id=1, message_type="query.deploy"), 3)
    assert row.installed and row.accuracy == 0.9 and row.latency_us_p50 is None


def test_a_bundle_sent_to_the_wrong_tier_is_refused_by_the_node(tmp_path, monkeypatch):
    """A server that routes tiers wrongly (a bug) installs nothing on the misrouted nodes.

    Node 100 declares device-class small; node 101 declares nothing and is told its tier.
    The server's table swaps the tiers' bundles: both nodes get the other tier's bundle.
    """
    monkeypatch.setenv(m.SIMULATION_ENV, "1")
    private_path, public_path = generate_keypair(tmp_path / "keys")
    key = load_private_key(private_path)
    _, model = device_model("tiny")
    signed = {
        tier: make_bundle(model, replace(bundle_config(7), tier=tier), key)
        for tier in ("small", "big")
    }
    grid = LocalGrid(client_app, num_nodes=2)
    grid.contexts[100].node_config["device-class"] = "small"
    nodes = Nodes({100: 0, 101: 1})
    swapped = {"small": signed["big"], "big": signed["small"]}

    def deploy(bundles, node_tier):
        rows, _ = deploy_bundle(
            grid,
            QUICKER.replace(install_timing="off"),
            signed["small"],
            simulation_store_root=tmp_path / "nodes",
            simulation_trusted_key=public_path,
            nodes=nodes,
            spec={},
            tiers=(bundles, node_tier),
        )
        return {r.partition_id: r for r in rows}

    rows = deploy(swapped, {100: "small", 101: "big"})
    assert "for device tier 'big', this device is tier 'small'" in rows[0].reason  # its own
    assert "for device tier 'small', but the server assigned this device tier 'big'" in (
        rows[1].reason  # the server's word
    )
    for partition in (0, 1):
        assert not rows[partition].installed
        assert ModelStore(simulated_store(tmp_path / "nodes", partition)).current_version() is None
    rows = deploy(signed, {100: "small", 101: "big"})  # routed right: the same version installs
    assert rows[0].installed and rows[1].installed
    store = ModelStore(simulated_store(tmp_path / "nodes", 1))
    assert store.load(load_public_key(public_path)).manifest.tier == "big"
    # Reassigned to another tier later (e.g. a resume with other tiers): held to what it serves.
    later = make_bundle(model, replace(bundle_config(8), tier="small"), key)
    rows = deploy({"small": later, "big": later}, {100: "small", 101: "small"})
    assert rows[0].installed and not rows[1].installed
    assert "the installed model for 'big'; allow a switch explicitly" in rows[1].reason


def _trial(student, accuracy, flash, arena, latency=10.0):
    from fedge.pipeline.ship.search import Trial

    return Trial(student, "qdq", accuracy, accuracy, flash, 100, True, latency, None, latency,
                 {}, 1.0, macs=1000, arena_bytes=arena)  # fmt: skip


def test_resource_budgets_keep_the_trials_within_every_limit_and_name_the_closest():
    from fedge.core.budgets import parse_budget
    from fedge.pipeline.ship.search import SearchError
    from fedge.pipeline.ship.tiers import Judge

    trials = [
        _trial("big", 0.95, 90_000, 4_000),
        _trial("wide", 0.93, 30_000, 70_000),  # fits flash, not the arena
        _trial("small", 0.90, 20_000, 3_000),
        _trial("unmeasured", 0.99, 10_000, None),  # an unknown arena fits no ram limit
    ]
    judge = Judge.of([])  # latency: the trials' own (measured here)
    mcu = parse_budget("flash=64k+ram=64k")
    assert [t.student for t in judge.within(trials, mcu, "mcu")] == ["small"]
    assert judge.within(trials, parse_budget("1000"), "gw")[0].student == "unmeasured"
    with pytest.raises(SearchError) as err:
        judge.within(trials, parse_budget("flash=16k+ram=2k"), "tiny")
    assert "no architecture of 4 tried meets its budget (flash 16 KiB, ram 2 KiB)" in str(err.value)
    assert "the closest was small: flash 20,000 B > 16,384 B; ram 3,000 B > 2,048 B" in str(
        err.value
    )
