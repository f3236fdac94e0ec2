"""Malformed replies of every message type: the run goes on and the node is recorded.

Hypothesis builds replies with missing, extra and mistyped records, metrics and arrays (wrong
keys, shapes, dtypes, non-finite values, broadcastable tricks) and error replies; every one
must end as that node's failure or rejection with a reason, never as an exception. Over 1,000
replies across train, deploy, query.info, query.logits, evaluate and query.profile.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedge.core import messages as m
from fedge.core.codec import Codec, encode
from fedge.core.config import RunConfig
from fedge.pipeline.rundir.checkpoint import TrainingLog
from fedge.server.deploy import _client_row
from fedge.server.nodes import Nodes
from fedge.server.replies import partition_of
from fedge.server.strategy import make_strategy
from fedge.server.tiers import _checked, _device_class
from fedge.server.training_loop import RoundLoop, train_round
from tests.flower_local import LocalGrid, set_task_identity

REF = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}
GOOD_METRICS = {m.NUM_EXAMPLES: 10, m.PARTITION_ID: 0, m.TRAIN_LOSS: 0.5, m.UNIT_WEIGHT: 1}
KEYS = st.sampled_from(
    [m.NUM_EXAMPLES, m.PARTITION_ID, m.TRAIN_LOSS, m.UNIT_WEIGHT, m.ACCURACY, m.INSTALLED,
     m.LATENCY_US_P50, m.DP_EPSILON, "x", "w", "b", "logits", ""]
)  # fmt: skip
VALUES = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(-5, 5), max_size=3),
    st.lists(st.floats(-1e3, 1e3), max_size=3),
)
DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.int8, np.uint8, np.bool_])
ARRAYS = hnp.arrays(
    DTYPES, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4), elements=None
)
CONFIG_VALUES = st.one_of(st.text(max_size=40), st.integers(-5, 5), st.binary(max_size=8))


@st.composite
def contents(draw: st.DrawFn) -> RecordDict:
    """A reply's content: any of the records a reply may hold, each possibly malformed."""
    content = RecordDict()
    if draw(st.booleans()):
        metrics = draw(st.dictionaries(KEYS, VALUES, max_size=6))
        if draw(st.booleans()):  # mostly right, one field off
            metrics = {**GOOD_METRICS, **metrics}
        content[m.METRICS] = MetricRecord(metrics)
    if draw(st.booleans()):
        arrays = draw(st.dictionaries(st.sampled_from(["w", "b", "w|q", "w|s", "logits", "x"]),
                                      ARRAYS, max_size=4))  # fmt: skip
        if draw(st.booleans()):
            arrays = {**{k: v + 0.1 for k, v in REF.items()}, **arrays}
        content[draw(st.sampled_from([m.ARRAYS, m.LOGITS_RECORD, "other"]))] = ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
        )
    if draw(st.booleans()):
        status = draw(st.dictionaries(st.sampled_from([m.REASON, m.NODE_DEVICE_CLASS, "x"]),
                                      CONFIG_VALUES, max_size=3))  # fmt: skip
        content[m.STATUS] = ConfigRecord(status)
    return content


def reply_to(msg: Message, content: RecordDict | None) -> Message:
    """A reply to `msg`: the content, or an error when None."""
    if content is None:
        return Message(Error(code=0, reason="\x1b[31mforged\nline"), reply_to=msg)
    return Message(content, reply_to=msg)


class HostileGrid(LocalGrid):
    """Nodes 1 and 2 answer correctly; node 3 answers with whatever the test gives it."""

    def __init__(
        self, hostile: RecordDict | None, encoded: dict[str, np.ndarray], extra: dict
    ) -> None:
        set_task_identity()
        self.contexts = {
            n: Context(run_id=1, node_id=n, node_config={}, state=RecordDict(), run_config={})
            for n in (1, 2, 3)
        }
        self.hostile, self.encoded, self.extra, self.sent = hostile, encoded, extra, []

    def send_and_receive(self, messages, *, timeout=None):  # noqa: D102
        messages = list(messages)
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = msg.object_id
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if node == 3:
                replies.append(reply_to(msg, self.hostile))
                continue
            arrays = ArrayRecord(
                {k: Array(np.ascontiguousarray(v)) for k, v in self.encoded.items()}
            )
            metrics = MetricRecord({**GOOD_METRICS, **self.extra, m.PARTITION_ID: node - 1})
            replies.append(
                Message(RecordDict({m.ARRAYS: arrays, m.METRICS: metrics}), reply_to=msg)
            )
        return replies


CODECS = st.sampled_from(
    [{}, {"update_compression": "int8"}, {"update_compression": "topk+int8"},
     {"update_compression": "topk"}, {"downlink_compression": "int8"},
     {"dp": "local"}]
)  # fmt: skip


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=st.one_of(st.none(), contents()), changes=CODECS)
def test_a_hostile_train_reply_fails_its_node_and_the_round_goes_on(content, changes):
    cfg = RunConfig(clients=3, min_clients=1, norm_outlier_factor=0.0, **changes)
    update = {k: v + 0.1 for k, v in REF.items()}
    codec = Codec(cfg.update_compression)
    good = encode({k: update[k] - REF[k] for k in REF}, codec, np.random.default_rng(0))
    if cfg.update_compression == "none":
        good = update
    local_dp = {m.DP_EPSILON: 1.0, m.DP_NOISE: 1.0} if cfg.dp == "local" else {}
    grid = HostileGrid(content, good, local_dp)
    arrays = ArrayRecord({k: Array(v) for k, v in REF.items()})
    out, loop = TrainingLog(), RoundLoop(Nodes())
    new, row = train_round(grid, cfg, make_strategy(cfg), 1, arrays, {}, out, loop)
    assert row["clients_ok"] >= 2  # the two good nodes always count
    weights = {k: v.numpy() for k, v in new.items()}
    assert all(np.isfinite(v).all() and v.shape == REF[k].shape for k, v in weights.items())
    recorded = {f["node_id"] for f in row["clients_failed"]} | {r["node_id"] for r in out.rejected}
    if row["clients_ok"] == 2:  # node 3 was refused: it is recorded, with a reason
        assert 3 in recorded
        reasons = [
            r["reason"] for r in [*row["clients_failed"], *out.rejected] if r["node_id"] == 3
        ]
        assert all(isinstance(r, str) and r for r in reasons)


def _message(kind: str) -> Message:
    set_task_identity()
    return Message(RecordDict({m.CONFIG: ConfigRecord()}), message_type=kind, dst_node_id=3)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=st.one_of(st.none(), contents()))
def test_a_hostile_deploy_reply_is_a_client_row_not_a_crash(content):
    row = _client_row(reply_to(_message(m.DEPLOY), content), 2)
    assert isinstance(row.installed, bool) and isinstance(row.reason, str) and row.reason
    assert row.reason.isprintable()  # no terminal escapes or forged lines in the report
    if row.installed:
        assert row.partition_id is not None and row.partition_id >= 0
        assert row.accuracy is None or math.isfinite(row.accuracy)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=st.one_of(st.none(), contents()))
def test_hostile_info_and_evaluate_replies_name_a_valid_partition_or_none(content):
    reply = reply_to(_message(m.INFO), content)
    partition = partition_of(reply)
    assert partition is None or (isinstance(partition, int) and 0 <= partition <= 1_000_000)
    device_class = _device_class(reply)
    assert isinstance(device_class, str) and device_class.isprintable()


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(content=st.one_of(st.none(), contents()))
def test_a_hostile_logits_reply_is_a_failure_with_its_reason(content):
    from fedge.server.ensemble import _bad_reply

    reply = reply_to(_message(m.LOGITS), content)
    reason = _bad_reply(reply, (4, 10))
    assert reason is None or isinstance(reason, str)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=st.text(max_size=200))
def test_a_hostile_profile_counts_as_none(text):
    assert _checked(text, 3) is None  # no random text is a profile, and none raises


def test_replies_without_their_metrics_are_refused_with_the_reason():
    from fedge.server.ensemble import _bad_reply

    empty = RecordDict({m.STATUS: ConfigRecord({m.REASON: "installed"})})
    row = _client_row(reply_to(_message(m.DEPLOY), empty), 4)
    assert not row.installed and row.partition_id == 4 and "no 'metrics' record" in row.reason
    info = reply_to(_message(m.INFO), RecordDict())
    assert partition_of(info) is None and _device_class(info) == ""
    half = MetricRecord({m.PARTITION_ID: 0.5})
    assert partition_of(reply_to(_message(m.INFO), RecordDict({m.METRICS: half}))) is None
    assert _bad_reply(reply_to(_message(m.LOGITS), RecordDict()), (4, 10)) == (
        "malformed reply: no 'logits' array record"
    )


RAY_REASON = (
    "<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()"
    "\x1b[39m (pid=15340, ip=192.0.2.2, actor_id=d4f4bbffda0d, repr=<flwr.simulation.ray_transport"
    ".ray_actor.ClientAppActor object at 0x7f4fb353a350>)\n"
    + '  File "x.py", line 1\n'
    * 8
    + "ValueError: secagg: a weighted value 0.585 is outside secagg-clip 0.5\n\nThe above "
    "exception was the direct cause of the following exception:\n\n"
    "flwr.clientapp.client_app.ClientAppException: \nException ClientAppException occurred. "
    "Message: secagg: a weighted value 0.585 is outside secagg-clip 0.5'>"
)


@pytest.mark.parametrize(
    ("reason", "shown"),
    [
        (RAY_REASON, "ValueError: secagg: a weighted value 0.585 is outside secagg-clip 0.5"),
        ("no such partition", "no such partition"),
        ("\x1b[31mforged\nline", "?[31mforged?line"),
    ],
)
def test_a_node_error_is_reported_by_what_was_raised_not_by_rays_actor(reason, shown):
    from fedge.server.replies import error_text

    assert error_text(reason) == shown


def test_a_deploy_reply_with_an_empty_reason_still_says_one():
    # found by hypothesis: installed 0 with reason "" left an empty reason in the report
    from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

    from fedge.core import messages as m
    from fedge.server.deploy import _client_row

    content = RecordDict(
        {
            m.METRICS: MetricRecord({m.NUM_EXAMPLES: 0, m.PARTITION_ID: 0, m.INSTALLED: 0}),
            m.STATUS: ConfigRecord({m.REASON: ""}),
        }
    )
    reply = Message(content, dst_node_id=1, message_type="query")
    row = _client_row(reply, 0)
    assert row.installed is False and row.reason == "the node gave no reason"
