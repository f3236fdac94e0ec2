"""install-timing auto: a simulation's deploy asks only its first 10 clients to time the model."""

import pytest
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.records import record_to_config
from fedge.pipeline.outputs.report import _deployment_lines
from fedge.pipeline.outputs.results import deployment
from fedge.server.deploy import deploy_bundle
from fedge.server.nodes import Nodes
from tests.flower_local import LocalGrid

reporter = ClientApp()


@reporter.query(m.DEPLOY_ACTION)
def _deploy(msg: Message, context) -> Message:
    """A node that installs anything and times it unless told install-timing off."""
    cfg = record_to_config(msg.content.config_records[m.CONFIG])
    metrics = {m.PARTITION_ID: context.node_config["partition-id"], m.INSTALLED: 1}
    metrics |= {m.NUM_EXAMPLES: 5, m.ACCURACY: 0.8}
    if cfg.install_timing != "off":
        metrics |= {m.LATENCY_US_P50: 20.0, m.ONNX_US_P50: 10.0}
    content = {m.METRICS: MetricRecord(metrics), m.STATUS: ConfigRecord({m.REASON: "installed"})}
    return Message(RecordDict(content), reply_to=msg)


def _deploy_to(num_nodes: int, cfg: RunConfig, tmp_path, tiered: bool = False, batches=None):
    grid = LocalGrid(reporter, num_nodes=num_nodes)
    if batches is not None:  # record how many messages each send carries
        send = grid.send_and_receive

        def recording(messages, *, timeout=None):
            messages = list(messages)
            batches.append(len(messages))
            return send(messages, timeout=timeout)

        grid.send_and_receive = recording
    nodes = Nodes({node: i for i, node in enumerate(sorted(grid.contexts))})
    files = {name: b"bundle file" for name in ("model.onnx", "manifest.json", "manifest.sig")}
    tiers = ({"a": files, "b": files}, {n: "ab"[i % 2] for i, n in enumerate(nodes.partitions)})
    rows, _ = deploy_bundle(
        grid,
        cfg,
        files,
        simulation_store_root=tmp_path,
        simulation_trusted_key=tmp_path / "key.pem",
        nodes=nodes,
        spec={},
        tiers=tiers if tiered else None,
    )
    return rows


def test_auto_times_only_the_first_ten_clients_of_a_simulation(tmp_path, monkeypatch):
    monkeypatch.setenv(m.SIMULATION_ENV, "1")
    cfg = RunConfig(clients=14, install_timing="auto")
    batches: list[int] = []
    rows = _deploy_to(14, cfg, tmp_path, batches=batches)
    assert batches == [4] + [1] * 10  # the untimed together, then each timed node alone
    assert all(r.installed for r in rows)
    timed = [r.partition_id for r in rows if r.latency_us_p50 is not None]
    assert timed == list(range(10))  # the lowest partitions; the others report no latency
    summary = deployment(cfg, rows)
    assert summary.passed and (summary.installed, summary.timed) == (14, 10)
    assert "timed on 10 of 14 installed clients" in "\n".join(_deployment_lines(summary))


@pytest.mark.parametrize(("simulated", "timing"), [("1", "settled"), ("", "auto")])
def test_every_client_times_when_asked_or_when_nodes_are_real(
    tmp_path, monkeypatch, simulated, timing
):
    monkeypatch.setenv(m.SIMULATION_ENV, simulated)
    cfg = RunConfig(clients=12, install_timing=timing)
    rows = _deploy_to(12, cfg, tmp_path)
    assert [r.latency_us_p50 for r in rows] == [20.0] * 12
    summary = deployment(cfg, rows)
    assert summary.timed == 12 and _deployment_lines(summary) == []


def test_with_tiers_every_simulated_client_times_its_tiers_model(tmp_path, monkeypatch):
    """A tier's budget is judged on each of its nodes, so auto narrows nothing there."""
    monkeypatch.setenv(m.SIMULATION_ENV, "1")
    cfg = RunConfig(clients=12, install_timing="auto")
    rows = _deploy_to(12, cfg, tmp_path, tiered=True)
    assert [r.latency_us_p50 for r in rows] == [20.0] * 12
    assert {r.tier for r in rows} == {"a", "b"}


runtimes_app = ClientApp()


@runtimes_app.query(m.INFO_ACTION)
def _info(msg: Message, context) -> Message:
    runtime = context.node_config.get(m.NODE_RUNTIME)
    status = {m.NODE_RUNTIME: runtime} if runtime else {}  # an older node says nothing
    content = {m.METRICS: MetricRecord({m.PARTITION_ID: 0}), m.STATUS: ConfigRecord(status)}
    return Message(RecordDict(content), reply_to=msg)


@runtimes_app.query(m.DEPLOY_ACTION)
def _deploy_keys(msg: Message, context) -> Message:
    """Reports which artifacts it was sent, as accuracy: 1 for model.tflite + 2 for model.ort."""
    config = msg.content.config_records[m.CONFIG]
    got = (m.BUNDLE_TFLITE in config) + 2 * (m.BUNDLE_ORT in config)
    metrics = {m.PARTITION_ID: context.node_config["partition-id"], m.INSTALLED: 1}
    metrics |= {m.NUM_EXAMPLES: 1, m.ACCURACY: float(got)}
    content = {m.METRICS: MetricRecord(metrics), m.STATUS: ConfigRecord({m.REASON: "installed"})}
    return Message(RecordDict(content), reply_to=msg)


def test_an_artifact_goes_only_to_nodes_that_run_its_runtime(tmp_path):
    grid = LocalGrid(runtimes_app, num_nodes=5)
    declared = ["tflite", "onnx", None, "coreml", "ort"]  # None: says nothing; coreml: unknown
    for (_, context), runtime in zip(sorted(grid.contexts.items()), declared, strict=True):
        if runtime:
            context.node_config[m.NODE_RUNTIME] = runtime
    nodes = Nodes({node: i for i, node in enumerate(sorted(grid.contexts))})
    files = {"model.onnx": b"o" * 10, "manifest.json": b"j", "manifest.sig": b"s"}
    files |= {"model.tflite": b"t" * 100, "model.ort": b"r" * 1000}
    rows, sent = deploy_bundle(
        grid,
        RunConfig(clients=5, install_timing="off"),
        files,
        simulation_store_root=tmp_path,
        simulation_trusted_key=tmp_path / "key.pem",
        nodes=nodes,
        spec={},
    )
    got = [row.accuracy for row in sorted(rows, key=lambda r: r.partition_id)]
    assert got == [1.0, 0.0, 3.0, 3.0, 2.0]  # unknown or unsaid: every file, to be safe
    assert sent == 5 * 12 + 100 + 1100 + 1100 + 1000


def test_the_deploy_asks_no_node_twice_for_what_it_runs(tmp_path):
    # A tier lookup (node_tiers) asks every node query.info and keeps the runtime each
    # declares; the deploy that follows sends artifacts by it without asking again.
    from fedge.server.tiers import node_tiers

    grid = LocalGrid(runtimes_app, num_nodes=3)
    declared = ["tflite", "ort", None]
    for (_, context), runtime in zip(sorted(grid.contexts.items()), declared, strict=True):
        if runtime:
            context.node_config[m.NODE_RUNTIME] = runtime
    asked: list[str] = []
    send = grid.send_and_receive

    def counting(messages, *, timeout=None):
        messages = list(messages)
        asked.extend(msg.metadata.message_type for msg in messages)
        return send(messages, timeout=timeout)

    grid.send_and_receive = counting
    cfg = RunConfig(clients=3, install_timing="off", tiers="a:100,b:200")
    nodes = Nodes({node: i for i, node in enumerate(sorted(grid.contexts))})
    files = {"model.onnx": b"o", "manifest.json": b"j", "manifest.sig": b"s", "model.tflite": b"t"}
    tiers = ({"a": files, "b": files}, node_tiers(grid, cfg, nodes))
    rows, _ = deploy_bundle(
        grid, cfg, files, simulation_store_root=tmp_path,
        simulation_trusted_key=tmp_path / "key.pem", nodes=nodes, spec={}, tiers=tiers,
    )  # fmt: skip
    assert asked.count(m.INFO) == 3  # once per node, by the tier lookup
    got = [row.accuracy for row in sorted(rows, key=lambda r: r.partition_id)]
    assert got == [1.0, 0.0, 1.0]  # tflite node: its file; ort: not tflite's; unsaid: all
