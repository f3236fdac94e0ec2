"""Flower's central-DP wrappers around a strategy, with fedge's corrections (clipping, estimator)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.serverapp.strategy import (
    DifferentialPrivacyClientSideAdaptiveClipping,
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideAdaptiveClipping,
    DifferentialPrivacyServerSideFixedClipping,
)

from fedge.core import messages as m
from fedge.core.config import RunConfig
from fedge.core.sampling import train_size
from fedge.privacy import ledger
from fedge.privacy.central import count_noise, next_clipping_norm
from fedge.privacy.fault import applied_noise
from fedge.server.replies import BadReplyError, metrics_of, number


class _AndrewClipping:
    """Two corrections to Flower 1.41's adaptive clipping wrappers (mixed in before them).

    1. Direction: Flower moves the norm by exp(-lr x (clipped share - quantile)), so a round in
       which most updates were clipped shrinks the norm further and it collapses towards 0.
       Andrew et al. move it by exp(-lr x (unclipped share - quantile)): here `quantile` is the
       share of updates the norm should leave unclipped (dp-clip-quantile).
    2. Order: Flower updates the norm before it noises the aggregate, so a round whose updates
       were clipped at C gets noise calibrated to the new norm; when the norm shrank, that noise
       is too small for the round's sensitivity. Here the new norm takes effect after the round.
    """

    clipping_norm: float
    cfg: RunConfig
    _next_norm: float | None = None

    def _geometric_update(self, clipped_fraction: float) -> None:
        self._next_norm = next_clipping_norm(self.clipping_norm, clipped_fraction, self.cfg)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        """Flower's aggregation (clip, count, noise at this round's norm), then the new norm."""
        self._next_norm = None
        result = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if self._next_norm is not None:
            self.clipping_norm = self._next_norm
        return result


class _FixedDenominator:
    """The clipped updates' sum over the round's expected number of clients, not its replies.

    Under Poisson sampling the number of clients in a round varies, and whether one client
    took part changes it. Flower's FedAvg inside the wrapper averages over the replies: it
    divides by a count the accountant does not cover, and when fewer clients came than
    expected the noise, calibrated to clip / expected, is too small for that round's
    sensitivity, clip / replies. DP-FedAvg's fixed-denominator estimator (McMahan et al. 2018)
    moves the model by the sum of clipped updates / expected clients, the sensitivity the noise
    is calibrated to. When every expected client replies (no sampling, no failure), nothing
    changes.
    """

    num_sampled_clients: int
    _round_start: ArrayRecord | None = None
    _replies = 0

    def configure_train(self, server_round: int, arrays: ArrayRecord, *args: Any) -> Any:
        """The round's starting model, kept to rescale its update; then the wrapper's own."""
        self._round_start = arrays
        return super().configure_train(server_round, arrays, *args)  # type: ignore[misc]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> Any:
        """Count the updates the replies hold, then the wrapper's aggregation.

        A reply is one update, except SecAgg+'s one aggregate reply, which says how many it
        sums (clients' replies cannot: their metrics are rebuilt from the declared keys).
        """
        replies = list(replies)
        self._replies = sum(_updates_in(reply) for reply in replies if reply.has_content())
        return super().aggregate_train(server_round, replies)  # type: ignore[misc]

    def _noisy_fraction(self, count: int, total: int) -> float:
        """Adaptive clipping's noisy clipped share, over the expected count too (Andrew et al.)."""
        share: float = super()._noisy_fraction(count, self.num_sampled_clients)  # type: ignore[misc]
        return share

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        noised: ArrayRecord = super()._add_noise_to_aggregated_arrays(  # type: ignore[misc]
            fixed_denominator(
                aggregated, self._round_start, self._replies, self.num_sampled_clients
            )
        )
        return noised


def _updates_in(reply: Message) -> int:
    metrics = reply.content.metric_records.get(m.METRICS)
    value = metrics.get(m.CONTRIBUTORS, 1) if metrics is not None else 1
    return int(value) if isinstance(value, int) and value > 0 else 1


def fixed_denominator(
    mean: ArrayRecord, start: ArrayRecord | None, replies: int, expected: int
) -> ArrayRecord:
    """The update's sum over `expected` clients: start + (mean - start) x replies / expected."""
    if start is None or replies in (0, expected):
        return mean
    share = replies / expected
    moved = {}
    for key, array in mean.items():
        new, old = array.numpy(), start[key].numpy()
        moved[key] = Array(np.asarray(old + share * (new - old), dtype=new.dtype))
    return ArrayRecord(moved)


class ServerSideAdaptiveClipping(
    _AndrewClipping, _FixedDenominator, DifferentialPrivacyServerSideAdaptiveClipping
):
    """Flower's server-side adaptive clipping with fedge's corrections."""


class ClientSideAdaptiveClipping(
    _AndrewClipping, _FixedDenominator, DifferentialPrivacyClientSideAdaptiveClipping
):
    """Flower's client-side adaptive clipping with fedge's corrections."""


class ServerSideFixedClipping(_FixedDenominator, DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping with the fixed-denominator estimator."""


class ClientSideFixedClipping(_FixedDenominator, DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed clipping with the fixed-denominator estimator."""


def wrap(strategy: Any, cfg: RunConfig, noise: float) -> Any:
    """The strategy inside Flower's DP wrapper: clip each update to dp-clip, add Gaussian noise.

    Noise std on the mean is noise x dp-clip / clients in the round (set per round under
    client sampling). Clipping happens on the server or, with
    dp-clipping client, in each client's `fixedclipping_mod` before the update leaves the node.
    """
    noise = applied_noise(noise)  # as calibrated, except under the test-only fault
    if cfg.dp_clip_mode == "adaptive":
        adaptive = (
            ServerSideAdaptiveClipping
            if cfg.dp_clipping == "server"
            else ClientSideAdaptiveClipping
        )
        wrapper = adaptive(
            strategy,
            noise,
            num_sampled_clients=train_size(cfg),
            initial_clipping_norm=cfg.dp_clip,
            target_clipped_quantile=cfg.dp_clip_quantile,
            clip_norm_lr=cfg.dp_clip_lr,
            clipped_count_stddev=count_noise(cfg, noise),
        )
        wrapper.cfg = cfg  # the update rule reads dp-clip-lr and dp-clip-quantile from it
        return wrapper
    fixed = ServerSideFixedClipping if cfg.dp_clipping == "server" else ClientSideFixedClipping
    return fixed(strategy, noise, cfg.dp_clip, num_sampled_clients=train_size(cfg))


def round_privacy(
    cfg: RunConfig,
    strategy: Any,
    rounds: list[dict[str, Any]],
    ok: dict[int, Message],
    aggregated: int,
    skipped: str | None,
    phase: str = "teacher",
) -> dict[str, Any]:
    """A round's DP bookkeeping (its row in results.json): the clipping norm and the ledger's entry.

    `rounds`: the rows of every earlier round of the run, whichever phase (teacher | student).
    """
    entry: dict[str, Any] = {}
    if cfg.dp == "central":  # the norm the next round clips to (adaptive: just updated)
        entry["dp_clipping_norm"] = float(strategy.clipping_norm)
    # Adaptive clipping releases its noisy clipped count whenever the wrapper aggregated, even
    # if the model it returned is then discarded: such a round is spent in full (upper bound).
    released = skipped is None or (aggregated >= cfg.min_clients and cfg.dp_clip_mode == "adaptive")
    entry.update(
        ledger.round_entry(
            cfg,
            rounds,
            phase=phase,
            released=released,
            aggregated=aggregated,
            client_epsilons=_reported(ok, m.DP_EPSILON),
            client_noises=_reported(ok, m.DP_NOISE),
        )
    )
    return entry


def _reported(replies: dict[int, Message], key: str) -> list[float]:
    """A metric every reply that reports it well-formed reports (e.g. local DP's epsilon)."""
    values = []
    for reply in replies.values():
        try:
            values.append(number(metrics_of(reply), key, 0.0, infinite=True))
        except BadReplyError:
            continue
    return values
