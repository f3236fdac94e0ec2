"""The run settings of data, federated training, robustness and privacy (RunConfig holds all)."""

from __future__ import annotations

from dataclasses import dataclass

from fedge.core import choices
from fedge.core.settings import setting


@dataclass(frozen=True)
class FederationSettings:
    """The data, its split over clients, and how they train the teacher together."""

    dataset: str = setting("digits", "data: digits | mnist1d | fmnist | npz:PATH")
    data_dir: str = setting(
        "",
        "fmnist: the directory of its four IDX files; empty: $FEDGE_DATA_DIR, else Debian's "
        "/usr/share/datasets/fashion-mnist; hub: download zalando-datasets/fashion_mnist",
    )
    dataset_size: int = setting(
        0, "mnist1d: samples to generate, 80 % train (0: its own 5,000)", interval="[0, 1000000]"
    )
    clients: int = setting(10, "number of federated clients (partitions)", interval=">= 1")
    rounds: int = setting(10, "federated rounds of teacher training", interval=">= 1")
    teacher: str = setting(
        "cnn",
        "federated model: cnn (GroupNorm CNN for signals and images of 16 px and more, else a "
        "CNN/MLP) | linear (for DP) | a student architecture "
        "(federate a small model directly, no distillation)",
        choices=choices.TEACHERS,
    )
    partition: str = setting("dirichlet", "how client data is split", choices=choices.PARTITIONS)
    alpha: float = setting(0.5, "Dirichlet concentration: smaller = more skew", interval="> 0")
    classes_per_client: int = setting(
        2, "pathological: classes held by each client", interval=">= 1"
    )
    seed: int = setting(
        0,
        "fixes splits, partitions, initialisation, sampling, compression",
        # numpy's and scikit-learn's seeds take 32 bits; the splits use seed + 1 and seed + 2
        interval="[0, 4294967293]",
    )
    strategy: str = setting("fedavg", "server optimiser", choices=choices.STRATEGIES)
    proximal_mu: float = setting(0.01, "FedProx proximal term weight", interval=">= 0")
    server_lr: float = setting(0.01, "FedAdam server learning rate", interval="> 0")
    local_epochs: int = setting(5, "client epochs per round", interval=">= 1")
    local_sample_budget: int = setting(
        2000,
        "cap on a client's samples per round (epochs x samples, the last epoch cut short), "
        "teacher and student rounds: a client with much data trains as long as one with little; "
        "0: no cap (local DP-SGD trains its planned epochs)",
        interval=">= 0",
    )
    lr: float = setting(0.05, "client SGD learning rate", interval="> 0")
    batch_size: int = setting(16, "client batch size", interval=">= 1")
    augment: str = setting(
        "none",
        "random views in the teacher's local SGD (not DP-SGD): none | shift (up to 2 px or "
        "steps) | flip-shift (mirror left-right, then shift; images whose class survives it)",
        choices=choices.AUGMENTS,
    )
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
    center_inputs: str = setting(
        "none",
        "none | public: replace the inputs' shift with the public pool's mean of each input "
        "value (pixel, step or feature; the server's unlabeled data), kept in the shipped "
        "model, the scale unchanged; helps DP-SGD on a linear teacher (digits-dp); the "
        "tflite target cannot fold it for images or signals",
        choices=choices.CENTERINGS,
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
    min_installed: int = setting(
        0,
        "fewest clients that must install the bundle for the run to succeed (fedge simulate "
        "exits 4 otherwise); 0: every client connected when the bundle is sent",
        interval=">= 0",
        resume=True,
    )
    install_timing: str = setting(
        "auto",
        "how each node times the model it installed: settled (the best of three measurements "
        "half a second apart, as tier budgets are judged) | once (one measurement) | off (not "
        "timed; the report leaves its latency empty) | auto (settled; a simulation without "
        "tiers times only its first 10 clients, which share one machine)",
        choices=choices.INSTALL_TIMINGS,
        resume=True,
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
    secure_aggregation: str = setting(
        "off",
        "secagg+: the server learns only the weighted sum of each round's updates (Flower's "
        "SecAgg+ protocol; off: it sees every update)",
        choices=choices.SECURE_AGGREGATIONS,
    )
    secagg_shares: int = setting(
        0,
        "secagg+: clients each client shares its secrets with, itself included (0: every one "
        "up to 21, else 21)",
        interval=">= 0",
    )
    secagg_threshold: int = setting(
        0, "secagg+: shares that recover a dropped client's mask (0: a majority)", interval=">= 0"
    )
    secagg_clip: float = setting(
        0.0,
        "secagg+: |weight share x value| a client may mask (0: 8 for a model, 0.5 for an "
        "int8 update)",
        interval=">= 0",
    )
    secagg_quantization: int = setting(
        0,
        "secagg+: integer levels over [-clip, clip] (0: 2^22 for a model, 255 for an int8 update)",
        interval=">= 0",
    )
    secagg_modulus: int = setting(
        0,
        "secagg+: modulus of the masked sums (0: the smallest power of two above clients x levels)",
        interval=">= 0",
    )
    secagg_max_weight: int = setting(
        0,
        "secagg+: most training records of one client (0: from the run's partitions)",
        interval=">= 0",
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
        0.0,
        "> 0: derive the noise that spends exactly this epsilon over the run (every release: "
        "the teacher's rounds and the student's federated rounds)",
        interval=">= 0",
    )
    dp_teacher_epsilon: float = setting(
        0.0,
        "> 0: the part of dp-epsilon the teacher's rounds spend alone, the rest left to the "
        "student's federated rounds (kd-source auto then trains them); 0: every round at one noise",
        interval=">= 0",
    )
    dp_delta: float = setting(1e-5, "delta of the reported (epsilon, delta)", interval="(0, 1)")
    dp_accountant: str = setting("rdp", "Opacus accountant", choices=choices.DP_ACCOUNTANTS)
