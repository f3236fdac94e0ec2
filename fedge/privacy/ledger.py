"""The privacy ledger of a run: epsilon after every round and the summary in results.json."""

from __future__ import annotations

from typing import Any

from fedge.core.config import RunConfig
from fedge.core.sampling import poisson
from fedge.privacy.central import central_epsilon, central_noise


def round_entry(
    cfg: RunConfig,
    rows: list[dict[str, Any]],
    *,
    phase: str = "teacher",
    released: bool,
    aggregated: int,
    client_epsilons: list[float],
    client_noises: list[float],
) -> dict[str, Any]:
    """The privacy fields of a round of `phase`, given the rows of every round before it.

    The rows are the teacher's, then any student's: the ledger composes all of them.

    central: a released aggregate spends one Gaussian step at the calibrated noise (the server
    divides the clipped sum by the expected count, so a round that lost clients gives each the
    same protection: fedge.server.central_dp); a skipped round releases nothing,
    except under Poisson client sampling, where every round counts in full (whether a round
    happened at all depends on who was sampled). local: the
    largest epsilon any replying client reports (each computes it as if it had trained in every
    round so far, an upper bound).
    """
    if cfg.dp == "central":
        noise = central_noise(cfg, phase)
        effective = noise if released else None
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


Release = tuple[str, list[dict[str, Any]]]  # (what was released, its rounds' rows)
TEACHER_RELEASE = "teacher rounds"


def summary(
    cfg: RunConfig, rows: list[dict[str, Any]], students: list[Release] | None = None
) -> dict[str, Any]:
    """results.json "privacy": {mode, epsilon, delta, noise_multiplier, clipping_norm, ...}.

    `rows`: the teacher's rounds; `students`: each student's federated rounds, in the order
    they ran. "epsilon" is the total over all of them ("releases" lists each).
    """
    if cfg.dp == "none":
        return {"mode": "none", "epsilon": None, "delta": None}
    phases = [(TEACHER_RELEASE, rows), *(students or [])]
    every = [r.get("dp_epsilon") for _, phase in phases for r in phase]
    per_round = [r.get("dp_epsilon") for r in rows]
    noise = (
        central_noise(cfg)
        if cfg.dp == "central"  # local: each client derives its own noise; the smallest
        else min((r["dp_noise_min"] for r in rows if r.get("dp_noise_min")), default=None)
    )
    return {
        "mode": cfg.dp,
        "epsilon": max((e for e in every if e is not None), default=0.0),
        "releases": [_release(cfg, name, phase) for name, phase in phases],
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


def _release(cfg: RunConfig, name: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """One release in the ledger: its rounds, their noise and the total epsilon after it."""
    spent = [r["dp_epsilon"] for r in rows if r.get("dp_epsilon") is not None]
    noise = (
        central_noise(cfg, "student" if name != TEACHER_RELEASE else "teacher")
        if cfg.dp == "central"
        else min((r["dp_noise_min"] for r in rows if r.get("dp_noise_min")), default=None)
    )
    return {
        "release": name,
        "rounds": len(rows),
        "noise_multiplier": noise,
        "epsilon_after": max(spent, default=None),
    }
