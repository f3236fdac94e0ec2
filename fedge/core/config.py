"""The typed run configuration: built once from Flower's run_config, validated, kebab on the wire."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedge.core import choices, config_rules
from fedge.core.settings import ConfigError, coerce, kebab, lookup, setting, settings_of


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one fedge run, each declared once (fedge.core.settings.setting)."""

    dataset: str = setting("digits", "data: digits | mnist1d | npz:PATH")
    dataset_size: int = setting(
        0, "mnist1d: samples to generate, 80 % train (0: its own 5,000)", interval="[0, 1000000]"
    )
    clients: int = setting(10, "number of federated clients (partitions)", interval=">= 1")
    rounds: int = setting(10, "federated rounds of teacher training", interval=">= 1")
    teacher: str = setting(
        "cnn",
        "federated model: cnn (wide CNN/MLP) | linear (for DP) | a student architecture "
        "(federate a small model directly, no distillation)",
        choices=choices.TEACHERS,
    )
    partition: str = setting("dirichlet", "how client data is split", choices=choices.PARTITIONS)
    alpha: float = setting(0.5, "Dirichlet concentration: smaller = more skew", interval="> 0")
    classes_per_client: int = setting(
        2, "pathological: classes held by each client", interval=">= 1"
    )
    seed: int = setting(0, "fixes splits, partitions, initialisation, sampling, compression")
    strategy: str = setting("fedavg", "server optimiser", choices=choices.STRATEGIES)
    proximal_mu: float = setting(0.01, "FedProx proximal term weight", interval=">= 0")
    server_lr: float = setting(0.01, "FedAdam server learning rate", interval="> 0")
    local_epochs: int = setting(5, "client epochs per round", interval=">= 1")
    lr: float = setting(0.05, "client SGD learning rate", interval="> 0")
    batch_size: int = setting(16, "client batch size", interval=">= 1")
    client_test_fraction: float = setting(
        0.2, "share of each client's data held out for its local test", interval="(0, 1)"
    )
    test_fraction: float = setting(
        0.2, "central test split (server, labeled, reporting only)", interval="(0, 1)"
    )
    val_fraction: float = setting(
        0.1, "server validation split (labeled; model choices and guards)", interval="(0, 1)"
    )
    public_fraction: float = setting(
        0.25, "server public pool (labels dropped), for distillation", interval="(0, 1)"
    )
    out: str = setting(
        "", "run directory; empty: ~/fedge-runs/<time>-<dataset>", resume=True, server_only=True
    )
    ray_address: str = setting(
        "",
        "fedge simulate: an existing Ray cluster's HOST:PORT (ray start --head); empty: a "
        "local Ray on this machine",
        resume=True,
        server_only=True,
    )
    round_timeout: float = setting(
        300.0, "seconds to wait for replies in one round", interval="> 0", resume=True
    )
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
    ship_anyway: bool = setting(
        False,
        "compress and ship even a teacher that fails the quality gate",
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
        "device tiers, name:budget-us,... (e.g. mcu:15,phone:30,gateway:100): one searched "
        "student per tier within its batch-1 latency budget; a node's tier is its device-class "
        "node config, else partition id modulo the tiers; empty: one student for all",
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
    kd_sample_budget: int = setting(
        500_000,
        "cap on KD epochs x pool samples: a large pool gets fewer epochs (as many steps as 100 "
        "epochs on 5,000 samples); 0: no cap",
        interval=">= 0",
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
        "dynamic (MatMul weights only) | static | none (fp32)",
        choices=choices.QUANT_MODES,
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
        0.01, "validation accuracy int8 may lose against fp32", interval="[0, 1]", compress=True
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
    aggregation: str = setting("fedavg", "aggregation rule", choices=choices.AGGREGATIONS)
    trim_beta: float = setting(
        0.2, "trimmed-mean: share cut from each end per coordinate", interval="[0, 0.5)"
    )
    num_malicious: int = setting(
        1, "krum, multi-krum, bulyan: assumed Byzantine clients per round", interval=">= 0"
    )
    update_compression: str = setting(
        "none",
        "training updates client -> server: int8 | topk | topk+int8 of the update (delta)",
        choices=choices.UPDATE_CODECS,
    )
    topk_ratio: float = setting(0.1, "topk: share of each tensor's entries sent", interval="(0, 1]")
    update_rounding: str = setting(
        "stochastic", "int8 rounding of updates (stochastic: unbiased)", choices=choices.ROUNDINGS
    )
    error_feedback: bool = setting(
        True, "clients add what compression dropped to their next update"
    )
    downlink_compression: str = setting(
        "none",
        "the model server -> clients in training rounds: none | int8 | delta (the change since "
        "the model the node holds, coded like updates)",
        choices=choices.DOWNLINKS,
    )
    fraction_train: float = setting(
        1.0,
        "share of clients sampled to train each round (seeded; central DP: Poisson sampling)",
        interval="(0, 1]",
    )
    min_train_clients: int = setting(
        0, "sample at least this many clients per round (not with central DP)", interval=">= 0"
    )
    fraction_evaluate: float = setting(
        1.0, "share of clients in the final federated evaluation", interval="(0, 1]"
    )
    min_clients: int = setting(
        1, "fewest valid updates a round aggregates; fewer skips the round", interval=">= 1"
    )
    norm_outlier_factor: float = setting(
        10.0, "reject updates whose norm > factor x round median (0: off)", interval=">= 0"
    )
    byzantine_fraction: float = setting(
        0.0, "simulation: share of clients that attack every round", interval="[0, 1)"
    )
    byzantine_mode: str = setting(
        "sign-flip", "simulation: how attackers attack", choices=choices.BYZANTINE_MODES
    )
    byzantine_scale: float = setting(
        5.0, "sign-flip: update multiplier; gaussian: noise std", interval=">= 0"
    )
    dropout_fraction: float = setting(
        0.0, "simulation: share of clients that drop out of each round", interval="[0, 1)"
    )
    straggler_fraction: float = setting(
        0.0, "simulation: share of clients that reply late each round", interval="[0, 1)"
    )
    straggler_delay: float = setting(
        0.0, "seconds a straggler sleeps; 0: round-timeout + 1", interval=">= 0"
    )
    resume: bool = setting(
        False,
        "continue the unfinished run in `out` from its last checkpoint",
        resume=True,
        server_only=True,
    )
    dp: str = setting(
        "none",
        "none | central (client-level DP-FedAvg) | local (sample-level DP-SGD)",
        choices=choices.DP_MODES,
    )
    dp_noise: float = setting(
        1.0, "noise multiplier (ignored when dp-epsilon > 0)", interval=">= 0"
    )
    dp_clip: float = setting(
        1.0, "central: update L2 norm bound; local: per-sample gradient bound", interval="> 0"
    )
    dp_clipping: str = setting(
        "server", "central: where updates are clipped", choices=choices.DP_CLIPPING
    )
    dp_clip_mode: str = setting(
        "fixed",
        "central: fixed (dp-clip) | adaptive (Andrew et al. 2021)",
        choices=choices.DP_CLIP_MODES,
    )
    dp_clip_quantile: float = setting(
        0.5, "adaptive: share of updates the norm should leave unclipped", interval="[0, 1]"
    )
    dp_clip_lr: float = setting(
        0.2, "adaptive: geometric learning rate of the clipping norm", interval="> 0"
    )
    dp_count_noise: float = setting(
        0.0, "adaptive: clipped-count noise std; 0: max(clients/20, noise)", interval=">= 0"
    )
    dp_epsilon: float = setting(
        0.0, "> 0: derive the noise that spends exactly this epsilon over the run", interval=">= 0"
    )
    dp_delta: float = setting(1e-5, "delta of the reported (epsilon, delta)", interval="(0, 1)")
    dp_accountant: str = setting("rdp", "Opacus accountant", choices=choices.DP_ACCOUNTANTS)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and what is allowed."""
        if self.dataset not in choices.DATASETS and not self.dataset.startswith("npz:"):
            allowed = ", ".join(choices.DATASETS)
            raise ConfigError(f"unknown dataset {self.dataset!r}; allowed: {allowed}, npz:PATH")
        for spec in SETTINGS.values():
            spec.check(getattr(self, spec.name))
        config_rules.check(self)

    def incompatible_with(self, other: RunConfig) -> list[str]:
        """Settings (kebab-case) that differ and that a resumed run may not change."""
        mine, theirs = self.to_run_config(), other.to_run_config()
        return [k for k in mine if not SETTINGS[k].resume and mine[k] != theirs[k]]

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunConfig:
        """Build from kebab-case keys (Flower run_config, scenario files, CLI flags)."""
        kwargs: dict[str, Any] = {}
        for key, value in run_config.items():
            spec = lookup(key, SETTINGS)
            kwargs[spec.name] = coerce(key, value, spec.kind)
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, Any]:
        """Kebab-case dict: the inverse of from_run_config (JSON and ConfigRecord friendly)."""
        return {kebab(k): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> RunConfig:
        """Return a copy with snake_case fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def distill_from(self) -> str:
        """kd-source with auto resolved: both, or public under DP."""
        if self.kd_source != "auto":
            return self.kd_source
        return "both" if self.dp == "none" else "public"

    def one_public_student(self) -> RunConfig:
        """These settings for one student distilled on the public pool: no tiers.

        What a search's trials and finalists, a tier's student and its audit replay run.
        """
        return self.replace(kd_source="public", tiers="")

    @property
    def tier_budgets(self) -> dict[str, float]:
        """The tiers setting as name -> batch-1 latency budget (µs), in the order given."""
        return config_rules.parse_tiers(self.tiers)

    @property
    def auto_candidates(self) -> tuple[str, ...]:
        """auto-students as names, in the order given."""
        names = tuple(name.strip() for name in self.auto_students.split(",") if name.strip())
        if not names:
            raise ConfigError("auto-students must name at least one student")
        return names

    @property
    def npz_path(self) -> Path | None:
        """The user's data file when dataset is npz:PATH."""
        return Path(self.dataset[4:]) if self.dataset.startswith("npz:") else None


SETTINGS = settings_of(RunConfig)  # kebab-case key -> its declaration
COMPRESSION_SETTINGS = tuple(k for k, spec in SETTINGS.items() if spec.compress)
SERVER_ONLY_SETTINGS = tuple(k for k, spec in SETTINGS.items() if spec.server_only)
