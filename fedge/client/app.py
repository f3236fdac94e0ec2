"""The ClientApp: thin handlers for train, evaluate and the queries (load -> call -> wrap)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.clientapp.typing import ClientAppCallable
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from fedge.client import deployment, student
from fedge.client.local_round import Fit, train_round
from fedge.client.node import deploy_target, is_simulated
from fedge.client.secagg import key_stage as secagg_key_stage
from fedge.client.secagg import secagg_mod
from fedge.client.update_codec import update_codec_mod
from fedge.core import messages as m
from fedge.core import training
from fedge.core.augment import teacher_view
from fedge.core.config import RunConfig
from fedge.core.models import build_teacher
from fedge.core.partition import ClientData, build_federation, client_data, node_data
from fedge.core.records import (
    as_int,
    record_to_config,
    record_to_spec,
    record_to_weights,
    weights_to_record,
)
from fedge.privacy import dp_sgd

app = ClientApp()


def _clip_when_asked(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Central DP with client-side clipping: Flower's fixed/adaptive clipping mod, when asked.

    The server's DP wrapper puts the clipping norm in the train config; without it (no DP, or
    server-side clipping) the update goes out as trained.
    """
    config = msg.content.config_records.get(m.CONFIG)
    if config is None or KEY_CLIPPING_NORM not in config:
        return call_next(msg, context)
    if config.get("dp-clip-mode") == "adaptive":  # also reports whether it had to clip
        return adaptiveclipping_mod(msg, context, call_next)
    return fixedclipping_mod(msg, context, call_next)


@app.train(mods=[secagg_mod, update_codec_mod, _clip_when_asked])
def train(msg: Message, context: Context) -> Message:
    """Train the received global model on this client's private partition."""
    torch.set_num_threads(1)
    config = msg.content.config_records[m.CONFIG]
    cfg = record_to_config(config)
    pid, data = _local_data(cfg, context, config)
    model = _model(cfg, msg)
    server_round = as_int(config.get("server-round", 0))
    schedule = dp_sgd.plan(len(data.train), cfg) if cfg.dp == "local" else None
    update = train_round(
        cfg,
        model,
        data.train.y,
        _teacher_fit(cfg, model, data.train.x, schedule),
        partition_id=pid,
        server_round=server_round,
        num_classes=record_to_spec(config)[1],
    )
    if cfg.teacher_mode == "ensemble":  # kept on the node for the server's logits query
        context.state[m.STATE_MODEL] = weights_to_record(update.weights)
        context.state[m.STATE_ROUND] = ConfigRecord({"round": server_round, m.PARTITION_ID: pid})
    if schedule is None:
        return update.reply(msg)
    epsilon = schedule.epsilon_after(server_round, cfg)
    return update.reply(msg, **{m.DP_EPSILON: epsilon, m.DP_NOISE: schedule.noise})


def _teacher_fit(
    cfg: RunConfig, model: torch.nn.Module, x: np.ndarray, schedule: dp_sgd.LocalPlan | None
) -> Fit:
    """Local training of a teacher round: DP-SGD under local DP, else SGD (FedProx's term)."""

    def fit(labels: np.ndarray, seed: int) -> training.TrainResult:
        if schedule is None:
            mu = cfg.proximal_mu if cfg.strategy == "fedprox" else 0.0
            return training.train(
                model, x, labels, epochs=cfg.local_epochs, lr=cfg.lr,
                batch_size=cfg.batch_size, seed=seed, proximal_mu=mu,
                sample_budget=cfg.local_sample_budget,
                view=teacher_view(cfg.augment),
            )  # fmt: skip
        loss = dp_sgd.dp_sgd_train(
            model, x, labels, noise=schedule.noise, epochs=cfg.local_epochs, lr=cfg.lr,
            batch_size=cfg.batch_size, clip=cfg.dp_clip, seed=seed,
        )  # fmt: skip
        return training.TrainResult(loss=loss, num_examples=len(labels))

    return fit


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received model on this client's local test split."""
    torch.set_num_threads(1)
    cfg = record_to_config(msg.content.config_records[m.CONFIG])
    pid, data = _local_data(cfg, context, msg.content.config_records[m.CONFIG])
    model = _model(cfg, msg)
    loss, accuracy = training.evaluate(model, data.test.x, data.test.y)
    student.keep_teacher_logits(cfg, model, msg, data, context)
    metrics = MetricRecord(
        {m.NUM_EXAMPLES: len(data.test), m.LOSS: loss, m.ACCURACY: accuracy, m.PARTITION_ID: pid}
    )
    return Message(RecordDict({m.METRICS: metrics}), reply_to=msg)


def _clip_student_when_asked(
    msg: Message, context: Context, call_next: ClientAppCallable
) -> Message:
    """_clip_when_asked for a student round, whose second config record Flower's mods refuse.

    The mod sees the message without the rounds' settings (`federate`), which are put back
    before the handler runs.
    """
    config = msg.content.config_records.get(m.CONFIG)
    if config is None or KEY_CLIPPING_NORM not in config or m.FEDERATE not in msg.content:
        return call_next(msg, context)
    federate = msg.content.config_records[m.FEDERATE]
    del msg.content[m.FEDERATE]

    def handler(seen: Message, ctx: Context) -> Message:
        seen.content[m.FEDERATE] = federate
        return call_next(seen, ctx)

    try:
        return _clip_when_asked(msg, context, handler)
    finally:
        msg.content[m.FEDERATE] = federate  # also when the mod refused the message


@app.train(m.STUDENT_ACTION, mods=[secagg_mod, update_codec_mod, _clip_student_when_asked])
def train_student(msg: Message, context: Context) -> Message:
    """Federated distillation: train the received student on this client's private partition."""
    torch.set_num_threads(1)
    cfg = record_to_config(msg.content.config_records[m.CONFIG])
    pid, data = _local_data(cfg, context, msg.content.config_records[m.CONFIG])
    return student.train_student(cfg, pid, data, msg, context)


@app.query(m.SECAGG_ACTION)
def secagg(msg: Message, context: Context) -> Message:
    """Secure aggregation's key stages (fedge.client.secagg)."""
    return secagg_key_stage(msg, context)


@app.query(m.INFO_ACTION)
def info(msg: Message, context: Context) -> Message:
    """Which partition this node holds (client sampling), its device-class and its runtime."""
    pid = as_int(context.node_config[m.NODE_PARTITION_ID])
    device_class = str(context.node_config.get(m.NODE_DEVICE_CLASS, ""))  # device tiers
    runtime = str(context.node_config.get(m.NODE_RUNTIME, "onnx"))  # which artifact it runs
    content = RecordDict(
        {
            m.METRICS: MetricRecord({m.PARTITION_ID: pid}),
            m.STATUS: ConfigRecord({m.NODE_DEVICE_CLASS: device_class, m.NODE_RUNTIME: runtime}),
        }
    )
    return Message(content, reply_to=msg)


@app.query(m.LOGITS_ACTION)
def logits(msg: Message, context: Context) -> Message:
    """Ensemble distillation: this node's model of the asked round, run on the sent public inputs.

    Only logits leave the node: no data, no weights. A node without that round's model (it did
    not train in it, or restarted since) raises, and the server goes on without it.
    """
    torch.set_num_threads(1)
    config = msg.content.config_records[m.CONFIG]
    cfg = record_to_config(config)
    wanted = as_int(config["server-round"])
    stored = context.state.config_records.get(m.STATE_ROUND)
    if stored is None or as_int(stored["round"]) != wanted:
        have = "none" if stored is None else f"round {as_int(stored['round'])}"
        raise LookupError(f"no local model from round {wanted} on this node (it has {have})")
    prep, num_classes = record_to_spec(config)
    model = build_teacher(prep.input_shape, num_classes, cfg.seed, cfg.teacher)
    training.set_weights(model, record_to_weights(context.state.array_records[m.STATE_MODEL]))
    x = msg.content.array_records[m.INPUTS]["x"].numpy()
    out = training.predict_logits(model, x)
    metrics = MetricRecord({m.PARTITION_ID: as_int(stored[m.PARTITION_ID]), m.NUM_EXAMPLES: len(x)})
    arrays = ArrayRecord({"logits": Array(np.ascontiguousarray(out, dtype=np.float32))})
    return Message(RecordDict({m.LOGITS_RECORD: arrays, m.METRICS: metrics}), reply_to=msg)


@app.query(m.DEPLOY_ACTION)
def deploy(msg: Message, context: Context) -> Message:
    """Verify and install a signed bundle, then evaluate it locally with the device Predictor.

    The node's own node config names its store and its trusted key; a key sent with the
    bundle counts only in simulation (fedge.client.node). Verification and the device-model
    check run before the bundle becomes current, as `fedge install` runs them; a refused
    bundle is not installed and the reply says which check failed. The version already
    installed, delivered again (a resumed server run resends it), is a success. The node's
    data is loaded after the install, so a data problem does not block it.
    """
    config = msg.content.config_records[m.CONFIG]
    pid = as_int(context.node_config[m.NODE_PARTITION_ID])
    target = deploy_target(context.node_config, config, pid, simulated=is_simulated())
    timer = deployment.install_timer(record_to_config(config).install_timing)
    verdict = deployment.install_then_evaluate(
        deployment.bundle_files(config),
        target,
        pid,
        lambda: _raw_test_data(context, config),
        timer=timer,
    )
    return verdict.reply(msg)


def _raw_test_data(context: Context, config: ConfigRecord) -> tuple[np.ndarray, np.ndarray]:
    """The node's test split as the device measures it (raw, before preprocessing)."""
    _, data = _local_data(record_to_config(config), context, config)
    prep, _ = record_to_spec(config)
    return prep.invert(data.test.x), data.test.y


@app.query(m.PROFILE_ACTION)
def profile(msg: Message, context: Context) -> Message:
    """Device tiers: the device profile this node's config points at (`fedge profile` wrote it).

    The server checks it; a node without one answers with an empty profile and its tier's
    latency is judged on the server. An unreadable file is an error reply naming it.
    """
    path = context.node_config.get(m.NODE_DEVICE_PROFILE)
    text = ""
    if path:
        with Path(str(path)).open("rb") as file:  # a path relative to the SuperNode's directory
            raw = file.read(m.MAX_PROFILE_BYTES + 1)
        if len(raw) > m.MAX_PROFILE_BYTES:
            raise ValueError(f"device-profile {path} is over {m.MAX_PROFILE_BYTES} bytes")
        text = raw.decode("utf-8", errors="replace")
    return Message(RecordDict({m.STATUS: ConfigRecord({m.PROFILE_JSON: text})}), reply_to=msg)


def _local_data(cfg: RunConfig, context: Context, config: ConfigRecord) -> tuple[int, ClientData]:
    """The node's data: its own file when node_config names one, else its simulated partition."""
    pid = as_int(context.node_config[m.NODE_PARTITION_ID])
    if m.NODE_DATA_FILE in context.node_config:
        prep, num_classes = record_to_spec(config)
        return pid, node_data(Path(str(context.node_config[m.NODE_DATA_FILE])), prep, num_classes)
    num_partitions = as_int(context.node_config.get(m.NODE_NUM_PARTITIONS, cfg.clients))
    if num_partitions != cfg.clients:
        raise ValueError(
            f"this federation has {num_partitions} nodes but the run expects clients={cfg.clients}"
        )
    return pid, client_data(build_federation(cfg), pid, cfg)


def _model(cfg: RunConfig, msg: Message) -> torch.nn.Module:
    prep, num_classes = record_to_spec(msg.content.config_records[m.CONFIG])
    model = build_teacher(prep.input_shape, num_classes, cfg.seed, cfg.teacher)
    training.set_weights(model, record_to_weights(msg.content.array_records[m.ARRAYS]))
    return model
