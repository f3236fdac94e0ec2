"""The human-readable outputs: report.md of a run and of `fedge compress`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fedge.core.budgets import Budget
from fedge.core.config import RunConfig
from fedge.pipeline.outputs.rows import (
    ClientRow,
    CompressionRecord,
    Deployment,
    StudentRounds,
    TierSummary,
)
from fedge.pipeline.outputs.sections import (
    bundle_line,
    choice_lines,
    compression_lines,
    pct,
    privacy_lines,
    us,
)

if TYPE_CHECKING:  # results.py renders with these functions
    from fedge.pipeline.outputs.results import CompressResults, RunResults


def render_report(results: RunResults) -> str:
    """report.md: teacher vs each stage, per-client accuracy of the deployed model, costs."""
    cfg = RunConfig.from_run_config(results.config)
    record = results.compression
    lines = [
        f"# fedge run `{results.run_id}`",
        "",
        f"{cfg.dataset}, {cfg.clients} clients, {cfg.partition} partition"
        + (f" (alpha {cfg.alpha})" if cfg.partition == "dirichlet" else "")
        + f", {cfg.strategy}, {cfg.rounds} rounds, seed {cfg.seed}.",
        "",
        *(compression_lines(record, cfg.sparsity) if record.student else _gate_lines(results)),
        *(choice_lines(record.choice) if record.choice else []),
        *privacy_lines(results.privacy),
        *_round_lines(results),
        *_student_round_lines(record.student_rounds),
        *_tier_lines(results.tiers),
        *_robustness_lines(results),
        *_client_lines(results.clients, tiered=bool(results.tiers)),
        *_deployment_lines(results.deployment),
        *_cost_lines(results),
    ]
    return "\n".join(lines)


def render_compression_report(results: CompressResults) -> str:
    """report.md of `fedge compress`: the same teacher, a new compression of it."""
    cfg = RunConfig.from_run_config(results.config)
    record = results.compression
    return "\n".join(
        [
            f"# fedge compress of run `{results.run_id}`",
            "",
            f"Teacher: `{results.source_run}/teacher.onnx` (not retrained). "
            "The student is trained on the server's public pool only.",
            "",
            *compression_lines(record, cfg.sparsity),
            *(privacy_lines(results.privacy) if results.privacy else []),
            *(choice_lines(record.choice) if record.choice else []),
            "",
        ]
    )


def _round_lines(results: RunResults) -> list[str]:
    """Each teacher round's central accuracy and what its clients did."""
    lines = [
        "",
        "## Federated training (central test split)",
        "",
        *_sampling_lines(results.sampling),
        "| round | accuracy | loss | updates used | failed | rejected | note |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results.rounds:
        note = f"skipped: {r['skipped']}" if r["skipped"] else ""
        lines.append(
            f"| {r['round']} | {pct(r['accuracy'])} | {r['loss']:.4f} | {r['clients_ok']} | "
            f"{len(r['clients_failed'])} | {len(r['clients_rejected'])} | {note} |"
        )
    return lines


def _deployment_lines(deployment: Deployment | None) -> list[str]:
    """Whether deployment reached enough clients, and how many timed the model."""
    if deployment is None:
        return []
    lines = [] if deployment.passed else [f"**Deployment FAILED**: {deployment.reason}."]
    if deployment.timed is not None and deployment.timed < deployment.installed:
        lines += [
            "",
            f"b1 p50 was timed on {deployment.timed} of {deployment.installed} installed "
            "clients: install-timing auto times only the first 10 clients of a simulation "
            "without tiers (they share this machine), off times none, and a node that sends no "
            "figure is not counted; `--install-timing settled` asks every one.",
        ]
    return lines


def _client_lines(clients: tuple[ClientRow, ...], tiered: bool) -> list[str]:
    """Each client's install verdict and its local accuracy (a tier column with device tiers)."""
    lines = [
        "",
        "## Deployment: each client's local test split",
        "",
        "One test sample is 100 / n points: with few samples a client's accuracy moves in "
        "large steps.",
        "",
        "| client | "
        + ("tier | " if tiered else "")
        + "test samples | installed | teacher accuracy | student accuracy (onnxruntime) | b1 p50 "
        "| reason |",
        "|---:|" + ("---|" if tiered else "") + "---:|---|---:|---:|---:|---|",
    ]
    for c in clients:
        lines.append(
            f"| {c.partition_id} | "
            + (f"{c.tier or ''} | " if tiered else "")
            + f"{'' if c.test_examples is None else c.test_examples} | "
            f"{'yes' if c.installed else 'no'} | {pct(c.teacher_accuracy)} | {pct(c.accuracy)} | "
            f"{us(c.latency_us_p50)} | {c.reason} |"
        )
    return lines


def _cost_lines(results: RunResults) -> list[str]:
    """Traffic and time, the bundle, and where the student learned."""
    comm, timing = results.communication, results.timing_s
    record = results.compression
    student_traffic = comm.get("student_train_bytes")
    where = (
        ""
        if record.student is None
        else "The student is trained on the server's public pool only (never on client data)."
        if not record.student_rounds
        else "The student also trained on the clients' data, on the clients (federated "
        "distillation); no client data reached the server."
    )
    return [
        "",
        "## Costs",
        "",
        f"- Communication: training {comm['train_bytes'] / 1e6:.2f} MB"
        + (f", student rounds {student_traffic / 1e6:.2f} MB" if student_traffic else "")
        + f", redistribution {comm['deploy_bytes'] / 1e3:.1f} kB.",
        f"- Time: total {timing['total']:.1f} s (training {timing['training']:.1f} s, "
        f"compression {timing['compression']:.1f} s, deploy {timing['deploy']:.1f} s).",
        bundle_line(record.student),
        "",
        where,
        "",
    ]


def _tier_lines(tiers: tuple[TierSummary, ...] | None) -> list[str]:
    """Device tiers side by side: budget, student, accuracy, bytes, latency here and on nodes."""
    if not tiers:
        return []
    lines = [
        "",
        "## Device tiers",
        "",
        "One architecture search; each tier ships the most accurate architecture within its "
        "budget, distilled fully and checked again: flash, RAM (activation arena) and MACs "
        "exactly on the shipped model, a batch-1 latency with the stated margin (judged on: the "
        "nodes' device profiles, else this machine's p50, best of three tries). Nodes: each "
        "node's onnxruntime call, p50, timed when it installed the bundle (nodes install one at "
        "a time), held to the budget itself, and Predictor.predict around it.",
        "",
        "| tier | budget | student | test accuracy | bytes | judged | judged on | b1 p50 nodes "
        "(max) | predict p50 nodes (max) | installed | within budget on nodes |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for t in tiers:
        lines.append(
            f"| {t.tier} | {_budget(t)} | `{t.student}` | {pct(t.test_accuracy)} | "
            f"{t.bytes:,} | {us(t.latency_us)} | {t.judged_on} | "
            f"{us(t.node_latency_us_max)} | {us(t.node_predict_us_max)} | "
            f"{t.installed}/{t.nodes} | {'yes' if t.meets_budget_on_nodes else 'no'} |"
        )
    return lines


def _budget(tier: TierSummary) -> str:
    """A tier's limits in words (older runs: the latency alone)."""
    if tier.budget:
        budget = Budget.from_json(tier.budget)
        margin = f" (judged with margin {tier.latency_margin:g})" if budget.latency_us else ""
        return budget.describe() + margin
    return "-" if tier.budget_us is None else f"latency {tier.budget_us:g} µs"


def _sampling_lines(sampling: dict[str, Any]) -> list[str]:
    """One line on client sampling, when rounds did not train every client."""
    if sampling["mode"] == "all":
        return []
    how = "each client independently (Poisson)" if sampling["mode"] == "poisson" else "seeded"
    return [
        f"Client sampling: {100 * sampling['fraction_train']:g} % of clients per round "
        f"({sampling['clients_per_round']} clients, {how}); each round's partitions are in "
        "`results.json` rounds[].sampled.",
        "",
    ]


def _gate_lines(results: RunResults) -> list[str]:
    """The run that shipped nothing: why, and how to ship it anyway."""
    record = results.compression
    failed = "the teacher" if not record.quality_gate.passed else "the student"
    return [
        f"## NOT SHIPPED: {failed} failed the quality gate",
        "",
        f"{not_shipped_reason(record)}. Nothing was signed or sent to any client. Teacher test "
        f"accuracy {pct(record.teacher.accuracy)}. To ship it anyway: "
        f"`fedge compress {results.run_id} --ship-anyway` (or run with ship-anyway true).",
    ]


def not_shipped_reason(record: CompressionRecord) -> str:
    """Why nothing shipped: the teacher's verdict, or the chosen student's."""
    if record.student_gate is not None and not record.student_gate.passed:
        return record.student_gate.reason
    return record.quality_gate.reason


def _student_round_lines(student_rounds: StudentRounds | None) -> list[str]:
    """Federated distillation: the student's rounds on the clients' own data."""
    if student_rounds is None:
        return []
    lines = [
        "",
        "## Federated distillation (student rounds, central test split)",
        "",
        "Each client trained the student on its own data, with KD to the final teacher's logits "
        "and its labels; only the student's weights left the node"
        + (
            f" (replayed from `{student_rounds.replayed_from}`)."
            if student_rounds.replayed_from
            else "."
        ),
        "",
        "| student round | accuracy | updates used | failed | rejected | note |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for index, r in enumerate(student_rounds.rounds, start=1):
        note = f"skipped: {r['skipped']}" if r["skipped"] else ""
        lines.append(
            f"| {index} | {pct(r['accuracy'])} | {r['clients_ok']} | "
            f"{len(r['clients_failed'])} | {len(r['clients_rejected'])} | {note} |"
        )
    if not student_rounds.kept:
        lines += [
            "",
            f"**Discarded:** the rounds lowered the student's validation accuracy "
            f"({pct(student_rounds.validation_before)} -> {pct(student_rounds.validation_after)});"
            " the student ships as it was before them.",
        ]
    return lines


def _robustness_lines(results: RunResults) -> list[str]:
    """Aggregation rule, injected faults, rejected updates and resumes, when there are any."""
    faults = results.faults
    lines = [
        "",
        f"Aggregation: `{faults['aggregation']}`; update validation: "
        f"norm-outlier-factor {faults['norm_outlier_factor']}, min-clients "
        f"{faults['min_clients']}.",
    ]
    if faults["byzantine_partitions"]:
        lines.append(
            f"Injected: partitions {faults['byzantine_partitions']} attack with "
            f"`{faults['byzantine_mode']}` (scale {faults['byzantine_scale']})."
        )
    if faults["dropout_fraction"] or faults["straggler_fraction"]:
        lines.append(
            f"Injected: {faults['dropout_fraction']:.0%} of clients drop out and "
            f"{faults['straggler_fraction']:.0%} straggle each round (see results.json "
            "rounds[].injected)."
        )
    if results.rejected:
        lines += ["", "| round | partition | rejected because |", "|---:|---:|---|"]
        lines += [
            f"| {r['round']} | {r['partition_id']} | {r['reason']} |" for r in results.rejected
        ]
    if results.resumed_from:
        lines.append(f"Resumed after round(s) {results.resumed_from} from checkpoints.")
    lines.append(f"Final teacher weights sha256 `{results.final_model_sha256}`.")
    return lines
