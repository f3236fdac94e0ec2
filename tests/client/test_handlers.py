"""The ClientApp handlers, called directly with hand-built messages."""

from dataclasses import replace

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from fedge.client.app import app
from fedge.client.node import SIMULATION_ENV, simulated_store
from fedge.client.runtime.store import ModelStore
from fedge.compression.bundle import generate_keypair, load_private_key, make_bundle
from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.data import load_dataset
from fedge.core.federate import FederateConfig
from fedge.core.models import build_teacher
from fedge.core.records import config_to_record, model_spec, record_to_weights, weights_to_record
from fedge.core.training import client_seed, get_weights, set_weights, train
from tests.client.conftest import bundle_config, device_model
from tests.flower_local import node_context, set_task_identity

CFG = RunConfig(clients=4, partition="iid", local_epochs=1, install_timing="once")
SPEC = model_spec(load_dataset("digits").preprocessing, 10)


def _message(content: RecordDict, message_type: str) -> Message:
    set_task_identity()
    return Message(content=content, message_type=message_type, dst_node_id=7)


def _train_reply(cfg: RunConfig, pid: int):
    weights = get_weights(build_teacher((1, 8, 8), 10, seed=0))
    msg = _message(
        RecordDict(
            {
                m.ARRAYS: weights_to_record(weights),
                m.CONFIG: config_to_record(cfg, **SPEC, **{"server-round": 1}),
            }
        ),
        m.TRAIN,
    )
    return weights, app(msg, node_context(7, partition_id=pid, num_partitions=cfg.clients))


def _trained(cfg: RunConfig, pid: int):
    """The start weights and the weights the client sent back, as numpy."""
    weights, reply = _train_reply(cfg, pid)
    return weights, {k: a.numpy() for k, a in reply.content.array_records[m.ARRAYS].items()}


def test_train_returns_updated_weights_with_the_same_keys():
    weights, reply = _train_reply(CFG, pid=2)
    arrays = reply.content.array_records[m.ARRAYS]
    metrics = reply.content.metric_records[m.METRICS]
    assert list(arrays.keys()) == list(weights.keys())
    assert metrics[m.PARTITION_ID] == 2 and metrics[m.NUM_EXAMPLES] > 0
    assert not np.allclose(arrays["classifier.2.weight"].numpy(), weights["classifier.2.weight"])


def test_evaluate_reports_local_accuracy():
    """The handler's accuracy equals evaluating the same model on that client's test split."""
    from fedge.core.partition import build_federation, client_data
    from fedge.core.training import evaluate, train

    model = build_teacher((1, 8, 8), 10, seed=0)
    fed = build_federation(CFG)
    train(model, fed.client_x, fed.client_y, epochs=1, lr=0.05, batch_size=32, seed=0)
    msg = _message(
        RecordDict(
            {
                m.ARRAYS: weights_to_record(get_weights(model)),
                m.CONFIG: config_to_record(CFG, **SPEC),
            }
        ),
        m.EVALUATE,
    )
    metrics = app(msg, node_context(7, 1, 4)).content.metric_records[m.METRICS]
    local = client_data(fed, 1, CFG).test
    loss, accuracy = evaluate(model, local.x, local.y)
    assert metrics[m.ACCURACY] == pytest.approx(accuracy) and metrics[m.LOSS] == pytest.approx(loss)
    assert metrics[m.NUM_EXAMPLES] == len(local) and accuracy > 0.5  # trained: well above chance


def _deploy_message(files: dict[str, bytes], store_root, key_path, **extra) -> Message:
    payload = {key: files[name] for name, key in m.BUNDLE_FILE_KEYS.items() if name in files}
    payload.update(
        {m.SIMULATION_STORE_ROOT: str(store_root), m.SIMULATION_TRUSTED_KEY: str(key_path)}
    )
    return _message(
        RecordDict({m.CONFIG: config_to_record(CFG, **payload, **SPEC, **extra)}), m.DEPLOY
    )


@pytest.fixture()
def signed(tmp_path):
    """(bundle files of the tiny device model, public key path, private key)."""
    private_path, public_path = generate_keypair(tmp_path / "keys")
    private = load_private_key(private_path)
    return make_bundle(device_model("tiny")[1], bundle_config(), private), public_path, private


@pytest.fixture()
def simulated(monkeypatch):
    monkeypatch.setenv(SIMULATION_ENV, "1")


def _verdict(reply) -> tuple[int, str]:
    metrics = reply.content.metric_records[m.METRICS]
    return metrics[m.INSTALLED], str(reply.content.config_records[m.STATUS][m.REASON])


def test_deploy_installs_a_verified_bundle_and_evaluates_it(tmp_path, signed, simulated):
    files, public_path, _ = signed
    reply = app(_deploy_message(files, tmp_path / "nodes", public_path), node_context(7, 3, 4))
    metrics = reply.content.metric_records[m.METRICS]
    assert metrics[m.INSTALLED] == 1 and metrics[m.PARTITION_ID] == 3
    assert 0 <= metrics[m.ACCURACY] <= 1 and metrics[m.LATENCY_US_P50] > 0
    installed = simulated_store(tmp_path / "nodes", 3) / "versions" / "1" / "model.onnx"
    assert installed.read_bytes() == files["model.onnx"]
    assert (
        installed
        == tmp_path / "nodes" / "partition-3" / "model-store" / "versions" / "1" / "model.onnx"
    )


def test_a_node_that_runs_tflite_installs_the_artifact_and_says_so(tmp_path, signed, simulated):
    pytest.importorskip("ai_edge_litert", reason="a tflite node needs the litert extra")
    from fedge.compression.tflite import to_tflite

    files, public_path, private = signed
    model = files["model.onnx"]
    raw = load_dataset("digits").x[:64].reshape(-1, 1, 8, 8).astype("float32")
    artifact = to_tflite(model, raw).tflite_bytes
    with_tflite = make_bundle(model, bundle_config(), private, {"tflite": (artifact, (1, 1, 8, 8))})
    node = node_context(7, 3, 4, runtime="tflite")
    reply = app(_deploy_message(with_tflite, tmp_path / "nodes", public_path), node)
    installed, reason = _verdict(reply)
    assert installed == 1, reason
    assert 0 <= reply.content.metric_records[m.METRICS][m.ACCURACY] <= 1
    stored = simulated_store(tmp_path / "nodes", 3) / "versions" / "1" / "model.tflite"
    assert stored.read_bytes() == artifact
    # the same node refuses a bundle that carries no model for its runtime
    reply = app(_deploy_message(files, tmp_path / "other", public_path), node)
    installed, reason = _verdict(reply)
    assert installed == 0 and "the bundle has no tflite artifact (it has: onnx)" in reason


def test_a_node_whose_runtime_is_a_typo_refuses_and_says_what_is_allowed(
    tmp_path, signed, simulated
):
    files, public_path, _ = signed
    node = node_context(7, 3, 4, runtime="tflte")
    installed, reason = _verdict(app(_deploy_message(files, tmp_path / "n", public_path), node))
    assert installed == 0 and "'runtime' is 'tflte', not one of onnx, ort, tflite" in reason


def test_install_timing_off_installs_and_evaluates_without_timing(tmp_path, signed, simulated):
    files, public_path, _ = signed
    message = _deploy_message(files, tmp_path / "nodes", public_path, **{"install-timing": "off"})
    metrics = app(message, node_context(7, 3, 4)).content.metric_records[m.METRICS]
    assert metrics[m.INSTALLED] == 1 and 0 <= metrics[m.ACCURACY] <= 1
    assert m.LATENCY_US_P50 not in metrics and m.ONNX_US_P50 not in metrics  # not invented


def test_deploy_refuses_a_tampered_bundle_and_says_why(tmp_path, signed, simulated):
    files, public_path, _ = signed
    files = {**files, "model.onnx": files["model.onnx"][:-1] + b"\x00"}
    reply = app(_deploy_message(files, tmp_path / "nodes", public_path), node_context(7, 0, 4))
    installed, reason = _verdict(reply)
    assert installed == 0 and "sha256 check failed" in reason
    assert not (simulated_store(tmp_path / "nodes", 0) / "CURRENT").exists()


def test_a_re_delivered_bundle_is_an_idempotent_success(tmp_path, signed, simulated):
    files, public_path, _ = signed
    message = _deploy_message(files, tmp_path / "nodes", public_path)
    assert _verdict(app(message, node_context(7, 1, 4))) == (1, "installed")
    again = app(_deploy_message(files, tmp_path / "nodes", public_path), node_context(7, 1, 4))
    assert _verdict(again) == (1, "version 1 was already installed")


def test_outside_simulation_a_key_sent_with_the_bundle_is_never_trusted(
    tmp_path, signed, monkeypatch
):
    """What Flower gives a simulated ClientApp (partition-id, num-partitions) proves nothing."""
    monkeypatch.delenv(SIMULATION_ENV, raising=False)
    files, public_path, _ = signed
    message = _deploy_message(files, tmp_path / "nodes", public_path, **{SIMULATION_ENV: "1"})
    installed, reason = _verdict(app(message, node_context(7, 0, 4)))
    assert installed == 0 and "trust check failed" in reason and "trusts no key" in reason
    assert not (tmp_path / "nodes").exists()
    # With its own store but no key, the node records why it refused.
    context = node_context(7, 0, 4, **{"model-store": str(tmp_path / "own")})
    installed, _ = _verdict(app(_deploy_message(files, tmp_path / "nodes", public_path), context))
    assert installed == 0
    refusal = ModelStore(tmp_path / "own").status()["last_refusal"]
    assert refusal["check"] == "trust" and ModelStore(tmp_path / "own").current_version() is None


def test_a_real_node_installs_with_its_own_store_and_key(tmp_path, signed, monkeypatch):
    monkeypatch.delenv(SIMULATION_ENV, raising=False)
    files, public_path, _ = signed
    context = node_context(
        7, 0, 4, **{"model-store": str(tmp_path / "own"), "trusted-key": str(public_path)}
    )
    message = _deploy_message(files, tmp_path / "nodes", tmp_path / "elsewhere.pub")
    assert _verdict(app(message, context)) == (1, "installed")
    assert ModelStore(tmp_path / "own").current_version() == 1 and not (tmp_path / "nodes").exists()


def test_node_config_store_and_key_win_over_the_message(tmp_path, signed, simulated):
    files, public_path, _ = signed
    _, other_public = generate_keypair(tmp_path / "other")
    # The message names a key that would accept; the node trusts only its own (other) key.
    context = node_context(
        7, 0, 4, **{"model-store": str(tmp_path / "own"), "trusted-key": str(other_public)}
    )
    installed, reason = _verdict(
        app(_deploy_message(files, tmp_path / "nodes", public_path), context)
    )
    assert installed == 0 and "signature" in reason


def test_a_model_line_switch_needs_the_node_s_consent(tmp_path, signed, monkeypatch):
    monkeypatch.delenv(SIMULATION_ENV, raising=False)
    files, public_path, private = signed
    own = {"model-store": str(tmp_path / "own"), "trusted-key": str(public_path)}
    app(_deploy_message(files, tmp_path / "n", public_path), node_context(7, 0, 4, **own))
    config = bundle_config(2)
    other = make_bundle(device_model("tiny")[1], replace(config, model_id="next-run"), private)
    installed, reason = _verdict(
        app(_deploy_message(other, tmp_path / "n", public_path), node_context(7, 0, 4, **own))
    )
    assert installed == 0 and "model-line check failed" in reason
    allowed = node_context(7, 0, 4, **own, **{"allow-model-switch": True})
    assert _verdict(app(_deploy_message(other, tmp_path / "n", public_path), allowed))[0] == 1


def test_message_keys_are_not_file_names(tmp_path, signed, simulated):
    """A message that carries the files under their file names carries no bundle."""
    files, public_path, _ = signed
    payload = {
        **files,
        m.SIMULATION_STORE_ROOT: str(tmp_path),
        m.SIMULATION_TRUSTED_KEY: str(public_path),
    }
    message = _message(RecordDict({m.CONFIG: config_to_record(CFG, **payload, **SPEC)}), m.DEPLOY)
    installed, reason = _verdict(app(message, node_context(7, 0, 4)))
    assert installed == 0 and "bundle lacks model.onnx, manifest.json, manifest.sig" in reason
    assert set(m.BUNDLE_FILE_KEYS) == {
        "model.onnx",
        "manifest.json",
        "manifest.sig",
        "model.tflite",
        "model.ort",
    }
    assert not set(m.BUNDLE_FILE_KEYS.values()) & set(m.BUNDLE_FILE_KEYS)


def test_config_record_carries_no_server_only_settings():
    record = config_to_record(RunConfig(private_key="/secret/key.pem", out="/tmp/x"))
    assert "private-key" not in record and "out" not in record
    assert isinstance(record, ConfigRecord)


def test_a_node_trains_on_its_own_data_file(tmp_path):
    """A real device: node_config names an npz; the server's preprocessing is applied to it."""
    digits = load_dataset("digits")
    path = tmp_path / "device.npz"
    np.savez(
        path,
        x_train=digits.x[:60],
        y_train=digits.y[:60],
        x_test=digits.x[60:80],
        y_test=digits.y[60:80],
    )
    weights = get_weights(build_teacher((1, 8, 8), 10, seed=0))
    msg = _message(
        RecordDict({m.ARRAYS: weights_to_record(weights), m.CONFIG: config_to_record(CFG, **SPEC)}),
        m.TRAIN,
    )
    reply = app(msg, node_context(7, 0, 4, **{"data-file": str(path)}))
    assert reply.content.metric_records[m.METRICS][m.NUM_EXAMPLES] == 60
    # Differential: the same training on the file's samples after the server's preprocessing.
    expected = build_teacher((1, 8, 8), 10, seed=0)
    set_weights(expected, weights)
    train(
        expected,
        digits.preprocessing.apply(digits.x[:60]),
        digits.y[:60],
        epochs=CFG.local_epochs,
        lr=CFG.lr,
        batch_size=CFG.batch_size,
        seed=client_seed(CFG.seed, 0, 0),
    )
    got = record_to_weights(reply.content.array_records[m.ARRAYS])
    for name, value in get_weights(expected).items():
        np.testing.assert_allclose(got[name], value, atol=1e-6)


def test_a_data_file_that_does_not_fit_the_model_is_refused(tmp_path):

    from fedge.core.config import ConfigError

    path = tmp_path / "device.npz"
    np.savez(
        path,
        x_train=np.zeros((5, 10)),
        y_train=np.zeros(5, int),
        x_test=np.zeros((2, 10)),
        y_test=np.zeros(2, int),
    )
    weights = get_weights(build_teacher((1, 8, 8), 10, seed=0))
    msg = _message(
        RecordDict({m.ARRAYS: weights_to_record(weights), m.CONFIG: config_to_record(CFG, **SPEC)}),
        m.TRAIN,
    )
    with pytest.raises(
        ConfigError,
        match=r"samples of shape \(10,\) do not fit the federation's model input \(1, 8, 8\)",
    ):
        app(msg, node_context(7, 0, 4, **{"data-file": str(path)}))


def test_a_byzantine_client_sends_what_its_mode_says_and_honest_ones_do_not():
    from fedge.core.faults import byzantine_partitions

    attack = CFG.replace(byzantine_fraction=0.25, byzantine_scale=3.0)
    (pid,) = byzantine_partitions(attack)
    start, honest = _trained(CFG, pid)
    _, flipped = _trained(attack, pid)
    for key in ("classifier.2.weight", "features.0.weight"):
        np.testing.assert_allclose(
            flipped[key], start[key] - 3.0 * (honest[key] - start[key]), rtol=1e-5, atol=1e-6
        )
    _, label_flipped = _trained(attack.replace(byzantine_mode="label-flip"), pid)
    assert not np.allclose(label_flipped["classifier.2.weight"], honest["classifier.2.weight"])
    other = next(p for p in range(4) if p != pid)
    _, same = _trained(attack, other)
    _, reference = _trained(CFG, other)
    assert all(np.array_equal(same[k], reference[k]) for k in reference)


def _student_reply(cfg: RunConfig, pid: int, run: RunConfig | None = None):
    """(student start weights, what the node sent back from one student round).

    `run`: the run's settings as sent in the config record, if not `cfg` (the rounds' own
    settings go in the federate record, from `cfg`).
    """
    from fedge.core.models import build_student
    from fedge.core.training import weights_sha256

    context = node_context(7, partition_id=pid, num_partitions=cfg.clients)
    teacher = get_weights(build_teacher((1, 8, 8), 10, seed=0))
    evaluate = RecordDict(
        {m.ARRAYS: weights_to_record(teacher), m.CONFIG: config_to_record(cfg, **SPEC)}
    )
    app(_message(evaluate, m.EVALUATE), context)  # keeps the teacher's logits on the node
    start = get_weights(build_student((1, 8, 8), 10, cfg.student, seed=0))
    config = config_to_record(
        run or cfg, **SPEC, **{"server-round": 4, m.TEACHER_SHA256: weights_sha256(teacher)}
    )
    stage = ConfigRecord(FederateConfig.from_run(cfg).to_wire())  # the rounds' own settings
    content = RecordDict({m.ARRAYS: weights_to_record(start), m.CONFIG: config, m.FEDERATE: stage})
    reply = app(_message(content, m.TRAIN_STUDENT), context)
    return start, record_to_weights(reply.content.array_records[m.ARRAYS])


def test_a_student_round_trains_with_the_settings_of_its_own_record_not_the_runs():
    cfg = CFG.replace(kd_source="both", student="tiny", student_epochs=1)
    _, expected = _student_reply(cfg, 1)
    # The run's settings say "auto" and other epochs; only the federate record counts.
    _, got = _student_reply(cfg, 1, run=cfg.replace(student="auto", student_epochs=3))
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key])


def test_the_student_rounds_inject_the_same_faults_as_the_teacher_rounds():
    from fedge.core.faults import SimulatedDropoutError, byzantine_partitions, round_roles

    cfg = CFG.replace(kd_source="both", student="tiny", student_epochs=1)
    attack = cfg.replace(byzantine_fraction=0.25, byzantine_scale=3.0)
    (pid,) = byzantine_partitions(attack)
    start, honest = _student_reply(cfg, pid)
    _, flipped = _student_reply(attack, pid)
    for key in start:
        np.testing.assert_allclose(
            flipped[key], start[key] - 3.0 * (honest[key] - start[key]), rtol=1e-5, atol=1e-6
        )
    dropping = cfg.replace(dropout_fraction=0.25)
    (dropped,) = round_roles(dropping, 4).dropped
    with pytest.raises(SimulatedDropoutError, match=f"partition {dropped} dropped out of round 4"):
        _student_reply(dropping, dropped)


@pytest.mark.parametrize(
    ("node_config", "problem"),
    [
        ({"data-file": "/nonexistent/device.npz"}, "/nonexistent/device.npz"),
        ({"num-partitions": 3}, "this federation has 3 nodes but the run expects clients=4"),
    ],
)
def test_a_data_problem_does_not_block_the_install(
    tmp_path, signed, simulated, node_config, problem
):
    """The bundle is installed first; the reply says installed, and why it was not evaluated."""
    files, public_path, _ = signed
    context = node_context(7, 2, node_config.pop("num-partitions", 4), **node_config)
    reply = app(_deploy_message(files, tmp_path / "nodes", public_path), context)
    metrics = reply.content.metric_records[m.METRICS]
    installed, reason = _verdict(reply)
    assert installed == 1 and reason.startswith("installed; not evaluated: ") and problem in reason
    assert np.isnan(metrics[m.ACCURACY]) and metrics[m.NUM_EXAMPLES] == 0
    assert metrics[m.LATENCY_US_P50] > 0 and metrics["version"] == 1
    assert ModelStore(simulated_store(tmp_path / "nodes", 2)).current_version() == 1


def test_a_refused_bundle_on_a_node_without_data_reports_both(tmp_path, signed, simulated):
    files, public_path, _ = signed
    files = {**files, "model.onnx": files["model.onnx"][:-1] + b"\x00"}
    context = node_context(7, 2, 4, **{"data-file": str(tmp_path / "missing.npz")})
    installed, reason = _verdict(app(_deploy_message(files, tmp_path / "n", public_path), context))
    assert installed == 0 and reason.startswith("sha256 check failed")
    assert "; not evaluated: " in reason and "missing.npz" in reason


def test_a_deploy_verifies_the_bundle_once_in_one_session(tmp_path, signed, simulated, monkeypatch):
    """Counted, not timed: sha256 of the model (one per verification) and onnxruntime sessions.

    The device-model check's session runs in its own process and is not counted here.
    """
    import hashlib

    import onnxruntime

    files, public_path, _ = signed
    hashed, sessions = [], []
    real_sha256, real_session = hashlib.sha256, onnxruntime.InferenceSession

    def counting_sha256(data=b"", **kwargs):
        hashed.append(bytes(data) == files["model.onnx"])
        return real_sha256(data, **kwargs)

    def counting_session(*args, **kwargs):
        sessions.append(1)
        return real_session(*args, **kwargs)

    monkeypatch.setattr(hashlib, "sha256", counting_sha256)
    monkeypatch.setattr(onnxruntime, "InferenceSession", counting_session)
    reply = app(_deploy_message(files, tmp_path / "nodes", public_path), node_context(7, 1, 4))
    assert _verdict(reply) == (1, "installed")
    assert sum(hashed) == 1 and len(sessions) == 1
