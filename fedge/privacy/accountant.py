"""(epsilon, delta) of a composed subsampled Gaussian mechanism, from Opacus' accountants."""

from __future__ import annotations

from fedge.core.config import ConfigError

ACCOUNTANTS = ("rdp", "prv")


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
    if noise_multiplier <= 0:
        return float("inf")
    acc = _accountant(accountant)
    acc.history = [(noise_multiplier, sample_rate, steps)]  # type: ignore[attr-defined]
    return float(acc.get_epsilon(delta=delta))  # type: ignore[attr-defined]


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
    return float(sigma)
