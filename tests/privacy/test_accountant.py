"""The privacy accountant against the closed form, and its inverse."""

import math

import numpy as np
import pytest

from fedge.core.config import ConfigError
from fedge.privacy.accountant import epsilon, noise_for_epsilon


def _gaussian_epsilon_by_hand(sigma: float, steps: int, delta: float) -> float:
    """No subsampling: RDP of order a is steps * a / (2 sigma^2) (Mironov 2017, Prop. 7),
    converted with the bound of Balle et al. 2020 that Opacus uses, minimised over the orders
    Opacus tries."""
    orders = np.array([1 + x / 10.0 for x in range(1, 100)] + list(range(12, 64)))
    rdp = steps * orders / (2 * sigma**2)
    eps = rdp - (np.log(delta) + np.log(orders)) / (orders - 1) + np.log((orders - 1) / orders)
    return float(np.nanmin(eps))


@pytest.mark.parametrize(("sigma", "steps"), [(1.0, 10), (5.0, 10), (2.0, 100)])
def test_epsilon_without_subsampling_matches_the_closed_form(sigma, steps):
    assert epsilon(sigma, 1.0, steps, 1e-5) == pytest.approx(
        _gaussian_epsilon_by_hand(sigma, steps, 1e-5), rel=1e-6
    )


def test_epsilon_grows_with_steps_and_sampling_and_shrinks_with_noise():
    base = epsilon(1.0, 0.01, 1000, 1e-5)
    assert epsilon(1.0, 0.01, 2000, 1e-5) > base
    assert epsilon(1.0, 0.02, 1000, 1e-5) > base
    assert epsilon(2.0, 0.01, 1000, 1e-5) < base
    assert math.isinf(epsilon(0.0, 0.01, 1000, 1e-5))


def test_noise_for_epsilon_inverts_the_accountant():
    sigma = noise_for_epsilon(3.0, 0.02, 500, 1e-5)
    assert epsilon(sigma, 0.02, 500, 1e-5) <= 3.0
    assert epsilon(sigma * 0.97, 0.02, 500, 1e-5) > 3.0  # not much more noise than needed


def test_bad_privacy_settings_name_the_value():
    with pytest.raises(ConfigError, match="dp-epsilon must be > 0"):
        noise_for_epsilon(0.0, 0.1, 10, 1e-5)
    with pytest.raises(ConfigError, match="delta must be in"):
        epsilon(1.0, 0.1, 10, 0.0)
    with pytest.raises(ConfigError, match="unknown accountant 'moments'"):
        epsilon(1.0, 0.1, 10, 1e-5, accountant="moments")
