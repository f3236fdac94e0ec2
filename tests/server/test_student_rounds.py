"""Federated distillation: Flower's student rounds against their Flower-free replay, and refusals."""

import copy

import numpy as np
import pytest

from fedge.client.app import app as client_app
from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.federate import FederateConfig
from fedge.core.models import build_student, build_teacher
from fedge.core.partition import build_federation, client_data
from fedge.core.records import model_spec
from fedge.core.training import get_weights, weights_sha256
from fedge.pipeline.audit.replay import student_replay
from fedge.pipeline.chain.federate import recording, result_key, saved
from fedge.server.student_rounds import flower_trainer
from fedge.server.training_loop import train_teacher
from tests.flower_local import LocalGrid

CFG = RunConfig(clients=3, rounds=2, partition="iid", local_epochs=1, student="deep-tiny")
ROUNDS = FederateConfig("deep-tiny", 2, 2, 0.02, 0.5, 4.0, False, 16)


@pytest.fixture(scope="module")
def federation():
    grid = LocalGrid(client_app, num_nodes=3)
    fed = build_federation(CFG)
    teacher = build_teacher((1, 8, 8), 10, seed=0)
    spec = model_spec(fed.dataset.preprocessing, 10)
    train_teacher(grid, CFG, teacher, fed.server.test, spec)  # clients keep the teacher's logits
    return grid, fed, teacher, spec


def test_flower_student_rounds_equal_their_replay(federation, tmp_path):
    grid, fed, teacher, spec = federation
    sha = weights_sha256(get_weights(teacher))
    start = build_student((1, 8, 8), 10, "deep-tiny", seed=0)
    trainer = recording(flower_trainer(grid, CFG, spec, sha, fed.server.test), tmp_path)
    real, summary = trainer(copy.deepcopy(start), ROUNDS)
    sets = [(client_data(fed, p, CFG).train.x, client_data(fed, p, CFG).train.y) for p in range(3)]
    replayed, _ = student_replay(CFG, sets, teacher)(copy.deepcopy(start), ROUNDS)
    for name, value in get_weights(real).items():
        np.testing.assert_allclose(value, get_weights(replayed)[name], atol=1e-4)
    assert [r["clients_ok"] for r in summary.rounds] == [3, 3]
    assert [r["round"] for r in summary.rounds] == [3, 4]  # numbered after the teacher's
    # what the run saved is what a replay without clients continues from
    again, _ = saved(tmp_path)(copy.deepcopy(start), ROUNDS)
    assert weights_sha256(get_weights(again)) == weights_sha256(get_weights(real))
    assert (tmp_path / "federated" / f"{result_key(start, ROUNDS)}.npz").is_file()


def test_a_node_without_the_teachers_logits_refuses_the_round(federation):
    grid, fed, teacher, spec = federation
    start = build_student((1, 8, 8), 10, "deep-tiny", seed=0)
    trainer = flower_trainer(grid, CFG, spec, "0" * 64, fed.server.test)  # another teacher
    model, summary = trainer(copy.deepcopy(start), ROUNDS)
    first = summary.rounds[0]
    assert first["clients_ok"] == 0 and len(first["clients_failed"]) == 3
    assert "no logits of teacher 000000000000" in first["clients_failed"][0]["reason"]
    assert weights_sha256(get_weights(model)) == weights_sha256(get_weights(start))  # unchanged
    assert all(
        msg.metadata.message_type in (m.TRAIN, m.EVALUATE, m.TRAIN_STUDENT) for msg in grid.sent
    )


def test_compress_without_the_runs_clients_is_refused(tmp_path):
    from fedge.core.config import ConfigError

    start = build_student((1, 8, 8), 10, "deep-tiny", seed=0)
    with pytest.raises(ConfigError, match="needs the run's clients"):
        saved(tmp_path)(start, ROUNDS)


def _damage_weights_shape(npz):
    with np.load(npz) as data:
        arrays = {k: data[k] for k in data.files}
    first = next(iter(arrays))
    arrays[first] = np.zeros((3, 3), np.float32)  # the wrong shape for that layer
    np.savez(npz, **arrays)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda npz: npz.write_bytes(npz.read_bytes()[:100]), "cannot read npz"),
        (lambda npz: npz.with_suffix(".json").write_text("{}"), "lacks 'rounds'"),
        (lambda npz: npz.with_suffix(".json").write_text("[1, 2"), "damaged federated student"),
        (_damage_weights_shape, "size mismatch"),
        (lambda npz: np.savez(npz, other=np.zeros(2)), "lacks arrays"),
    ],
)
def test_a_damaged_saved_student_is_one_clear_error_not_a_traceback(tmp_path, damage, reason):
    # RUN/federated/ is read back by `fedge compress` and the audit: untrusted files
    from fedge.core.config import ConfigError

    start = build_student((1, 8, 8), 10, "deep-tiny", seed=0)
    trainer = recording(lambda model, config: (copy.deepcopy(model), _summary()), tmp_path)
    trainer(copy.deepcopy(start), ROUNDS)
    npz = tmp_path / "federated" / f"{result_key(start, ROUNDS)}.npz"
    saved(tmp_path)(copy.deepcopy(start), ROUNDS)  # intact: read back
    damage(npz)
    with pytest.raises(ConfigError) as err:
        saved(tmp_path)(copy.deepcopy(start), ROUNDS)
    assert reason in str(err.value) and "\n" not in str(err.value), str(err.value)


def _summary():
    from fedge.pipeline.outputs.rows import StudentRounds

    return StudentRounds(rounds=[], rejected=[], train_bytes=0)


def test_kd_source_auto_under_dp_is_public_unless_the_budget_leaves_the_student_a_share():
    assert RunConfig(dp="central").distill_from == "public"  # auto: free post-processing
    shared = RunConfig(dp="central", dp_epsilon=3.0, dp_teacher_epsilon=2.0)
    assert shared.distill_from == "both"
    assert RunConfig().distill_from == "both"


@pytest.mark.parametrize("dp", ["central", "local"])
def test_the_audits_replay_takes_the_runs_dp_on_student_rounds(federation, dp):
    grid, fed, teacher, spec = federation
    cfg = CFG.replace(
        dp=dp,
        dp_noise=0.0,
        dp_clip=1e6,
        kd_source="both",
        batch_size=16,
        student_epochs=2,
        student_rounds=2,
    )  # the rounds local DP plans for are ROUNDS
    sha = weights_sha256(get_weights(teacher))
    start = build_student((1, 8, 8), 10, "deep-tiny", seed=0)
    real, summary = flower_trainer(grid, cfg, spec, sha, fed.server.test)(
        copy.deepcopy(start), ROUNDS
    )
    assert [r["clients_ok"] for r in summary.rounds] == [3, 3]
    sets = [(client_data(fed, p, cfg).train.x, client_data(fed, p, cfg).train.y) for p in range(3)]
    replayed, _ = student_replay(cfg, sets, teacher)(copy.deepcopy(start), ROUNDS)
    for name, value in get_weights(real).items():  # central: unweighted; local: DP-SGD's steps
        np.testing.assert_allclose(value, get_weights(replayed)[name], atol=1e-4)
    plain, _ = student_replay(CFG, sets, teacher)(copy.deepcopy(start), ROUNDS)
    noisy, _ = student_replay(cfg.replace(dp_noise=5.0, dp_clip=1.0), sets, teacher)(
        copy.deepcopy(start), ROUNDS
    )
    assert _distance(noisy, replayed) > 1e-3  # the replay noises the student's rounds
    if dp == "local":  # DP-SGD's Poisson batches and clipping, not the plain local SGD
        assert _distance(replayed, plain) > 1e-3


def _distance(a, b) -> float:
    """Largest absolute difference between two models' weights."""
    wa, wb = get_weights(a), get_weights(b)
    return max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)


def test_under_dp_a_resume_reuses_finished_student_rounds_and_refuses_started_ones(tmp_path):
    from fedge.core.config import ConfigError
    from fedge.pipeline.chain.federate import once_under_dp
    from fedge.pipeline.outputs.rows import StudentRounds

    calls = []
    rows = [{"round": 3, "dp_epsilon": 2.5}]

    def trainer(model, config):
        calls.append(config.student)
        return model, StudentRounds(rows, [], 10)

    start = build_student((1, 8, 8), 10, "deep-tiny", seed=0)
    releases = []
    first = once_under_dp(recording(trainer, tmp_path), tmp_path, releases)
    first(copy.deepcopy(start), ROUNDS)  # trains, saves
    assert not list((tmp_path / "federated").glob("*.started"))  # finished: only the result
    resumed_releases = []
    again = once_under_dp(recording(trainer, tmp_path), tmp_path, resumed_releases)
    _, summary = again(copy.deepcopy(start), ROUNDS)  # a resume: reused, not trained again
    assert calls == ["deep-tiny"] and summary.rounds == rows
    assert resumed_releases == [("student deep-tiny rounds (an earlier try)", rows)]
    other = FederateConfig("deep-tiny", 3, 2, 0.02, 0.5, 4.0, False, 16)
    (tmp_path / "federated" / f"{result_key(start, other)}.started").write_bytes(b"")
    with pytest.raises(ConfigError, match="started the student's federated rounds"):
        again(copy.deepcopy(start), other)  # started, never finished: released, not again
    assert calls == ["deep-tiny"]
