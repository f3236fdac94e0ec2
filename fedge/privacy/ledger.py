"""The privacy ledger of a run: epsilon after every round and the summary in results.json."""

from __future__ import annotations

from typing import Any

from fedge.core.config import RunConfig
from fedge.core.sampling import poisson
from fedge.privacy.central import central_epsilon, central_noise, count_noise, effective_noise


def round_entry(
    cfg: RunConfig,
    rows: list[dict[str, Any]],
    *,
    released: bool,
    aggregated: int,
    sampled: int,
    client_epsilons: list[float],
    client_noises: list[float],
) -> dict[str, Any]:
    """The privacy fields of a round, given the rows of the rounds before it.

    central: a released aggregate spends one Gaussian step at its effective noise (lower when
    fewer than the `sampled` clients' updates were averaged); a skipped round releases nothing,
    except under Poisson client sampling, where every round counts in full (whether a round
    happened at all depends on who was sampled). local: the
    largest epsilon any replying client reports (each computes it as if it had trained in every
    round so far, an upper bound).
    """
    if cfg.dp == "central":
        noise = central_noise(cfg)
        count_std = count_noise(cfg, noise) if cfg.dp_clip_mode == "adaptive" else None
        effective = (
            effective_noise(noise, aggregated, max(1, sampled), count_std) if released else None
        )
        if poisson(cfg) and (effective is None or aggregated == 0):
            effective = noise  # a skipped round still counts, at the round's nominal noise
        history = [r["dp_noise_effective"] for r in rows if r.get("dp_noise_effective")]
        history += [effective] if effective is not None else []
        return {"dp_noise_effective": effective, "dp_epsilon": central_epsilon(history, cfg)}
    if cfg.dp == "local":
        before = max((r["dp_epsilon"] for r in rows), default=0.0)
        return {
            "dp_epsilon": max([before, *client_epsilons]),
            "dp_noise_min": min(client_noises, default=None),
        }
    return {}


def summary(cfg: RunConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """results.json "privacy": {mode, epsilon, delta, noise_multiplier, clipping_norm, ...}."""
    if cfg.dp == "none":
        return {"mode": "none", "epsilon": None, "delta": None}
    per_round = [r.get("dp_epsilon") for r in rows]
    noise = (
        central_noise(cfg)
        if cfg.dp == "central"  # local: each client derives its own noise; the smallest
        else min((r["dp_noise_min"] for r in rows if r.get("dp_noise_min")), default=None)
    )
    return {
        "mode": cfg.dp,
        "epsilon": max((e for e in per_round if e is not None), default=0.0),
        "delta": cfg.dp_delta,
        "noise_multiplier": noise,
        "clipping_norm": cfg.dp_clip,
        "clipping": f"{cfg.dp_clipping}, {cfg.dp_clip_mode}"
        if cfg.dp == "central"
        else "per-sample",
        "target_epsilon": cfg.dp_epsilon or None,
        "accountant": f"opacus-{cfg.dp_accountant}",
        "unit": "client (all of a client's data)" if cfg.dp == "central" else "one training sample",
        "per_round_epsilon": per_round,
        # central: the norm each round left for the next (moves with adaptive clipping)
        **(
            {"clipping_norm_per_round": [r.get("dp_clipping_norm") for r in rows]}
            if cfg.dp == "central"
            else {}
        ),
    }
