"""The stage chain as a whole: reproducible bytes, a shared prefix cache, a smaller minified file."""

import hashlib
import json

import numpy as np
import onnx
import pytest
import torch

from fedge.compression.export import ExportConfig, export_onnx
from fedge.compression.minify import MinifyConfig, minify
from fedge.compression.onnx_teacher import OnnxTeacher
from fedge.core.config import RunConfig
from fedge.core.federate import FederateConfig
from fedge.core.ort import make_session
from fedge.pipeline.chain.stages import STAGES, CompressionConfig, Inputs, Stage, compress

QUICK = RunConfig(  # int8 of so short a distillation falls back to QAT: a short one too
    student="small-fast",
    kd_source="public",
    kd_epochs=6,
    finetune_epochs=2,
    quant_mode="static",
    qat_epochs=4,
)


def _inputs(teacher, fed):
    prep = fed.dataset.preprocessing
    onnx_teacher = OnnxTeacher(export_onnx(teacher, prep.input_shape, ExportConfig()))
    server = fed.server
    return Inputs(onnx_teacher, server.public_pool, server.val, server.test, prep, 10)


@pytest.fixture(scope="module")
def quick(teacher, digits_fed):
    """The inputs and a cache holding every stage of the QUICK chain on them (made once)."""
    inputs, cache = _inputs(teacher, digits_fed), {}
    compress(CompressionConfig.from_run(QUICK), inputs, cache)
    return inputs, cache


def test_the_same_settings_give_the_same_bytes_whatever_the_thread_count(teacher, digits_fed):
    inputs = _inputs(teacher, digits_fed)
    config = CompressionConfig.from_run(QUICK.replace(prune_ratio=0.3))
    first = compress(config, inputs)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        second = compress(config, _inputs(teacher, digits_fed))
        assert torch.get_num_threads() == 2  # the caller's setting is restored
    finally:
        torch.set_num_threads(before)
    assert (
        hashlib.sha256(first.student_bytes).digest()
        == hashlib.sha256(second.student_bytes).digest()
    )
    assert first.stages == second.stages


def test_a_cache_shares_every_common_prefix(teacher, digits_fed):
    inputs = _inputs(teacher, digits_fed)
    calls: list[str] = []

    def counted(stage: Stage) -> Stage:
        def apply(work, config, inputs):
            calls.append(stage.name)
            return stage.apply(work, config, inputs)

        return Stage(stage.name, stage.config, apply)

    counting = tuple(counted(s) for s in STAGES)
    cache: dict = {}
    compress(CompressionConfig.from_run(QUICK), inputs, cache, counting)
    compress(
        CompressionConfig.from_run(QUICK.replace(quant_mode="dynamic")), inputs, cache, counting
    )
    names = [s.name for s in STAGES]
    assert calls == names + names[names.index("quantize") :]  # distil, prune, export: once


def test_stages_with_an_onnx_model_report_its_resources(quick):
    inputs, cache = quick
    stages = max(cache.values(), key=lambda work: len(work.rows)).rows
    onnx_stages = [s for s in stages if s.resources is not None]
    assert onnx_stages[0].name == "onnx-fp32" and onnx_stages[0].resources.macs > 0
    assert {s.name for s in onnx_stages} <= {"onnx-fp32", "int8", "int8-qat"}
    assert all(s.resources.flash_bytes == s.bytes for s in onnx_stages)
    assert {s.name for s in stages} - {s.name for s in onnx_stages} == {"distilled", "pruned"}


def test_minify_keeps_outputs_bit_identical_and_the_device_names(quick):
    outcome = compress(CompressionConfig.from_run(QUICK), *quick)
    small = onnx.load_from_string(outcome.student_bytes)
    assert [i.name for i in small.graph.input] == ["input"]
    assert [o.name for o in small.graph.output] == ["logits", "probabilities", "label"]
    assert not small.graph.value_info
    assert max(len(t.name) for t in small.graph.initializer) <= 2
    unminified = minify(outcome.student_bytes, MinifyConfig(enabled=False), np.zeros((1,)))
    assert unminified == outcome.student_bytes  # disabled: unchanged


def test_minify_shrinks_a_model_with_identical_outputs_and_catches_a_change(teacher, digits_fed):
    from fedge.compression.minify import _check_same_outputs

    prep = digits_fed.dataset.preprocessing
    model = export_onnx(teacher, prep.input_shape, ExportConfig())
    x = digits_fed.server.val.x[:20]
    small = minify(model, MinifyConfig(), x)
    before = make_session(model).run(None, {"input": x})
    after = make_session(small).run(None, {"input": x})
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    assert len(small) < len(model)
    other = export_onnx(
        torch.nn.Sequential(teacher, torch.nn.Tanh()), prep.input_shape, ExportConfig()
    )
    with pytest.raises(RuntimeError, match="differ"):
        _check_same_outputs(model, other, x)


def test_a_compression_config_round_trips_through_json_and_names_a_bad_field():
    config = CompressionConfig.from_run(QUICK.replace(prune_ratio=0.3, kd_labels="soft"))
    text = json.dumps(config.to_json())
    assert CompressionConfig.from_json(json.loads(text)) == config
    broken = json.loads(text)
    broken["distill"]["kd"]["labels"] = 3
    with pytest.raises(ValueError, match=r"distill\.kd\.labels is 3"):
        CompressionConfig.from_json(broken)
    broken = json.loads(text)
    broken["quantize"]["bits"] = 4
    with pytest.raises(ValueError, match=r"quantize has unknown keys \['bits'\]"):
        CompressionConfig.from_json(broken)
    broken = json.loads(text)
    del broken["qat"]
    with pytest.raises(ValueError, match="lacks 'qat'"):
        CompressionConfig.from_json(broken)


def test_the_federated_rounds_settings_reach_clients_as_their_own_record():
    config = FederateConfig.from_run(QUICK.replace(student="deep-tiny", kd_source="both"))
    assert FederateConfig.from_wire(config.to_wire()) == config
    assert config.rounds == QUICK.student_rounds and config.student == "deep-tiny"
    assert FederateConfig.from_run(QUICK.replace(kd_source="public")).rounds == 0
    with pytest.raises(ValueError, match="federate config.lr"):
        FederateConfig.from_wire({**config.to_wire(), "lr": "fast"})


def _trainer(change):
    """A federated trainer that applies `change` to the student and reports one round."""
    from fedge.pipeline.outputs.rows import StudentRounds

    def train(model, config):
        with torch.no_grad():
            change(model)
        return model, StudentRounds(rounds=[], rejected=[], train_bytes=123)

    return train


def _zeroed(model):
    for p in model.parameters():
        p.zero_()


@pytest.mark.parametrize(("change", "kept"), [(_zeroed, False), (lambda m: None, True)])
def test_student_rounds_that_lower_validation_are_discarded(quick, change, kept):
    import dataclasses

    base, shared = quick
    run = QUICK.replace(kd_source="both", student_rounds=1)
    before = compress(CompressionConfig.from_run(QUICK), base, shared)
    inputs = dataclasses.replace(base, federated=_trainer(change))
    # distillation and pruning as QUICK made them; from the federated rounds on, this trainer's
    upstream = CompressionConfig.from_run(run).through("prune")
    cache = {key: work for key, work in shared.items() if key == upstream[: len(key)]}
    assert len(cache) == 2
    after = compress(CompressionConfig.from_run(run), inputs, cache)
    rounds = after.federated
    assert rounds is not None and rounds.kept is kept and rounds.train_bytes == 123
    assert rounds.validation_before is not None and rounds.validation_after is not None
    assert (rounds.validation_after < rounds.validation_before) is not kept
    assert ("federated" in [s.name for s in after.stages]) is kept
    if not kept:  # the student ships as public distillation made it
        assert after.student_bytes == before.student_bytes
