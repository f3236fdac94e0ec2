"""Update validation: each rule rejects its bad update and lets a good one through."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, MetricRecord, RecordDict

from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.server.validation import validate_updates
from tests.flower_local import set_task_identity

REF = {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)}


CFG = RunConfig()


def reply(weights=None, *, partition=0, examples=10, arrays=True, **metrics):
    set_task_identity()
    weights = weights if weights is not None else {k: v + 0.1 for k, v in REF.items()}
    declared = {m.NUM_EXAMPLES: examples, m.PARTITION_ID: partition, m.TRAIN_LOSS: 0.5}
    record = {**declared, m.UNIT_WEIGHT: 1, **metrics}
    content = {m.METRICS: MetricRecord({k: v for k, v in record.items() if v is not None})}
    if arrays:
        content[m.ARRAYS] = ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in weights.items()}
        )
    return Message(content=RecordDict(content), dst_node_id=1, message_type="train")


def good(scale=0.1):
    return {k: v + scale for k, v in REF.items()}


def with_bad(key, value):
    weights = good()
    weights[key] = value
    return weights


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (reply(with_bad("w", np.full((3, 2), np.nan, np.float32))), "weight 'w' contains NaN"),
        (reply(with_bad("b", np.array([np.inf, 0], np.float32))), "weight 'b' contains Inf"),
        (reply({"w": good()["w"]}), "wrong keys: missing ['b'], unexpected []"),
        (reply({**good(), "extra": np.zeros(1, np.float32)}), "unexpected ['extra']"),
        (
            reply(with_bad("w", np.zeros((2, 3), np.float32))),
            "weight 'w' has shape (2, 3), expected (3, 2)",
        ),
        (
            reply(with_bad("w", np.zeros((3, 2), np.float64))),
            "weight 'w' has dtype float64, expected float32",
        ),
        (reply(arrays=False), "no 'arrays' array record"),
        (reply(examples=0), "'num-examples' is 0, not an integer in [1, "),
        (reply(partition=1.5), "'partition-id' is 1.5, not an integer in [0, 1000000]"),
        (reply(partition=-1), "'partition-id' is -1, not an integer in [0, 1000000]"),
        (reply(**{m.TRAIN_LOSS: None}), "'train-loss' is None, not a number"),
        (reply(**{m.TRAIN_LOSS: float("nan")}), "'train-loss' is nan, not a finite number"),
        (reply(**{m.UNIT_WEIGHT: 7}), "'unit-weight' is 7, not an integer in [1, 1]"),
    ],
)
def test_each_structural_rule_rejects_its_bad_update_and_keeps_the_good_ones(bad, reason):
    replies = {1: reply(partition=1), 2: bad, 3: reply(partition=3)}
    accepted, rejected = validate_updates(replies, REF, norm_outlier_factor=10, cfg=CFG)
    assert [c.node_id for c in accepted] == [1, 3]
    assert len(rejected) == 1 and rejected[0]["node_id"] == 2
    assert reason in rejected[0]["reason"]


def test_norm_outlier_rule_rejects_a_huge_update_and_can_be_switched_off():
    replies = {n: reply(good(0.1 + 0.01 * n), partition=n) for n in range(5)}
    replies[9] = reply(good(50.0), partition=9)
    accepted, rejected = validate_updates(replies, REF, norm_outlier_factor=10, cfg=CFG)
    assert [c.partition_id for c in accepted] == [0, 1, 2, 3, 4]
    assert rejected[0]["partition_id"] == 9 and "norm-outlier-factor" in rejected[0]["reason"]
    accepted, rejected = validate_updates(replies, REF, norm_outlier_factor=0, cfg=CFG)
    assert len(accepted) == 6 and rejected == []


def test_accepted_updates_are_sorted_by_partition_whatever_the_arrival_order():
    replies = {7: reply(partition=2), 5: reply(partition=0), 6: reply(partition=1)}
    accepted, _ = validate_updates(replies, REF, norm_outlier_factor=10, cfg=CFG)
    assert [c.partition_id for c in accepted] == [0, 1, 2]


def test_an_extra_metric_is_dropped_so_that_every_reply_has_the_same_keys():
    replies = {1: reply(partition=1), 2: reply(partition=2, **{"smuggled": 3.0})}
    accepted, rejected = validate_updates(replies, REF, norm_outlier_factor=10, cfg=CFG)
    assert not rejected and len(accepted) == 2
    keys = [set(c.reply.content.metric_records[m.METRICS]) for c in accepted]
    assert keys[0] == keys[1] == {m.NUM_EXAMPLES, m.PARTITION_ID, m.TRAIN_LOSS, m.UNIT_WEIGHT}
