"""The run settings of compression and shipping (declared once; RunConfig holds them all)."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.core import choices
from fedge.core.settings import setting


@dataclass(frozen=True)
class CompressionSettings:
    """What the server does with the teacher: the gate, the student, its chain, the signature."""

    teacher_margin: float = setting(
        0.1,
        "quality gate: the share of the gap from chance (the majority class's share of "
        "validation) to 100 % the teacher must close to be compressed and shipped",
        interval="[0, 1)",
        compress=True,
    )
    teacher_floor: float = setting(
        0.0,
        "quality gate: the least teacher validation accuracy to ship",
        interval="[0, 1]",
        compress=True,
    )
    student_max_drop: float = setting(
        2.0,
        "quality gate: the most validation points the chosen student may lose against the "
        "teacher and still ship",
        interval=">= 0",
        compress=True,
    )
    ship_anyway: bool = setting(
        False,
        "compress and ship even a teacher or a student that fails the quality gate",
        compress=True,
        resume=True,
    )
    student: str = setting(
        "auto",
        "student architecture, or auto: the first of auto-students within auto-max-drop "
        "validation points of the teacher (the most accurate of them if none is), or a searched "
        "architecture (arch:c16k3p-c32k3-h64-relu, see fedge compress --search)",
        choices=("auto", *choices.STUDENTS),
        prefix="arch:",
        compress=True,
    )
    tiers: str = setting(
        "",
        "device tiers, name:budget,... (e.g. mcu:flash=64k+ram=64k,phone:latency=2000,"
        "gateway:100): one searched student per tier within its budget, a batch-1 latency in µs "
        "and/or exact limits on flash (model bytes), ram (activation arena) and macs; a node's "
        "tier is its device-class node config, else partition id modulo the tiers; empty: one "
        "student for all",
        resume=True,
    )
    tier_latency_margin: float = setting(
        1.5,
        "tiers: a latency budget is met on the server (predicted or timed) with this headroom "
        "(judged <= budget / margin), so nodes that time it themselves stay within the budget",
        interval=">= 1",
        resume=True,
    )
    search_trials: int = setting(
        30,
        "tiers: architectures the search tries (shared by every tier)",
        interval=">= 1",
        resume=True,
    )
    auto_students: str = setting(
        "deep-small,deep-medium",
        "student auto: the candidates, comma-separated, smallest first",
        compress=True,
    )
    auto_max_drop: float = setting(
        0.5,
        "student auto: validation points a candidate may lose against the teacher",
        interval=">= 0",
        compress=True,
    )
    kd_temperature: float = setting(
        4.0, "Hinton KD softmax temperature", interval="> 0", compress=True
    )
    kd_epochs: int = setting(
        100, "distillation epochs over the public pool", interval=">= 0", compress=True
    )
    kd_lr: float = setting(
        0.005, "distillation: Adam learning rate (cosine decay)", interval="> 0", compress=True
    )
    kd_sample_budget: int = setting(
        500_000,
        "cap on KD epochs x pool samples: a large pool gets fewer epochs (as many steps as 100 "
        "epochs on 5,000 samples); 0: no cap",
        interval=">= 0",
        compress=True,
    )
    student_norm: str = setting(
        "none",
        "distillation: none | batch (BatchNorm after each of the student's convolutions while "
        "it learns on the public pool, folded into their weights before export)",
        choices=choices.STUDENT_NORMS,
        compress=True,
    )
    # What the student learns from: the teacher's top class (hard) on the pool's own samples
    # (pool) leaks far less membership than soft labels on augmented views (see README, Privacy).
    kd_labels: str = setting(
        "hard",
        "hard (teacher's top class) | soft (tempered probabilities)",
        choices=choices.KD_LABELS,
        compress=True,
    )
    kd_queries: str = setting(
        "pool",
        "teacher labels: pool (the samples only) | augmented (every view)",
        choices=choices.KD_QUERIES,
        compress=True,
    )
    kd_source: str = setting(
        "auto",
        "where the student learns: public (KD on the server's public pool) | federated (rounds "
        "of KD + labels on the clients' own data) | both (public KD, then federated rounds) | "
        "auto (both; public under DP, where the student is then free post-processing)",
        choices=choices.KD_SOURCES,
        compress=True,
    )
    student_rounds: int = setting(
        20, "federated distillation: rounds of student training", interval=">= 1", compress=True
    )
    student_epochs: int = setting(
        5, "federated distillation: client epochs per round", interval=">= 1", compress=True
    )
    student_lr: float = setting(
        0.02, "federated distillation: client SGD learning rate", interval="> 0", compress=True
    )
    kd_alpha: float = setting(
        0.5,
        "federated distillation: weight of the teacher term (1 - alpha: the labels)",
        interval="[0, 1]",
        compress=True,
    )
    prune_ratio: float = setting(
        0.0,
        "share of channels/units structurally removed (0: no pruning)",
        interval="[0, 1)",
        compress=True,
    )
    finetune_epochs: int = setting(
        60, "KD fine-tuning epochs after pruning", interval=">= 0", compress=True
    )
    sparsity: float = setting(
        0.0,
        "unstructured magnitude pruning share (shrinks gzip size only)",
        interval="[0, 1)",
        compress=True,
    )
    quant_format: str = setting(
        "qdq", "static int8 format", choices=choices.QUANT_FORMATS, compress=True
    )
    quant_per_channel: bool = setting(
        True, "per-channel int8 weight scales (else per tensor)", compress=True
    )
    quant_mode: str = setting(
        "static",
        "static (int8 weights and activations) | weights (int8 weights, dequantized when the "
        "model loads: int8's size, fp32's kernels) | dynamic (MatMul weights only) | none (fp32)",
        choices=choices.QUANT_MODES,
        compress=True,
    )
    device_targets: str = setting(
        "onnx",
        "artifacts in the signed bundle: onnx (model.onnx), and with ort model.ort (ORT Mobile, "
        "batch 1) and with tflite model.tflite (full-integer int8 for LiteRT and TensorFlow Lite "
        "Micro; needs the litert extra; from a quant-mode static model it is that same integer "
        "model, from others its activations are calibrated)",
        choices=choices.DEVICE_TARGETS,
        compress=True,
    )
    quant_calibration: str = setting(
        "minmax",
        "static mode: activation range calibration",
        choices=choices.QUANT_CALIBRATIONS,
        compress=True,
    )
    quant_calibration_samples: int = setting(
        256, "public-pool samples for calibration", interval=">= 1", compress=True
    )
    qat: str = setting(
        "fallback",
        "quantization-aware training: off | fallback (when post-training int8 loses more than "
        "int8-tolerance) | always; static int8 only",
        choices=choices.QAT_MODES,
        compress=True,
    )
    qat_epochs: int = setting(
        60, "KD epochs of quantization-aware training", interval=">= 1", compress=True
    )
    int8_tolerance: float = setting(
        0.01,
        "post-training int8: share of validation and public inputs whose top class may change; "
        "QAT: validation accuracy it may lose against fp32",
        interval="[0, 1]",
        compress=True,
    )
    teacher_mode: str = setting(
        "global",
        "distil from: global model | ensemble (last round's clients' mean logits)",
        choices=choices.TEACHER_MODES,
        compress=True,
    )
    ensemble_views: int = setting(
        16, "ensemble: transfer set = public pool + (views - 1) augmented copies", interval=">= 1"
    )
    private_key: str = setting(
        "", "Ed25519 private key PEM to sign with; empty: a new pair per run", server_only=True
    )
