"""The typed run configuration: built once from Flower's run_config, validated, kebab on the wire."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATASETS = ("digits", "mnist1d")  # plus "npz:PATH"
PARTITIONS = ("iid", "dirichlet", "pathological")
STRATEGIES = ("fedavg", "fedprox", "fedadam")
TEACHERS = ("cnn", "linear")  # the federated model (fedge.core.models)
# Student family, from fewest bytes (and cheapest) to most: `fedge compress` tries them in order.
STUDENTS = ("tiny", "small-fast", "small", "medium-fast", "medium")
QUANT_FORMATS = ("qdq", "qoperator")
QUANT_MODES = ("static", "dynamic", "none")
QUANT_CALIBRATIONS = ("minmax", "entropy", "percentile")
TEACHER_MODES = ("global", "ensemble")
KD_LABELS = ("hard", "soft")
KD_QUERIES = ("pool", "augmented")
DP_MODES = ("none", "central", "local")
DP_CLIPPING = ("server", "client")
DP_CLIP_MODES = ("fixed", "adaptive")
DP_ACCOUNTANTS = ("rdp", "prv")
AGGREGATIONS = ("fedavg", "median", "trimmed-mean", "krum", "multi-krum", "bulyan")
BYZANTINE_MODES = ("sign-flip", "gaussian", "label-flip")
# Settings a resumed run may change: where it lives, how long a round may wait, the resume flag.
RESUMABLE_CHANGES = ("out", "round-timeout", "resume")


class ConfigError(ValueError):
    """A run setting has a bad value; the message names it and what is allowed."""


@dataclass(frozen=True)
class RunConfig:
    """Every setting of one fedge run (the pyproject `[tool.flwr.app.config]` has the same)."""

    dataset: str = "digits"  # digits | mnist1d | npz:PATH
    clients: int = 10  # number of federated clients (partitions)
    rounds: int = 10  # federated rounds of teacher training
    teacher: str = "cnn"  # cnn (wide CNN/MLP) | linear (logistic regression, for DP)
    partition: str = "dirichlet"  # iid | dirichlet | pathological
    alpha: float = 0.5  # Dirichlet concentration: smaller = more skew
    classes_per_client: int = 2  # pathological: classes held by each client
    seed: int = 0  # fixes splits, partitions, initialisation and sampling
    strategy: str = "fedavg"  # fedavg | fedprox | fedadam
    proximal_mu: float = 0.01  # FedProx proximal term weight
    server_lr: float = 0.01  # FedAdam server learning rate
    local_epochs: int = 5  # client epochs per round
    lr: float = 0.05  # client SGD learning rate
    batch_size: int = 16  # client batch size
    client_test_fraction: float = 0.2  # share of each client's data held out for local test
    test_fraction: float = 0.2  # central test split (server, labeled, reporting only)
    val_fraction: float = 0.1  # server validation split (labeled, model choices and guards)
    public_fraction: float = 0.25  # server public pool (labels dropped), for distillation
    out: str = ""  # run directory; "" means ./runs/<time>-<dataset>
    round_timeout: float = 300.0  # seconds to wait for replies in one round
    student: str = "small-fast"  # tiny | small-fast | small | medium-fast | medium
    kd_temperature: float = 4.0  # Hinton KD softmax temperature
    kd_epochs: int = 400  # distillation epochs over the public pool
    # What the student learns from: the teacher's top class (hard) on the pool's own samples
    # (pool) leaks far less membership than soft labels on augmented views (see README, Privacy).
    kd_labels: str = "hard"  # hard (teacher's top class) | soft (tempered probabilities)
    kd_queries: str = "pool"  # teacher labels: pool (the samples only) | augmented (every view)
    prune_ratio: float = 0.0  # share of channels/units structurally removed (0 = no pruning)
    finetune_epochs: int = 60  # KD fine-tuning epochs after pruning
    sparsity: float = 0.0  # unstructured magnitude pruning share (shrinks gzip size only)
    quant_format: str = "qdq"  # qdq | qoperator (onnxruntime static quantization)
    quant_per_channel: bool = True  # per-channel weight scales
    quant_mode: str = "dynamic"  # dynamic (MatMul weights only) | static | none (fp32)
    quant_calibration: str = "minmax"  # minmax | entropy | percentile (static mode)
    quant_calibration_samples: int = 256  # public-pool samples for calibration
    int8_tolerance: float = 0.01  # max validation accuracy int8 may lose vs fp32
    teacher_mode: str = "global"  # global model | ensemble: the last round's clients' mean logits
    ensemble_views: int = 16  # ensemble: transfer set = public pool + (views - 1) augmented copies
    private_key: str = ""  # Ed25519 private key PEM; "" generates one per run
    aggregation: str = "fedavg"  # fedavg | median | trimmed-mean | krum | multi-krum | bulyan
    trim_beta: float = 0.2  # trimmed-mean: share cut from each end per coordinate
    num_malicious: int = 1  # krum, multi-krum, bulyan: assumed Byzantine clients per round
    min_clients: int = 1  # fewest valid updates a round aggregates; fewer skips the round
    norm_outlier_factor: float = 10.0  # reject updates whose norm > factor x round median (0 = off)
    byzantine_fraction: float = 0.0  # simulation: share of clients that attack every round
    byzantine_mode: str = "sign-flip"  # sign-flip | gaussian | label-flip
    byzantine_scale: float = 5.0  # sign-flip: update multiplier; gaussian: noise std
    dropout_fraction: float = 0.0  # simulation: share of clients that drop out of each round
    straggler_fraction: float = 0.0  # simulation: share of clients that reply late each round
    straggler_delay: float = 0.0  # seconds a straggler sleeps; 0 = round-timeout + 1
    resume: bool = False  # continue the unfinished run in `out` from its last checkpoint
    dp: str = "none"  # none | central (client-level DP-FedAvg) | local (sample-level DP-SGD)
    dp_noise: float = 1.0  # noise multiplier (ignored when dp-epsilon > 0)
    dp_clip: float = 1.0  # central: update L2 norm bound; local: per-sample gradient norm bound
    dp_clipping: str = "server"  # central: where updates are clipped: server | client
    dp_clip_mode: str = "fixed"  # central: fixed (dp-clip) | adaptive (Andrew et al. 2021)
    dp_clip_quantile: float = 0.5  # adaptive: share of updates the norm should leave unclipped
    dp_clip_lr: float = 0.2  # adaptive: geometric learning rate of the clipping norm
    dp_count_noise: float = 0.0  # adaptive: clipped-count noise std; 0 = max(clients/20, noise)
    dp_epsilon: float = 0.0  # > 0: derive the noise that spends exactly this epsilon over the run
    dp_delta: float = 1e-5  # delta of the reported (epsilon, delta)
    dp_accountant: str = "rdp"  # rdp | prv (Opacus)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError naming the first bad value and what is allowed."""
        if self.dataset not in DATASETS and not self.dataset.startswith("npz:"):
            allowed = ", ".join(DATASETS)
            raise ConfigError(f"unknown dataset {self.dataset!r}; allowed: {allowed}, npz:PATH")
        _one_of("partition", self.partition, PARTITIONS)
        _one_of("strategy", self.strategy, STRATEGIES)
        _one_of("teacher", self.teacher, TEACHERS)
        _one_of("student", self.student, STUDENTS)
        _one_of("quant-format", self.quant_format, QUANT_FORMATS)
        _one_of("quant-mode", self.quant_mode, QUANT_MODES)
        _one_of("quant-calibration", self.quant_calibration, QUANT_CALIBRATIONS)
        _at_least("quant-calibration-samples", self.quant_calibration_samples, 1)
        _one_of("aggregation", self.aggregation, AGGREGATIONS)
        _one_of("teacher-mode", self.teacher_mode, TEACHER_MODES)
        _one_of("kd-labels", self.kd_labels, KD_LABELS)
        _one_of("kd-queries", self.kd_queries, KD_QUERIES)
        _at_least("ensemble-views", self.ensemble_views, 1)
        _one_of("byzantine-mode", self.byzantine_mode, BYZANTINE_MODES)
        _at_least("clients", self.clients, 1)
        _at_least("rounds", self.rounds, 1)
        _at_least("local-epochs", self.local_epochs, 1)
        _at_least("batch-size", self.batch_size, 1)
        _at_least("classes-per-client", self.classes_per_client, 1)
        _at_least("kd-epochs", self.kd_epochs, 0)
        _at_least("finetune-epochs", self.finetune_epochs, 0)
        _at_least("min-clients", self.min_clients, 1)
        _at_least("num-malicious", self.num_malicious, 0)
        self._validate_robustness()
        self._validate_privacy()
        for name in ("alpha", "lr", "kd-temperature", "round-timeout", "server-lr"):
            value = getattr(self, name.replace("-", "_"))
            if not value > 0:
                raise ConfigError(f"{name} must be > 0, got {value}")
        if self.proximal_mu < 0:
            raise ConfigError(f"proximal-mu must be >= 0, got {self.proximal_mu}")
        if not 0 <= self.prune_ratio < 1:
            raise ConfigError(f"prune-ratio must be in [0, 1), got {self.prune_ratio}")
        if not 0 <= self.sparsity < 1:
            raise ConfigError(f"sparsity must be in [0, 1), got {self.sparsity}")
        if not 0 <= self.int8_tolerance <= 1:
            raise ConfigError(f"int8-tolerance must be in [0, 1], got {self.int8_tolerance}")
        for name in ("client-test-fraction", "test-fraction", "val-fraction", "public-fraction"):
            value = getattr(self, name.replace("-", "_"))
            if not 0 < value < 1:
                raise ConfigError(f"{name} must be in (0, 1), got {value}")
        server_share = self.test_fraction + self.val_fraction + self.public_fraction
        if server_share >= 0.9:
            raise ConfigError(
                f"test-fraction + val-fraction + public-fraction = {server_share:.2f} leaves "
                "clients less than 10 % of the data; allowed: a sum below 0.9"
            )

    def _validate_privacy(self) -> None:
        _one_of("dp", self.dp, DP_MODES)
        _one_of("dp-clipping", self.dp_clipping, DP_CLIPPING)
        _one_of("dp-accountant", self.dp_accountant, DP_ACCOUNTANTS)
        _one_of("dp-clip-mode", self.dp_clip_mode, DP_CLIP_MODES)
        if not 0 <= self.dp_clip_quantile <= 1:
            raise ConfigError(f"dp-clip-quantile must be in [0, 1], got {self.dp_clip_quantile}")
        if not self.dp_clip_lr > 0 or self.dp_count_noise < 0:
            raise ConfigError(
                f"dp-clip-lr must be > 0 and dp-count-noise >= 0, got {self.dp_clip_lr}, "
                f"{self.dp_count_noise}"
            )
        if self.dp_clip_mode == "adaptive" and self.dp != "central":
            raise ConfigError(
                f"dp-clip-mode adaptive adapts the clipping norm of client updates: it needs "
                f"dp central, got dp {self.dp!r} (local DP-SGD clips per sample at dp-clip)"
            )
        if self.dp_noise < 0 or self.dp_epsilon < 0:
            raise ConfigError(
                f"dp-noise and dp-epsilon must be >= 0, got {self.dp_noise}, {self.dp_epsilon}"
            )
        if not self.dp_clip > 0:
            raise ConfigError(f"dp-clip must be > 0, got {self.dp_clip}")
        if not 0 < self.dp_delta < 1:
            raise ConfigError(f"dp-delta must be in (0, 1), got {self.dp_delta}")
        if self.dp == "local" and self.strategy == "fedprox":
            raise ConfigError(
                "dp local cannot use strategy 'fedprox' (its proximal term has no per-sample "
                "gradient for DP-SGD to clip); allowed: fedavg, fedadam"
            )
        if self.dp == "central" and self.teacher_mode == "ensemble":
            raise ConfigError(
                "dp central protects only the noised global model; teacher-mode 'ensemble' "
                "would distil the clients' un-noised models; allowed with dp central: global"
            )
        if self.dp == "central" and (self.strategy == "fedadam" or self.aggregation != "fedavg"):
            raise ConfigError(
                f"dp central needs the plain mean (strategy fedavg or fedprox, aggregation "
                f"fedavg): its noise is calibrated to it; got strategy {self.strategy!r}, "
                f"aggregation {self.aggregation!r}"
            )

    def _validate_robustness(self) -> None:
        for name in ("byzantine-fraction", "dropout-fraction", "straggler-fraction"):
            value = getattr(self, name.replace("-", "_"))
            if not 0 <= value < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {value}")
        if not 0 <= self.trim_beta < 0.5:
            raise ConfigError(f"trim-beta must be in [0, 0.5), got {self.trim_beta}")
        for name in ("norm-outlier-factor", "byzantine-scale", "straggler-delay"):
            value = getattr(self, name.replace("-", "_"))
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if self.aggregation != "fedavg" and self.strategy == "fedadam":
            raise ConfigError(
                f"aggregation {self.aggregation!r} cannot be combined with strategy 'fedadam'; "
                "allowed with fedadam: fedavg"
            )
        if self.aggregation == "bulyan" and self.clients < 4 * self.num_malicious + 3:
            raise ConfigError(
                f"aggregation 'bulyan' needs clients >= 4 x num-malicious + 3 = "
                f"{4 * self.num_malicious + 3}, got clients={self.clients}"
            )
        if self.aggregation in ("krum", "multi-krum") and self.clients < 2 * self.num_malicious + 3:
            raise ConfigError(
                f"aggregation {self.aggregation!r} needs clients >= 2 x num-malicious + 3 = "
                f"{2 * self.num_malicious + 3}, got clients={self.clients}"
            )
        if self.min_clients > self.clients:
            raise ConfigError(
                f"min-clients must be <= clients={self.clients}, got {self.min_clients}"
            )

    def incompatible_with(self, other: RunConfig) -> list[str]:
        """Settings (kebab-case) that differ and that a resumed run may not change."""
        mine, theirs = self.to_run_config(), other.to_run_config()
        return [k for k in mine if k not in RESUMABLE_CHANGES and mine[k] != theirs[k]]

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunConfig:
        """Build from kebab-case keys (Flower run_config, scenario files, CLI flags)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name not in known:
                allowed = ", ".join(sorted(kebab(n) for n in known))
                raise ConfigError(f"unknown setting {key!r}; allowed: {allowed}")
            kwargs[name] = _coerce(key, value, type(getattr(cls(), name)))
        return cls(**kwargs)

    def to_run_config(self) -> dict[str, Any]:
        """Kebab-case dict: the inverse of from_run_config (JSON and ConfigRecord friendly)."""
        return {kebab(k): v for k, v in dataclasses.asdict(self).items()}

    def replace(self, **changes: Any) -> RunConfig:
        """Return a copy with snake_case fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    @property
    def npz_path(self) -> Path | None:
        """The user's data file when dataset is npz:PATH."""
        return Path(self.dataset[4:]) if self.dataset.startswith("npz:") else None


def kebab(name: str) -> str:
    """snake_case -> kebab-case."""
    return name.replace("_", "-")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def _at_least(name: str, value: int, low: int) -> None:
    if value < low:
        raise ConfigError(f"{name} must be >= {low}, got {value}")


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Accept TOML/JSON types; ints where floats are expected. No parsing of strings."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is bool and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if not isinstance(value, kind):
        raise ConfigError(f"{key} must be a {kind.__name__}, got {value!r}")
    return value
