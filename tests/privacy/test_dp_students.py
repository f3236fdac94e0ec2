"""DP on the student's federated rounds: one budget over every release, composed by one accountant."""

import copy

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from fedge.client.app import app as client_app
from fedge.core import messages as m
from fedge.core.config import ConfigError, RunConfig
from fedge.core.federate import FederateConfig
from fedge.core.models import build_student, build_teacher
from fedge.core.partition import build_federation, client_data
from fedge.core.records import model_spec, record_to_weights
from fedge.core.training import get_weights, weights_sha256
from fedge.privacy import ledger
from fedge.privacy.accountant import epsilon_of_history, noise_after, noise_for_epsilon
from fedge.privacy.budget import phase_noise, student_trainings
from fedge.privacy.central import central_epsilon, central_noise
from fedge.privacy.dp_sgd import plan
from fedge.server.student_rounds import flower_trainer
from fedge.server.training_loop import train_teacher
from tests.flower_local import LocalGrid, set_task_identity

BASE = RunConfig(
    clients=3, rounds=2, partition="iid", local_epochs=1, batch_size=32, student="deep-tiny"
)


def _rounds(cfg: RunConfig) -> FederateConfig:
    return FederateConfig.from_run(cfg)


def test_one_noise_for_every_release_spends_the_budget_together():
    cfg = RunConfig(rounds=5, dp="central", dp_epsilon=3.0, kd_source="both", student="deep-tiny")
    noise = phase_noise(cfg, 1.0, 5, 20)
    assert noise.teacher == noise.student == noise_for_epsilon(3.0, 1.0, 25, 1e-5)
    # without student rounds the teacher's noise is what it always was
    alone = phase_noise(cfg.replace(kd_source="public"), 1.0, 5, 0)
    assert alone.teacher == noise_for_epsilon(3.0, 1.0, 5, 1e-5) < noise.teacher


def test_a_teacher_share_leaves_the_rest_to_the_student():
    cfg = RunConfig(rounds=5, dp="central", dp_epsilon=3.0, dp_teacher_epsilon=2.5)
    noise = phase_noise(cfg, 1.0, 5, 20)
    teacher_only = epsilon_of_history([(noise.teacher, 1.0, 5)], 1e-5)
    total = epsilon_of_history([(noise.teacher, 1.0, 5), (noise.student, 1.0, 20)], 1e-5)
    assert teacher_only == pytest.approx(2.5, abs=0.02) and teacher_only <= 2.5
    assert total <= 3.0 and total == pytest.approx(3.0, abs=0.02)  # the smallest such noise
    louder = epsilon_of_history([(noise.teacher, 1.0, 5), (noise.student * 0.98, 1.0, 20)], 1e-5)
    assert louder > 3.0
    with pytest.raises(ConfigError, match="already spend epsilon"):
        noise_after(((noise.teacher, 1.0, 5),), 2.0, 1.0, 20, 1e-5)


def test_the_plan_counts_every_student_that_may_train_on_the_clients():
    dp = RunConfig(dp="central", dp_epsilon=3.0)
    assert student_trainings(dp) == 0  # auto under DP without a teacher share: public only
    assert student_trainings(dp.replace(kd_source="both")) == 2  # each auto candidate
    assert student_trainings(dp.replace(kd_source="both", student="deep-tiny")) == 1
    shared = dp.replace(dp_teacher_epsilon=2.0)
    assert shared.distill_from == "both" and student_trainings(shared) == 2


def test_budget_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="dp-teacher-epsilon=1.0 is a part of dp-epsilon"):
        RunConfig(dp_teacher_epsilon=1.0)
    with pytest.raises(ConfigError, match="leaves nothing of dp-epsilon=3.0"):
        RunConfig(dp="local", dp_epsilon=3.0, dp_teacher_epsilon=3.0)
    with pytest.raises(ConfigError, match="but kd-source 'public' has none"):
        RunConfig(dp="local", dp_epsilon=3.0, dp_teacher_epsilon=2.0, kd_source="public")
    with pytest.raises(ConfigError, match="cannot be met"):
        central_noise(RunConfig(dp="central", dp_epsilon=1e-6, kd_source="both"), "student")
    # what used to be refused is now accounted
    assert RunConfig(dp="central", kd_source="federated").distill_from == "federated"


def _teacher(cfg: RunConfig, grid: LocalGrid):
    fed = build_federation(cfg)
    teacher = build_teacher((1, 8, 8), 10, seed=cfg.seed)
    spec = model_spec(fed.dataset.preprocessing, 10)
    log = train_teacher(grid, cfg, teacher, fed.server.test, spec)  # clients keep its logits
    return fed, teacher, spec, log


def _students(cfg: RunConfig, grid: LocalGrid, trainings: int = 1):
    """Teacher rounds, then `trainings` students' rounds through the real ClientApp."""
    fed, teacher, spec, log = _teacher(cfg, grid)
    releases: list[ledger.Release] = [(ledger.TEACHER_RELEASE, log.rounds)]
    sha = weights_sha256(get_weights(teacher))
    trainer = flower_trainer(grid, cfg, spec, sha, fed.server.test, releases=releases)
    name = cfg.student if cfg.student != "auto" else cfg.auto_candidates[0]
    start = build_student((1, 8, 8), 10, name, seed=0)
    rounds = _rounds(cfg.replace(student=name))
    models = [trainer(copy.deepcopy(start), rounds)[0] for _ in range(trainings)]
    return fed, log, releases, models


def test_central_student_rounds_compose_with_the_teachers_in_one_ledger():
    cfg = BASE.replace(
        dp="central", dp_epsilon=4.0, kd_source="both", student="auto",
        auto_students="deep-tiny,ds-tiny", student_rounds=2,
    )  # fmt: skip
    _, log, releases, _ = _students(cfg, LocalGrid(client_app, num_nodes=3), trainings=2)
    noise = phase_noise(cfg, 1.0, 2, 4)  # both candidates' rounds are planned for
    assert noise.teacher == noise.student == central_noise(cfg, "student")
    student_rows = [r for _, rows in releases[1:] for r in rows]
    assert [r["dp_noise_effective"] for r in student_rows] == [noise.student] * 4
    history = [noise.teacher] * 2 + [noise.student] * 4
    assert student_rows[-1]["dp_epsilon"] == pytest.approx(central_epsilon(history, cfg))
    assert log.rounds[-1]["dp_epsilon"] < student_rows[0]["dp_epsilon"] < 4.0 + 1e-6
    summary = ledger.summary(cfg, log.rounds, releases[1:])
    assert summary["epsilon"] == student_rows[-1]["dp_epsilon"]
    assert [r["release"] for r in summary["releases"]] == [
        "teacher rounds", "student deep-tiny rounds", "student deep-tiny rounds"
    ]  # fmt: skip
    assert summary["epsilon"] == pytest.approx(4.0, abs=0.05)  # planned for both students
    with pytest.raises(ConfigError, match="planned for 2 student training"):  # not a third
        flower_trainer(LocalGrid(client_app, num_nodes=3), cfg, {}, "", None, releases=releases)(
            build_student((1, 8, 8), 10, "deep-tiny", seed=0), _rounds(BASE)
        )


def test_client_side_clipping_clips_the_students_update_before_it_leaves_the_node():
    cfg = BASE.replace(
        dp="central", dp_noise=0.0, dp_clip=0.05, dp_clipping="client", kd_source="both",
        student_rounds=1,
    )  # fmt: skip
    grid = LocalGrid(client_app, num_nodes=3)
    _students(cfg, grid)
    sent = [msg for msg in grid.sent if msg.metadata.message_type == m.TRAIN_STUDENT][0]
    assert sent.content.config_records[m.CONFIG]["clipping_norm"] == 0.05
    start = record_to_weights(sent.content.array_records[m.ARRAYS])
    context = grid.contexts[sent.metadata.dst_node_id]

    def update_norm() -> float:
        TaskIdentity.run_id = None  # as in a real ClientApp: the mod may not build messages
        try:
            reply = client_app(sent, context)
        finally:
            set_task_identity()
        assert not reply.has_error(), reply.error
        update = record_to_weights(reply.content.array_records[m.ARRAYS])
        return float(np.sqrt(sum(((update[k] - start[k]) ** 2).sum() for k in start)))

    assert update_norm() == pytest.approx(0.05, rel=1e-3)
    del sent.content.config_records[m.CONFIG]["clipping_norm"]  # no DP asked: no clipping
    assert update_norm() > 0.1


def test_local_dp_student_rounds_report_the_composed_epsilon_and_are_noised():
    cfg = BASE.replace(
        dp="local", dp_epsilon=6.0, dp_teacher_epsilon=5.0, student_rounds=2, student_epochs=1
    )
    fed, log, releases, (model,) = _students(cfg, LocalGrid(client_app, num_nodes=3))
    plans = [plan(len(client_data(fed, p, cfg).train), cfg) for p in range(3)]
    rows = releases[1][1]
    for done, row in enumerate(rows, start=1):
        reported = max(p.epsilon_after(cfg.rounds, cfg, student_rounds=done) for p in plans)
        assert row["dp_epsilon"] == pytest.approx(reported)
    assert log.rounds[-1]["dp_epsilon"] <= 5.0 < rows[0]["dp_epsilon"] < rows[-1]["dp_epsilon"]
    assert rows[-1]["dp_epsilon"] == pytest.approx(6.0, abs=0.05) and rows[-1]["dp_epsilon"] <= 6.0
    assert rows[-1]["dp_noise_min"] == min(p.student_noise for p in plans) > 0
    # the same rounds without noise end elsewhere: the noise reached the student's training
    quiet = cfg.replace(dp_epsilon=0.0, dp_teacher_epsilon=0.0, dp_noise=0.0, kd_source="both")
    _, _, _, (clean,) = _students(quiet, LocalGrid(client_app, num_nodes=3))
    moved = [not np.allclose(a, b) for a, b in zip(
        get_weights(model).values(), get_weights(clean).values(), strict=True
    )]  # fmt: skip
    assert all(moved)


def test_the_report_lists_every_release_the_total_covers():
    from fedge.pipeline.outputs.sections import privacy_lines

    cfg = RunConfig(rounds=2, dp="central", dp_noise=2.0, kd_source="both", student="deep-tiny")
    teacher = [{"dp_noise_effective": 2.0, "dp_epsilon": 1.0}, {"dp_noise_effective": 2.0}]
    teacher[1]["dp_epsilon"] = central_epsilon([2.0, 2.0], cfg)
    student = [{"dp_noise_effective": 2.0, "dp_epsilon": central_epsilon([2.0] * 3, cfg)}]
    summary = ledger.summary(cfg, teacher, [("student deep-tiny rounds", student)])
    text = "\n".join(privacy_lines(summary))
    assert f"epsilon = {student[0]['dp_epsilon']:.3f}" in text
    assert f"| student deep-tiny rounds | 1 | 2.000 | {student[0]['dp_epsilon']:.3f} |" in text
    alone = "\n".join(privacy_lines(ledger.summary(cfg, teacher)))
    assert "post-processing of the DP teacher" in alone and "| release |" not in alone


def test_each_phase_is_noised_at_its_own_planned_noise():
    from fedge.server.strategy import make_strategy

    cfg = RunConfig(
        rounds=5, dp="central", dp_epsilon=3.0, dp_teacher_epsilon=2.0, student="deep-tiny"
    )
    teacher, student = make_strategy(cfg), make_strategy(cfg, "student")
    assert teacher.noise_multiplier == central_noise(cfg, "teacher")
    assert student.noise_multiplier == central_noise(cfg, "student")
    assert student.noise_multiplier > teacher.noise_multiplier  # the smaller share, more noise


def test_central_noise_is_seeded_from_the_servers_key_not_the_run_seed():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from fedge.server.run import noise_secret

    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    assert noise_secret(key) == noise_secret(key) != noise_secret(other)  # a resume: the same
    assert len(noise_secret(key)) == 8 and all(0 <= w < 2**32 for w in noise_secret(key))
    np.random.seed(noise_secret(key))
    draw = np.random.normal(size=4)
    np.random.seed(0)  # what a client could compute from the run's seed
    assert not np.allclose(draw, np.random.normal(size=4))
