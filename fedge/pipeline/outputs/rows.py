"""Typed rows of results.json: what crosses modules between compression, the choice and the report.

Each is a frozen dataclass with `to_json` (the JSON results.json holds) and `from_json` (checked
field by field), so a key typo is a mypy error, not a silent None in the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

from fedge.compression.resources import Resources
from fedge.core.plain import from_plain, to_plain


class Row:
    """to_json/from_json for the dataclasses below."""

    def to_json(self) -> dict[str, Any]:
        """The row as results.json holds it."""
        out: dict[str, Any] = to_plain(self)
        return out

    @classmethod
    def from_json(cls, data: Any) -> Self:
        """Inverse of to_json; ValueError naming the first bad field."""
        return from_plain(cls, data)


@dataclass(frozen=True)
class StageRow(Row):
    """One compression stage's figures on the test split.

    Bytes: raw fp32 weights for the torch stages, the ONNX file from export on. Resources:
    measured on the stage's ONNX model at batch 1 (None for torch stages and older results).
    """

    name: str
    accuracy: float
    params: int
    bytes: int
    gzip_bytes: int | None = None
    resources: Resources | None = None


@dataclass(frozen=True)
class CandidateRow(Row):
    """One compressed candidate: the device model on raw input, timed beside the teacher."""

    student: str
    prune_ratio: float
    quant: str  # fp32 | qdq | qoperator | dynamic | weights (what was asked)
    quantized: bool  # whether int8 shipped (the guard may refuse it)
    params: int
    bytes: int
    gzip_bytes: int
    val_accuracy: float
    drop_pt: float  # validation points below the teacher
    test_accuracy: float
    b1_us: float
    b64_us: float
    teacher_b1_us: float | None
    teacher_b64_us: float | None
    resources: Resources | None = None  # the device model at batch 1 (None: older results)

    @property
    def label(self) -> str:
        """student/prune/quant, as messages name a candidate."""
        return f"{self.student}/{self.prune_ratio}/{self.quant}"

    @property
    def int8_kernels(self) -> bool:
        """Whether it runs int8 kernels (weight-only int8 is folded to fp32 when it loads)."""
        return self.quantized and self.quant != "weights"


@dataclass(frozen=True)
class GateVerdict(Row):
    """The quality gate's verdict on the teacher (results.json "quality_gate")."""

    passed: bool
    teacher_val_accuracy: float
    chance: float  # always answering the most common validation label
    threshold: float
    teacher_margin: float
    teacher_floor: float
    ship_anyway: bool
    reason: str


@dataclass(frozen=True)
class StudentVerdict(Row):
    """The quality gate's verdict on the chosen student (results.json "student_gate")."""

    passed: bool
    student: str
    student_val_accuracy: float
    teacher_val_accuracy: float
    drop_pt: float
    max_drop_pt: float  # student-max-drop
    ship_anyway: bool
    reason: str


@dataclass(frozen=True)
class Latency(Row):
    """p50/p95 µs of one onnxruntime call (1 thread), batch 1 and 64."""

    b1_p50: float
    b64_p50: float
    b1_p95: float


@dataclass(frozen=True)
class TeacherFigures(Row):
    """The teacher as the report shows it (test split, fp32 ONNX)."""

    accuracy: float
    onnx_bytes: int
    latency_us: Latency | None = None  # None when nothing was compressed
    params: int | None = None  # known to the run, not to compression


@dataclass(frozen=True)
class TfliteFigures(Row):
    """The bundle's model.tflite (device-targets onnx,tflite), measured on the test split."""

    bytes: int  # flash: the file as shipped
    sha256: str
    planned_arena_bytes: int  # activations, as TFLM's greedy planner places them
    tflm_arena_bytes: int | None  # TFLM's reported total (None: tflite-micro not installed)
    accuracy: float  # LiteRT, one sample at a time
    label_agreement: float  # share of test samples whose label equals the ONNX model's


@dataclass(frozen=True)
class OrtFigures(Row):
    """The bundle's model.ort (device-targets with ort), measured on the test split."""

    bytes: int
    sha256: str
    nnapi_as_is: bool  # onnxruntime's checker: "should perform well with NNAPI as is: YES"
    accuracy: float  # onnxruntime on the ORT file, one sample at a time
    label_agreement: float  # share of test samples whose label equals the ONNX model's


@dataclass(frozen=True)
class StudentFigures(Row):
    """The shipped student: the signed device model, measured on the test split."""

    accuracy: float
    params: int
    onnx_bytes: int
    gzip_bytes: int
    sha256: str
    quantized: bool
    quantization_reason: str
    size_ratio: float  # teacher ONNX bytes / student bytes
    version: int
    latency_us: Latency
    architecture: str
    tflite: TfliteFigures | None = None  # device-targets onnx,tflite; None otherwise
    tflite_reason: str = ""  # why a tflite asked for is not in the bundle
    ort: OrtFigures | None = None  # device-targets with ort; None otherwise
    ort_reason: str = ""  # why an ort asked for is not in the bundle


@dataclass(frozen=True)
class ChoiceRecord(Row):
    """results.json "choice": the rule, every candidate's row, the chosen one."""

    max_accuracy_drop_pt: float | None
    max_bytes: int | None
    teacher_val_accuracy: float
    sweep: bool
    candidates: tuple[CandidateRow, ...]
    chosen: CandidateRow


@dataclass(frozen=True)
class TierRecord(Row):
    """One device tier's student as compression made it (tiers.json)."""

    tier: str
    budget_us: float | None  # the batch-1 latency limit (None: resources only)
    student: str
    quant: str  # as distilled; `quantized`: whether int8 shipped
    search_trial: dict[str, Any]
    val_accuracy: float
    test_accuracy: float
    bytes: int
    quantized: bool
    b1_us: float  # the server, timed beside the teacher
    latency_us: float  # as the tier is judged (its nodes' profiles and/or this machine)
    judged_on: str
    version: int
    budget: dict[str, Any] = field(default_factory=dict)  # fedge.core.budgets.Budget, all limits
    arena_bytes: int | None = None  # the shipped model's activation arena at batch 1
    macs: int | None = None  # ... and its multiply-accumulates
    latency_margin: float = 1.0  # judged latency <= budget_us / this


@dataclass(frozen=True)
class ClientRow(Row):
    """One client's deployment verdict and what it measured (results.json "clients")."""

    partition_id: int | None
    installed: bool
    reason: str
    accuracy: float | None = None  # the installed student on the client's local test split
    latency_us_p50: float | None = None  # Predictor.predict, batch 1
    onnx_us_p50: float | None = None  # the onnxruntime call alone (as budgets count it)
    test_examples: int | None = None
    teacher_accuracy: float | None = None  # the final teacher on the same split
    tier: str | None = None  # device tiers only


@dataclass(frozen=True)
class Deployment(Row):
    """How far the bundle reached (results.json "deployment")."""

    installed: int
    reachable: int  # clients connected when the bundle was sent
    required: int  # min-installed, or every reachable client
    passed: bool
    timed: int | None = None  # installed clients that timed the model (None: not recorded)

    @property
    def reason(self) -> str:
        """One line for the console and the report."""
        return (
            f"{self.installed} of {self.reachable} reachable clients installed the bundle; "
            f"min-installed {self.required}"
        )


@dataclass(frozen=True)
class TierSummary(Row):
    """results.json "tiers": a tier's student and what its nodes measured when installing."""

    tier: str
    budget_us: float | None
    student: str
    quant: str
    val_accuracy: float
    test_accuracy: float
    bytes: int
    quantized: bool
    b1_us: float
    latency_us: float
    judged_on: str
    version: int
    nodes: int
    installed: int
    node_latency_us_max: float | None  # each node's onnxruntime call, p50, at install
    node_latency_us_median: float | None
    node_predict_us_max: float | None  # Predictor.predict around it
    meets_budget_on_nodes: bool
    budget: dict[str, Any] = field(default_factory=dict)  # every limit (older runs: none)
    arena_bytes: int | None = None
    macs: int | None = None
    latency_margin: float = 1.0


@dataclass(frozen=True)
class StudentRounds(Row):
    """The student's federated rounds on the clients (results.json "student_rounds")."""

    rounds: list[dict[str, Any]]  # one row per round, as the teacher's rounds have
    rejected: list[dict[str, Any]]
    train_bytes: int  # serialized messages, both ways
    replayed_from: str | None = None  # what fedge compress or the audit replayed instead
    validation_before: float | None = None  # the student's validation accuracy before the rounds
    validation_after: float | None = None  # ... and after them
    kept: bool = True  # False: the rounds lowered validation accuracy and were discarded


@dataclass(frozen=True)
class EnsembleSummary(Row):
    """Which teacher the student learned from (results.json "ensemble")."""

    mode: str  # global | ensemble
    requested: str | None = None  # ensemble was asked for; why global was used
    reason: str | None = None
    failed: list[dict[str, Any]] | None = None  # nodes that sent no logits, and why
    clients: list[int] | None = None  # the partitions whose mean logits it learned
    transfer_inputs: int | None = None
    query_bytes: int | None = None
    agreement_with_global: float | None = None  # share of inputs with the same top class
    saved_in: str | None = None  # fedge compress: the run's saved ensemble


@dataclass(frozen=True)
class CompressionRecord(Row):
    """What compression made of one run (compressed.json; also part of results.json).

    `compression_config` is the chain's CompressionConfig as JSON; `ensemble` which teacher
    the student learned from; `student_rounds` the student's federated rounds, if any.
    """

    shipped: bool
    quality_gate: GateVerdict
    compression_config: dict[str, Any] | None
    ensemble: EnsembleSummary
    stages: tuple[StageRow, ...]
    choice: ChoiceRecord | None
    student_rounds: StudentRounds | None
    teacher: TeacherFigures
    student: StudentFigures | None
    student_gate: StudentVerdict | None = None  # None: no student was chosen
