"""(epsilon, delta) of a composed subsampled Gaussian mechanism, from Opacus' accountants."""

from __future__ import annotations

import functools
import warnings

from fedge.core.config import ConfigError

ACCOUNTANTS = ("rdp", "prv")
MAX_NOISE = 1000.0  # a noise multiplier beyond this leaves nothing of the model


def _accountant(name: str) -> object:
    from opacus.accountants import PRVAccountant, RDPAccountant

    if name not in ACCOUNTANTS:
        raise ConfigError(f"unknown accountant {name!r}; allowed: {', '.join(ACCOUNTANTS)}")
    return RDPAccountant() if name == "rdp" else PRVAccountant()


def _check(sample_rate: float, steps: int, delta: float) -> None:
    if not 0 < sample_rate <= 1:
        raise ConfigError(f"sample rate must be in (0, 1], got {sample_rate}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


def epsilon(
    noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon at `delta` after `steps` Gaussian steps of noise std `noise_multiplier` x clip.

    Each step uses a Poisson sample of rate `sample_rate` (1.0: every record every step).
    Noise 0 gives infinite epsilon.
    """
    _check(sample_rate, steps, delta)
    return epsilon_of_history([(noise_multiplier, sample_rate, steps)], delta, accountant)


def epsilon_of_history(
    history: list[tuple[float, float, int]], delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon at `delta` of composed phases, each (noise multiplier, sample rate, steps).

    Phases may differ (e.g. a round whose effective noise dropped because clients were lost).
    No phase: 0. A phase with noise 0: infinite epsilon.
    """
    history = [h for h in history if h[2] > 0]
    if not history:
        return 0.0
    if any(noise <= 0 for noise, _, _ in history):
        return float("inf")
    acc = _accountant(accountant)
    acc.history = list(history)  # type: ignore[attr-defined]
    return float(acc.get_epsilon(delta=delta))  # type: ignore[attr-defined]


def _epsilon_at_max_noise(
    target: float, sample_rate: float, steps: int, delta: float, accountant: str
) -> float:
    """Epsilon at noise MAX_NOISE, as cheaply as deciding against `target` allows.

    RDP's bound first (milliseconds): when it meets `target` so does PRV's tighter figure,
    which is computed (seconds here) only when it does not.
    """
    with warnings.catch_warnings():  # RDP: "optimal order is the largest alpha", at this noise
        warnings.simplefilter("ignore", UserWarning)
        bound = epsilon(MAX_NOISE, sample_rate, steps, delta, "rdp")
    if accountant == "rdp" or bound <= target:
        return bound
    return min(bound, epsilon(MAX_NOISE, sample_rate, steps, delta, accountant))


@functools.lru_cache(maxsize=256)  # a pure search (seconds with PRV); clients ask every round
def noise_for_epsilon(
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """The smallest noise multiplier whose epsilon after `steps` is at most `target_epsilon`.

    ConfigError if the target is not positive or no noise reachable by the search meets it.
    """
    from opacus.accountants.utils import get_noise_multiplier

    _check(sample_rate, steps, delta)
    if not target_epsilon > 0:
        raise ConfigError(f"dp-epsilon must be > 0, got {target_epsilon}")
    _accountant(accountant)
    at_most = _epsilon_at_max_noise(target_epsilon, sample_rate, steps, delta, accountant)
    if at_most > target_epsilon:  # Opacus would double its noise past MAX_NOISE to find out
        raise ConfigError(
            f"dp-epsilon={target_epsilon} at delta={delta} cannot be met with {steps} steps at "
            f"sample rate {sample_rate}: even noise multiplier {MAX_NOISE:.0f} (nothing of the "
            f"model would survive more) gives epsilon {at_most:.3g}; raise dp-epsilon or train "
            "fewer rounds/epochs"
        )
    try:
        sigma = get_noise_multiplier(
            target_epsilon=target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=accountant,
            epsilon_tolerance=0.005,
        )
    except ValueError as err:
        raise ConfigError(
            f"dp-epsilon={target_epsilon} at delta={delta} cannot be met with {steps} steps at "
            f"sample rate {sample_rate}: {err}"
        ) from None
    if sigma > MAX_NOISE:
        raise ConfigError(
            f"dp-epsilon={target_epsilon} at delta={delta} over {steps} steps at sample rate "
            f"{sample_rate} needs noise multiplier {sigma:.0f} (> {MAX_NOISE:.0f}, nothing of the "
            "model would survive); raise dp-epsilon or train fewer rounds/epochs"
        )
    return float(sigma)


@functools.lru_cache(maxsize=256)
def noise_after(
    prior: tuple[tuple[float, float, int], ...],
    target_epsilon: float,
    sample_rate: float,
    steps: int,
    delta: float,
    accountant: str = "rdp",
) -> float:
    """The smallest noise for `steps` more steps that keeps `prior` + them within `target_epsilon`.

    `prior`: phases already planned, each (noise, sample rate, steps). A bisection on the
    noise (epsilon falls as it rises) to 0.2 % of the noise; ConfigError when the prior
    phases alone spend the target or no noise up to MAX_NOISE meets it.
    """
    _check(sample_rate, steps, delta)
    spent = epsilon_of_history(list(prior), delta, accountant)
    if spent >= target_epsilon:
        raise ConfigError(
            f"the earlier releases already spend epsilon {spent:.3g} of the budget "
            f"{target_epsilon} at delta={delta}: nothing is left for {steps} more steps"
        )

    def total(noise: float) -> float:
        return epsilon_of_history([*prior, (noise, sample_rate, steps)], delta, accountant)

    low, high = 0.0, 1.0
    while total(high) > target_epsilon:
        low, high = high, high * 2
        if high > MAX_NOISE:
            raise ConfigError(
                f"epsilon budget {target_epsilon} at delta={delta} leaves too little for {steps} "
                f"more steps at sample rate {sample_rate} after epsilon {spent:.3g}: even noise "
                f"multiplier {MAX_NOISE:.0f} does not meet it; raise the budget or train fewer "
                "rounds/epochs"
            )
    while high - low > 2e-3 * high:
        middle = (low + high) / 2
        if total(middle) <= target_epsilon:
            high = middle
        else:
            low = middle
    return float(high)
