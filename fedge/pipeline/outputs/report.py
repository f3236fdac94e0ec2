"""The human-readable outputs of a run: report.md and the accuracy-per-round plot."""

from __future__ import annotations

from typing import Any


def render_report(results: dict[str, Any]) -> str:
    """report.md: teacher vs each stage, per-client accuracy of the deployed model, costs."""
    cfg, student = results["config"], results["student"]
    tiered = bool(results.get("tiers"))  # device tiers: a column naming each client's
    lines = [
        f"# fedge run `{results['run_id']}`",
        "",
        f"{cfg['dataset']}, {cfg['clients']} clients, {cfg['partition']} partition"
        + (f" (alpha {cfg['alpha']})" if cfg["partition"] == "dirichlet" else "")
        + f", {cfg['strategy']}, {cfg['rounds']} rounds, seed {cfg['seed']}.",
        "",
        *(_compression_lines(results) if student else _gate_lines(results)),
        *(_choice_lines(results["choice"]) if results.get("choice") else []),
        *_privacy_lines(results["privacy"]),
        "",
        "## Federated training (central test split)",
        "",
        *_sampling_lines(results.get("sampling")),
        "| round | accuracy | loss | updates used | failed | rejected | note |",
        "|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results["rounds"]:
        note = f"skipped: {r['skipped']}" if r["skipped"] else ""
        lines.append(
            f"| {r['round']} | {100 * r['accuracy']:.2f} % | {r['loss']:.4f} | {r['clients_ok']} | "
            f"{len(r['clients_failed'])} | {len(r['clients_rejected'])} | {note} |"
        )
    lines += _student_round_lines(results.get("student_rounds"))
    lines += _tier_lines(results.get("tiers"))
    lines += _robustness_lines(results)
    lines += [
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
    for c in results["clients"]:
        t_acc = c.get("teacher_accuracy")
        samples = c.get("test_examples")
        lines.append(
            f"| {c['partition_id']} | "
            + (f"{c.get('tier') or ''} | " if tiered else "")
            + f"{'' if samples is None else samples} | "
            f"{'yes' if c['installed'] else 'no'} | {_pct(t_acc)} | {_pct(c['accuracy'])} | "
            f"{_us(c['latency_us_p50'])} | {c['reason']} |"
        )
    comm, timing = results["communication"], results["timing_s"]
    lines += [
        "",
        "## Costs",
        "",
        f"- Communication: training {comm['train_bytes'] / 1e6:.2f} MB"
        + (
            f", student rounds {comm['student_train_bytes'] / 1e6:.2f} MB"
            if comm.get("student_train_bytes")
            else ""
        )
        + f", redistribution {comm['deploy_bytes'] / 1e3:.1f} kB.",
        f"- Time: total {timing['total']:.1f} s (training {timing['training']:.1f} s, "
        f"compression {timing['compression']:.1f} s, deploy {timing['deploy']:.1f} s).",
        f"- Bundle: `bundle/` signed with Ed25519; model sha256 `{student['sha256'][:16]}...`."
        if student
        else "- Bundle: none (the quality gate stopped it).",
        "",
        "The student is trained on the server's public pool only (never on client data)."
        if student and not results.get("student_rounds")
        else "The student also trained on the clients' data, on the clients (federated "
        "distillation); no client data reached the server."
        if student
        else "",
        "",
    ]
    return "\n".join(lines)


def _tier_lines(tiers: list[dict[str, Any]] | None) -> list[str]:
    """Device tiers side by side: budget, student, accuracy, bytes, latency here and on nodes."""
    if not tiers:
        return []
    lines = [
        "",
        "## Device tiers",
        "",
        "One architecture search; each tier ships the most accurate architecture within its "
        "batch-1 budget, distilled fully and checked again (judged on: the nodes' device "
        "profiles, else this machine's p50, best of three tries). Nodes: each node's onnxruntime call, p50, timed "
        "when it installed the bundle (nodes install one at a time), and Predictor.predict "
        "around it.",
        "",
        "| tier | budget | student | test accuracy | bytes | judged | judged on | b1 p50 nodes "
        "(max) | predict p50 nodes (max) | installed | within budget on nodes |",
        "|---|---:|---|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for t in tiers:
        lines.append(
            f"| {t['tier']} | {t['budget_us']:g} µs | `{t['student']}` | {_pct(t['test_accuracy'])} | "
            f"{t['bytes']:,} | {_us(t.get('latency_us'))} | {t.get('judged_on', '')} | "
            f"{_us(t['node_latency_us_max'])} | {_us(t.get('node_predict_us_max'))} | "
            f"{t['installed']}/{t['nodes']} | {'yes' if t['meets_budget_on_nodes'] else 'no'} |"
        )
    return lines


def render_compression_report(results: dict[str, Any]) -> str:
    """report.md of `fedge compress`: the same teacher, a new compression of it."""
    return "\n".join(
        [
            f"# fedge compress of run `{results['run_id']}`",
            "",
            f"Teacher: `{results['source_run']}/teacher.onnx` (not retrained). "
            "The student is trained on the server's public pool only.",
            "",
            *_compression_lines(results),
            *(_privacy_lines(results["privacy"]) if results["privacy"] else []),
            *_choice_lines(results["choice"]),
            "",
        ]
    )


def _privacy_lines(privacy: dict[str, Any]) -> list[str]:
    """The formal guarantee, when the run trained with DP."""
    if privacy["mode"] == "none":
        return ["", "## Privacy", "", "No differential privacy (`dp none`): no formal guarantee."]
    what = (
        f"client-level DP-FedAvg, updates clipped to {privacy['clipping_norm']} on the "
        f"{privacy['clipping']}, noise multiplier {privacy['noise_multiplier']:.3f}"
        if privacy["mode"] == "central"
        else f"sample-level DP-SGD on every client (per-sample gradients clipped to "
        f"{privacy['clipping_norm']}, smallest noise multiplier {privacy['noise_multiplier']:.3f})"
    )
    return [
        "",
        "## Privacy",
        "",
        f"Training: {what}. Spent: **epsilon = {privacy['epsilon']:.3f} at delta = "
        f"{privacy['delta']:g}** per {privacy['unit']} ({privacy['accountant']} accountant"
        + (f"; target {privacy['target_epsilon']}" if privacy["target_epsilon"] else "")
        + "). A round that averaged fewer clients is counted at the smaller noise it really gave.",
        "",
        "Compression trains only on the server's public pool (enforced in code), so the deployed "
        "student is post-processing of the DP teacher and inherits the same (epsilon, delta).",
    ]


def _distilled_from(ensemble: dict[str, Any]) -> str:
    """One sentence: which teacher the student learned from."""
    if ensemble["mode"] == "ensemble":
        who = (
            f"partitions {ensemble['clients']} of the last round"
            if "clients" in ensemble
            else f"the run's saved ensemble (`{ensemble['from']}`)"
        )
        agreement = (
            f"; the ensemble agrees with the global model on "
            f"{100 * ensemble['agreement_with_global']:.1f} % of them"
            if "agreement_with_global" in ensemble
            else ""
        )
        return (
            f"Distilled from an ensemble (FedDF-style): the mean logits of {who} on "
            f"{ensemble['transfer_inputs']:,} public transfer inputs{agreement}. Clients sent "
            "logits only. The teacher row below is the global model."
        )
    if "requested" in ensemble:
        return f"Distilled from the global model: ensemble requested, but {ensemble['reason']}."
    return "Distilled from the global model."


def _choice_lines(choice: dict[str, Any]) -> list[str]:
    """The candidates `fedge compress` compared on validation, and which one it shipped."""
    if len(choice["candidates"]) < 2 and not choice["sweep"]:
        return []
    limit = (
        f"at most {choice['max_accuracy_drop_pt']} validation points below the teacher "
        f"({100 * choice['teacher_val_accuracy']:.2f} %), then fewest bytes"
        if choice["max_accuracy_drop_pt"] is not None
        else f"at most {choice['max_bytes']:,} bytes, then most accurate on validation"
    )
    lines = [
        "",
        "## Candidates (validation split; the shipped one in bold)",
        "",
        f"Rule: {limit}."
        + (" Table: `sweep.csv`, `sweep.json`; plots: `pareto.png`." if choice["sweep"] else ""),
        "",
        "| student | prune | quant | validation | drop (pt) | bytes | batch-1 | batch-64 |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in choice["candidates"]:
        cells = [
            row["student"],
            f"{row['prune_ratio']:.2f}",
            row["quant"]
            if row["quantized"] or row["quant"] == "fp32"
            else f"{row['quant']} (refused)",
            f"{100 * row['val_accuracy']:.2f} %",
            f"{row['drop_pt']:.2f}",
            f"{row['bytes']:,}",
            f"{row['b1_us']:.1f} µs",
            f"{row['b64_us']:.1f} µs",
        ]
        if row == choice["chosen"]:
            cells = [f"**{cell}**" for cell in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _sampling_lines(sampling: dict[str, Any] | None) -> list[str]:
    """One line on client sampling, when rounds did not train every client."""
    if not sampling or sampling["mode"] == "all":
        return []
    how = "each client independently (Poisson)" if sampling["mode"] == "poisson" else "seeded"
    return [
        f"Client sampling: {100 * sampling['fraction_train']:g} % of clients per round "
        f"({sampling['clients_per_round']} clients, {how}); each round's partitions are in "
        "`results.json` rounds[].sampled.",
        "",
    ]


def _gate_lines(results: dict[str, Any]) -> list[str]:
    """The run that shipped nothing: why, and how to ship it anyway."""
    gate, teacher = results["quality_gate"], results["teacher"]
    return [
        "## NOT SHIPPED: the teacher failed the quality gate",
        "",
        f"{gate['reason']}. No student was distilled, signed or sent to any client. Teacher "
        f"test accuracy {_pct(teacher['accuracy'])}. To ship it anyway: "
        f"`fedge compress {results['run_id']} --ship-anyway` (or run with ship-anyway true).",
    ]


def _compression_lines(results: dict[str, Any]) -> list[str]:
    """Teacher vs each stage vs the deployed student: accuracy, size, latency."""
    teacher, student = results["teacher"], results["student"]
    gate = results.get("quality_gate") or {"passed": True}
    lines = [
        "## Teacher and compression stages (central test split)",
        "",
        *(
            []
            if gate["passed"]
            else [f"**Shipped despite the quality gate**: {gate['reason']}.", ""]
        ),
        _distilled_from(results["ensemble"]),
        "",
        "| model | accuracy | params | bytes | vs teacher ONNX |",
        "|---|---:|---:|---:|---:|",
        _row(
            "teacher (fp32 ONNX)",
            teacher["accuracy"],
            teacher["params"],
            teacher["onnx_bytes"],
            teacher["onnx_bytes"],
        ),
    ]
    for stage in results["stages"]:
        lines.append(
            _row(
                stage["name"],
                stage["accuracy"],
                stage["params"],
                stage["bytes"],
                teacher["onnx_bytes"],
            )
        )
    lines.append(
        _row(
            "**deployed student**",
            student["accuracy"],
            student["params"],
            student["onnx_bytes"],
            teacher["onnx_bytes"],
        )
    )
    lines += [
        "",
        "Bytes of `distilled` and `pruned` are their raw fp32 weights; the others are ONNX files.",
        f"Shipped file gzip-compressed: {student['gzip_bytes']:,} bytes"
        + (
            f" (magnitude sparsity {results['config']['sparsity']:.0%}: zeros shrink the"
            " gzip size, not the raw file or the latency)."
            if results["config"]["sparsity"]
            else "."
        ),
        f"Quantization: {student['quantization_reason']}.",
        "",
        "| latency, onnxruntime 1 thread | batch 1 p50 | batch 64 p50 |",
        "|---|---:|---:|",
        f"| teacher fp32 | {teacher['latency_us']['b1_p50']:.1f} µs | {teacher['latency_us']['b64_p50']:.1f} µs |",
        f"| deployed student | {student['latency_us']['b1_p50']:.1f} µs | {student['latency_us']['b64_p50']:.1f} µs |",
        "",
        f"Size ratio {student['size_ratio']:.1f}x, accuracy change "
        f"{100 * (student['accuracy'] - teacher['accuracy']):+.2f} points.",
    ]
    return lines


def _student_round_lines(student_rounds: dict[str, Any] | None) -> list[str]:
    """Federated distillation: the student's rounds on the clients' own data."""
    if not student_rounds:
        return []
    lines = [
        "",
        "## Federated distillation (student rounds, central test split)",
        "",
        "Each client trained the student on its own data, with KD to the final teacher's logits "
        "and its labels; only the student's weights left the node"
        + (f" (replayed from `{student_rounds['from']}`)." if "from" in student_rounds else "."),
        "",
        "| student round | accuracy | updates used | failed | rejected | note |",
        "|---:|---:|---:|---:|---:|---|",
    ]
    for index, r in enumerate(student_rounds["rounds"], start=1):
        note = f"skipped: {r['skipped']}" if r["skipped"] else ""
        lines.append(
            f"| {index} | {100 * r['accuracy']:.2f} % | {r['clients_ok']} | "
            f"{len(r['clients_failed'])} | {len(r['clients_rejected'])} | {note} |"
        )
    return lines


def _robustness_lines(results: dict[str, Any]) -> list[str]:
    """Aggregation rule, injected faults, rejected updates and resumes, when there are any."""
    faults = results["faults"]
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
            f"{faults['straggler_fraction']:.0%} straggle each round (see results.json rounds[].injected)."
        )
    rejected = results["rejected"]
    if rejected:
        lines += ["", "| round | partition | rejected because |", "|---:|---:|---|"]
        lines += [f"| {r['round']} | {r['partition_id']} | {r['reason']} |" for r in rejected]
    if results["resumed_from"]:
        lines.append(f"Resumed after round(s) {results['resumed_from']} from checkpoints.")
    lines.append(f"Final teacher weights sha256 `{results['final_model_sha256']}`.")
    return lines


def _row(name: str, accuracy: float, params: int, size: int, teacher_bytes: int) -> str:
    return (
        f"| {name} | {100 * accuracy:.2f} % | {params:,} | {size:,} | {teacher_bytes / size:.1f}x |"
    )


def _pct(value: float | None) -> str:
    return "" if value is None else f"{100 * value:.2f} %"


def _us(value: float | None) -> str:
    return "" if value is None else f"{value:.1f} µs"
