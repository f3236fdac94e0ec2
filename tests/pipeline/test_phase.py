"""The compression phase without a federation: one student or tiers, saved, reused, redone."""

from __future__ import annotations

import json

import pytest

from fedge.core.profile import load_profile
from fedge.pipeline.rundir.paths import BUNDLE_DIR, COMPRESSED_FILE, TIERS_DIR, TIERS_FILE
from fedge.pipeline.ship.phase import ClientCalls, compression_phase
from fedge.pipeline.ship.search import SearchError, run_search
from fedge.pipeline.ship.tiers import TierTools, compress_tiers
from tests.pipeline.conftest import PHASE

TIERED = PHASE.replace(student="auto", tiers="small:10000,big:1000000", search_trials=3)


def params_search(*args, **kwargs):
    """The real search, with trial latency := parameter count (timing is tested elsewhere)."""
    found = run_search(*args, **kwargs)
    for trial in found.trials:
        trial.latency_us = float(trial.params)
    return found


def unused() -> ClientCalls:
    """Calls the phase must not make (a public-pool student, or a reused result)."""

    def fail():
        raise AssertionError("the phase asked the federation")

    return ClientCalls(student_rounds=fail, node_profiles=fail)


def no_profiles() -> ClientCalls:
    """Tiers whose nodes sent no profile: each judged on this machine."""
    return ClientCalls(student_rounds=lambda: pytest.fail("no rounds"), node_profiles=dict)


KNOWN = TierTools(search=params_search, time_us=lambda model, sample: 1.0)


def test_a_resumed_phase_reuses_what_it_saved_and_redoes_what_it_did_not_finish(make_job, tmp_path):
    first = compression_phase(make_job(), tmp_path, unused())
    assert first.record.student is not None and (tmp_path / COMPRESSED_FILE).is_file()
    assert first.record.choice is not None and first.record.choice.chosen.resources is not None
    assert first.record.choice.chosen.resources.flash_bytes == first.record.student.onnx_bytes
    again = compression_phase(make_job(), tmp_path, unused(), resume=True)
    assert again.files == first.files and again.record == first.record  # the same version
    (tmp_path / COMPRESSED_FILE).unlink()  # killed between the bundle and its record
    redone = compression_phase(make_job(), tmp_path, unused(), resume=True)
    assert redone.record.student is not None and first.record.student is not None
    assert redone.record.student.sha256 == first.record.student.sha256  # reproducible
    assert redone.record.student.version != first.record.student.version  # but a new bundle
    (tmp_path / COMPRESSED_FILE).write_text('{"shipped": "yes"}')  # damaged: redone, not trusted
    assert compression_phase(make_job(), tmp_path, unused(), resume=True).record.shipped is True
    assert json.loads((tmp_path / COMPRESSED_FILE).read_text())["shipped"] is True


def test_tiers_are_saved_reused_and_redone_when_their_budgets_change(make_job, tmp_path):
    made = compression_phase(make_job(TIERED), tmp_path, no_profiles(), tools=KNOWN)
    assert [t.tier for t in made.tiers] == ["small", "big"] and (tmp_path / TIERS_FILE).is_file()
    small, big = made.tiers
    assert small.search_trial["latency_us"] <= 10000 and big.val_accuracy >= small.val_accuracy
    assert (tmp_path / TIERS_DIR / "small" / "model.onnx").is_file()
    reused = compression_phase(make_job(TIERED), tmp_path, unused(), resume=True, tools=KNOWN)
    assert reused.tiers == made.tiers and reused.tier_bundles == made.tier_bundles
    other = TIERED.replace(tiers="small:20000,big:1000000")
    redone = compression_phase(make_job(other), tmp_path, no_profiles(), resume=True, tools=KNOWN)
    assert [t.budget_us for t in redone.tiers] == [20000, 1000000]
    margin = other.replace(tier_latency_margin=1.0)  # judged otherwise: compressed again
    again = compression_phase(make_job(margin), tmp_path, no_profiles(), resume=True, tools=KNOWN)
    assert [t.latency_margin for t in again.tiers] == [1.0, 1.0]
    one = compression_phase(make_job(PHASE), tmp_path, unused(), resume=True)  # tiers dropped
    assert not one.tiers and not (tmp_path / TIERS_FILE).exists()


def test_a_tier_budget_nothing_meets_saves_nothing(make_job, tmp_path):
    impossible = TIERED.replace(tiers="mcu:10,big:1000000")
    with pytest.raises(SearchError, match=r"tier 'mcu': no architecture of 3 tried meets its"):
        compression_phase(make_job(impossible), tmp_path, no_profiles(), tools=KNOWN)
    assert not (tmp_path / BUNDLE_DIR).exists() and not (tmp_path / COMPRESSED_FILE).exists()


def test_a_student_that_misses_its_budget_after_full_distillation_is_replaced(make_job):
    timed = []

    def first_too_slow(model, sample):  # the first fully distilled student times 1 s here
        timed.append(len(model))
        return 1e6 if len(timed) == 1 else 1.0

    found = []

    def recorded(*args, **kwargs):
        found.append(params_search(*args, **kwargs))
        return found[-1]

    job = make_job(TIERED.replace(tiers="small:10000", tier_latency_margin=1.0))
    tiers = compress_tiers(job, None, TierTools(search=recorded, time_us=first_too_slow))
    fits = sorted(
        (t for t in found[0].trials if t.latency_us <= 10000),
        key=lambda t: (-t.val_accuracy, t.latency_us),
    )
    (tier,) = tiers.records
    assert len(timed) == 2 and tier.student == fits[1].student != fits[0].student
    assert tier.latency_us == 1.0 and tier.judged_on == "this machine"
    never = TierTools(search=params_search, time_us=lambda model, sample: 1e6)
    with pytest.raises(SearchError, match=r"tier 'small': no architecture distilled fully met"):
        compress_tiers(job, None, never)


def test_a_tier_is_judged_on_the_slowest_of_its_nodes_profiles_and_this_machine(make_job, tmp_path):
    from tests.server.test_tiers import slow_device_profile

    slow = load_profile(slow_device_profile(tmp_path / "slow.json"))
    job = make_job(TIERED.replace(tiers="board:500,server:1000000"))
    with pytest.raises(SearchError, match=r"tier 'board'.* on slow-board and this machine; the"):
        compress_tiers(job, {"board": [slow, None], "server": [None]}, KNOWN)


def test_a_student_far_below_its_teacher_is_not_shipped_unless_asked(make_job, tmp_path):
    strict = PHASE.replace(student_max_drop=0.0, kd_epochs=1)  # one epoch: far below
    record = compression_phase(make_job(strict), tmp_path, unused()).record
    assert not record.shipped and record.student is None and record.quality_gate.passed
    gate = record.student_gate
    assert gate is not None and not gate.passed and gate.drop_pt > 0
    assert "more than student-max-drop 0" in gate.reason
    assert not (tmp_path / BUNDLE_DIR).exists()  # nothing signed, nothing saved
    anyway = compression_phase(make_job(strict.replace(ship_anyway=True)), tmp_path, unused())
    assert anyway.record.shipped and anyway.record.student_gate is not None
    assert not anyway.record.student_gate.passed and anyway.record.student_gate.ship_anyway


def test_device_targets_tflite_signs_model_tflite_into_the_bundle_and_measures_it(
    make_job, tmp_path
):
    pytest.importorskip("tensorflow", reason="device-targets onnx,tflite needs the litert extra")
    from fedge.client.runtime.verify import verify_bundle
    from fedge.core.litert import litert_logits

    job = make_job(PHASE.replace(device_targets="onnx,tflite"))
    result = compression_phase(job, tmp_path, unused())
    student = result.record.student
    assert student is not None and student.tflite is not None and student.tflite_reason == ""
    tflite = result.files["model.tflite"]
    assert student.tflite.bytes == len(tflite) and student.tflite.label_agreement >= 0.97
    bundle = verify_bundle(result.files, job.key.public_key())
    assert bundle.artifacts == {"tflite": tflite}
    entry = bundle.manifest.artifact("tflite")
    assert entry is not None and entry.input_shape == (
        1,
        *job.fed.dataset.preprocessing.input_shape,
    )
    raw = job.fed.raw_server.x_test.reshape(-1, *entry.input_shape[1:])
    labels = litert_logits(tflite, raw).argmax(axis=1)
    assert student.tflite.accuracy == pytest.approx((labels == job.fed.raw_server.y_test).mean())
    # the ONNX student is the one the same settings ship without tflite
    plain = compression_phase(make_job(), tmp_path / "plain", unused())
    assert plain.files["model.onnx"] == result.files["model.onnx"]
    assert "model.tflite" not in plain.files and plain.record.student.tflite is None


def test_device_targets_ort_signs_model_ort_rated_for_nnapi(make_job, tmp_path):
    from fedge.client.runtime.verify import verify_bundle
    from fedge.core.ort import BatchOne, make_session, ort_format_session

    job = make_job(PHASE.replace(device_targets="onnx,ort"))
    result = compression_phase(job, tmp_path, unused())
    student = result.record.student
    assert student is not None and student.ort is not None and student.ort_reason == ""
    assert student.ort.nnapi_as_is and student.ort.label_agreement >= 0.99
    bundle = verify_bundle(result.files, job.key.public_key())
    assert set(bundle.artifacts) == {"ort"} and "model.tflite" not in result.files
    raw = job.fed.raw_server.x_test.reshape(-1, *job.fed.dataset.preprocessing.input_shape)
    raw = raw.astype("float32")
    got = BatchOne(ort_format_session(bundle.artifacts["ort"])).run(["label"], {"input": raw})[0]
    want = make_session(bundle.model_bytes).run(["label"], {"input": raw})[0]
    assert (got == want).mean() == student.ort.label_agreement
    assert student.ort.accuracy == pytest.approx((got == job.fed.raw_server.y_test).mean())
