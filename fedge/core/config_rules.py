"""Rules between run settings (one setting's own range is in its declaration, config.py)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from fedge.core import secagg_grid as sg
from fedge.core.archspec import is_arch, parse
from fedge.core.budgets import Budget, BudgetError, parse_budget
from fedge.core.bundle_format import TIER_NAME
from fedge.core.choices import STUDENTS
from fedge.core.sampling import poisson, train_size
from fedge.core.settings import ConfigError

if TYPE_CHECKING:
    from fedge.core.config import RunConfig


def check(cfg: RunConfig) -> None:
    """ConfigError naming the first conflict between settings and what is allowed."""
    _robustness(cfg)
    _secure_aggregation(cfg)
    _privacy(cfg)
    tiers = parse_tiers(cfg.tiers)
    if tiers and cfg.student != "auto":
        raise ConfigError(
            f"tiers search each tier's student; student {cfg.student!r} would be ignored: "
            "allowed with tiers: student auto"
        )
    if tiers and cfg.kd_source in ("federated", "both"):
        raise ConfigError(
            f"tiers distil each tier's student on the public pool, not kd-source "
            f"{cfg.kd_source!r}; allowed with tiers: kd-source public or auto"
        )
    if is_arch(cfg.student):
        try:
            parse(cfg.student)
        except ValueError as err:
            raise ConfigError(f"student: {err}") from None
    for name in cfg.auto_candidates:
        if name not in STUDENTS:
            raise ConfigError(
                f"unknown student {name!r} in auto-students; allowed: {', '.join(STUDENTS)}"
            )
    _check_augment(cfg)
    _check_teacher_epsilon(cfg)
    if cfg.qat == "always" and cfg.quant_mode != "static":
        raise ConfigError(
            f"qat always trains for static int8, but quant-mode is {cfg.quant_mode!r}; "
            "allowed with qat always: quant-mode static"
        )
    _device_targets(cfg)
    if cfg.data_dir and cfg.dataset != "fmnist":
        raise ConfigError(
            f"data-dir {cfg.data_dir!r} applies to fmnist only, not dataset {cfg.dataset!r}; "
            "allowed: data-dir empty, or dataset fmnist"
        )
    if cfg.dataset_size and cfg.dataset != "mnist1d":
        raise ConfigError(
            f"dataset-size applies to generated data only (mnist1d), not {cfg.dataset!r}; "
            "allowed: dataset-size 0 or dataset mnist1d"
        )
    if 0 < cfg.dataset_size < 1000:
        raise ConfigError(
            f"dataset-size {cfg.dataset_size} is too small to split; allowed: 0 (mnist1d's "
            "5,000) or 1000 to 1000000"
        )
    server_share = cfg.test_fraction + cfg.val_fraction + cfg.public_fraction
    if server_share >= 0.9:
        raise ConfigError(
            f"test-fraction + val-fraction + public-fraction = {server_share:.2f} leaves "
            "clients less than 10 % of the data; allowed: a sum below 0.9"
        )


def _device_targets(cfg: RunConfig) -> None:
    if "tflite" not in cfg.device_targets:
        return
    if cfg.center_inputs == "public" and not cfg.dataset.startswith("npz:"):
        raise ConfigError(
            f"center-inputs public gives every input value its own shift, which the tflite "
            f"target cannot fold for {cfg.dataset}'s inputs; allowed: center-inputs none, or "
            "device-targets without tflite"
        )
    missing = [p for p in ("tensorflow", "ai_edge_litert") if importlib.util.find_spec(p) is None]
    if missing:
        raise ConfigError(
            f"device-targets {cfg.device_targets} converts with TensorFlow and checks with "
            f"LiteRT; not installed: {', '.join(missing)}: pip install -e '.[litert]', or "
            "device-targets onnx"
        )


def _privacy(cfg: RunConfig) -> None:
    if cfg.dp_clip_mode == "adaptive" and cfg.dp != "central":
        raise ConfigError(
            f"dp-clip-mode adaptive adapts the clipping norm of client updates: it needs "
            f"dp central, got dp {cfg.dp!r} (local DP-SGD clips per sample at dp-clip)"
        )
    if cfg.dp == "local" and cfg.strategy == "fedprox":
        raise ConfigError(
            "dp local cannot use strategy 'fedprox' (its proximal term has no per-sample "
            "gradient for DP-SGD to clip); allowed: fedavg, fedadam"
        )
    if cfg.dp == "central" and cfg.teacher_mode == "ensemble":
        raise ConfigError(
            "dp central protects only the noised global model; teacher-mode 'ensemble' "
            "would distil the clients' un-noised models; allowed with dp central: global"
        )
    if cfg.dp == "central" and (cfg.strategy == "fedadam" or cfg.aggregation != "fedavg"):
        raise ConfigError(
            f"dp central needs the plain mean (strategy fedavg or fedprox, aggregation "
            f"fedavg): its noise is calibrated to it; got strategy {cfg.strategy!r}, "
            f"aggregation {cfg.aggregation!r}"
        )


def _robustness(cfg: RunConfig) -> None:
    if cfg.aggregation != "fedavg" and cfg.strategy == "fedadam":
        raise ConfigError(
            f"aggregation {cfg.aggregation!r} cannot be combined with strategy 'fedadam'; "
            "allowed with fedadam: fedavg"
        )
    if cfg.aggregation == "bulyan" and cfg.clients < 4 * cfg.num_malicious + 3:
        raise ConfigError(
            f"aggregation 'bulyan' needs clients >= 4 x num-malicious + 3 = "
            f"{4 * cfg.num_malicious + 3}, got clients={cfg.clients}"
        )
    if cfg.aggregation in ("krum", "multi-krum") and cfg.clients < 2 * cfg.num_malicious + 3:
        raise ConfigError(
            f"aggregation {cfg.aggregation!r} needs clients >= 2 x num-malicious + 3 = "
            f"{2 * cfg.num_malicious + 3}, got clients={cfg.clients}"
        )
    if cfg.min_clients > cfg.clients:
        raise ConfigError(f"min-clients must be <= clients={cfg.clients}, got {cfg.min_clients}")
    _sampling(cfg)
    if cfg.downlink_compression == "delta" and cfg.update_compression == "none":
        raise ConfigError(
            "downlink-compression delta codes the model's change like updates: set "
            "update-compression int8 | topk | topk+int8"
        )
    if cfg.update_compression != "none" and cfg.dp == "central" and cfg.dp_clipping == "client":
        raise ConfigError(
            "update-compression after client-side DP clipping could exceed the clipping norm; "
            "allowed with update-compression: dp-clipping server"
        )


def _sampling(cfg: RunConfig) -> None:
    if cfg.min_train_clients > cfg.clients:
        raise ConfigError(
            f"min-train-clients={cfg.min_train_clients} is more clients than exist; "
            f"allowed: at most clients={cfg.clients}"
        )
    if poisson(cfg) and cfg.min_train_clients:
        raise ConfigError(
            "min-train-clients cannot be combined with dp central and fraction-train < 1: "
            "each client is then sampled independently (Poisson), which the accountant needs"
        )
    if not poisson(cfg) and cfg.min_clients > train_size(cfg):
        raise ConfigError(
            f"min-clients={cfg.min_clients} exceeds the {train_size(cfg)} clients sampled per "
            "round (fraction-train x clients, at least min-train-clients); lower min-clients"
        )
    robust = cfg.aggregation in ("krum", "multi-krum", "bulyan")
    if robust and cfg.fraction_train < 1:
        need = (4 if cfg.aggregation == "bulyan" else 2) * cfg.num_malicious + 3
        if train_size(cfg) < need:
            raise ConfigError(
                f"aggregation {cfg.aggregation!r} needs >= {need} updates per round, but "
                f"fraction-train samples {train_size(cfg)}; raise fraction-train"
            )


def _check_augment(cfg: RunConfig) -> None:
    """ConfigError for augmentation that would damage the data or be silently ignored."""
    if cfg.augment == "flip-shift" and cfg.dataset in ("digits", "mnist1d"):
        raise ConfigError(
            f"augment 'flip-shift' mirrors images; {cfg.dataset} would change meaning (a mirrored "
            f"digit, a signal reversed in time); allowed for {cfg.dataset}: augment none or shift"
        )
    if cfg.augment != "none" and cfg.dp == "local":
        raise ConfigError(
            f"augment {cfg.augment!r} applies to plain local SGD, not dp local's DP-SGD; "
            "allowed with dp local: augment none"
        )


def parse_tiers(text: str) -> dict[str, Budget]:
    """`name:budget,...` as name -> Budget (fedge.core.budgets; ConfigError naming the part)."""
    out: dict[str, Budget] = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name, _, budget = part.partition(":")
        try:
            value = parse_budget(budget)
        except BudgetError as err:
            why = str(err)
        else:
            why = "" if TIER_NAME.fullmatch(name) and name not in out else "names"
        if why:
            raise ConfigError(
                f"bad tier {part!r} in tiers ({why}); format: name:budget,... with distinct "
                "lowercase names, a budget being a latency in µs or limits joined by +, e.g. "
                "mcu:flash=64k+ram=64k,phone:latency=2000,gateway:100"
            )
        out[name] = value
    if len(out) > 8:
        raise ConfigError(f"at most 8 tiers, got {len(out)}")
    return out


def _check_teacher_epsilon(cfg: RunConfig) -> None:
    """dp-teacher-epsilon: a part of dp-epsilon, with student rounds to spend the rest on."""
    value = cfg.dp_teacher_epsilon
    if value <= 0:
        return
    if cfg.dp == "none" or cfg.dp_epsilon <= 0:
        raise ConfigError(
            f"dp-teacher-epsilon={value} is a part of dp-epsilon, which is not set (dp "
            f"{cfg.dp!r}, dp-epsilon {cfg.dp_epsilon}); allowed: dp central or local with "
            "dp-epsilon > dp-teacher-epsilon, or dp-teacher-epsilon 0"
        )
    if value >= cfg.dp_epsilon:
        raise ConfigError(
            f"dp-teacher-epsilon={value} leaves nothing of dp-epsilon={cfg.dp_epsilon} to the "
            "student's rounds; allowed: 0 < dp-teacher-epsilon < dp-epsilon, or 0"
        )
    if cfg.distill_from == "public" or cfg.tiers:
        has_none = f"tiers {cfg.tiers!r}" if cfg.tiers else f"kd-source {cfg.kd_source!r}"
        raise ConfigError(
            f"dp-teacher-epsilon={value} keeps part of the budget for the student's federated "
            f"rounds, but {has_none} has none; allowed: kd-source auto, federated or both "
            "without tiers, or dp-teacher-epsilon 0"
        )


SECAGG_AUTO_SHARES = 21  # Bell et al. 2020: O(log n) neighbours suffice; 21 covers 10-1,000


def secagg_shares(cfg: RunConfig, nodes: int | None = None) -> int:
    """Clients each client shares with (itself included): odd, at most a round's clients.

    `nodes`: how many a round asks (default: the clients it samples).
    """
    clients = train_size(cfg) if nodes is None else nodes
    shares = min(cfg.secagg_shares or SECAGG_AUTO_SHARES, clients)
    return shares + 1 if shares < clients and shares % 2 == 0 else shares  # a ring: odd


def secagg_threshold(cfg: RunConfig, nodes: int | None = None) -> int:
    """Shares that recover a client's mask: secagg-threshold, or a majority of its shares."""
    return cfg.secagg_threshold or secagg_shares(cfg, nodes) // 2 + 1


def _secure_aggregation(cfg: RunConfig) -> None:
    """secagg+: only what sums the updates without seeing one (the README has the matrix)."""
    if cfg.secure_aggregation == "off":
        return
    needs_each = {
        "aggregation": (cfg.aggregation, ("fedavg",)),
        "update-compression": (cfg.update_compression, ("none", "int8")),
        "downlink-compression": (cfg.downlink_compression, ("none",)),
        "teacher-mode": (cfg.teacher_mode, ("global",)),
    }
    for key, (value, allowed) in needs_each.items():
        if value not in allowed:
            raise ConfigError(
                f"secure-aggregation secagg+ hides each update, and {key} {value!r} needs "
                f"them one by one; allowed with secagg+: {key} {' or '.join(allowed)}"
            )
    if sg.masks_update(cfg) and cfg.secagg_quantization not in (0, sg.INT8_LEVELS):
        raise ConfigError(
            f"secagg-quantization={cfg.secagg_quantization} with update-compression int8: an "
            f"int8 update is masked on the 8-bit grid ({sg.INT8_LEVELS} levels over "
            "[-secagg-clip, secagg-clip]); allowed: secagg-quantization 0 or 255, or "
            "update-compression none"
        )
    if cfg.dp == "central" and (cfg.dp_clipping, cfg.dp_clip_mode) != ("client", "fixed"):
        raise ConfigError(
            f"secure-aggregation secagg+ with dp central needs each client to clip its own "
            f"update (the server sees only the sum), and adaptive clipping counts each "
            f"clipped update; got dp-clipping {cfg.dp_clipping!r}, dp-clip-mode "
            f"{cfg.dp_clip_mode!r}; allowed with secagg+: dp-clipping client, dp-clip-mode fixed"
        )
    _secagg_group(cfg)
    _secagg_grid(cfg)


def _secagg_group(cfg: RunConfig) -> None:
    """The share group and the threshold that recovers a dropped node."""
    sampled, shares, threshold = train_size(cfg), secagg_shares(cfg), secagg_threshold(cfg)
    if shares < 3:
        raise ConfigError(
            f"secagg+ needs at least 3 clients a round to share secrets among, got {shares}"
        )
    if not shares / 2 < threshold <= shares:
        raise ConfigError(
            f"secagg-threshold={threshold} for {shares} shares a client ({sampled} clients a "
            f"round): allowed {shares // 2 + 1} to {shares} (more than half: fewer would let a "
            "server that lies about who dropped rebuild both of a client's secrets)"
        )


def _secagg_grid(cfg: RunConfig) -> None:
    """The levels and the modulus: Flower's int32 rounding, the server's int64 sum, no overflow."""
    if cfg.secagg_quantization == 1:  # one level cannot hold a value: nothing to round to
        raise ConfigError("secagg-quantization=1; allowed: 0 (the mode's default) or >= 2")
    most, levels = sg.most_clients(cfg), sg.levels(cfg)
    try:
        modulus = sg.modulus(cfg)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if levels >= 1 << 31 or most * modulus >= 1 << 63:
        raise ConfigError(
            f"secagg-quantization={levels} must be below 2^31 (Flower rounds to int32) and "
            f"{most} x secagg-modulus={modulus} below 2^63 (the server's int64 sum)"
        )
