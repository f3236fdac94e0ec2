"""A test-only fault: DP noise applied below what the accountant was told, for the audit to catch.

`FEDGE_TEST_NOISE_SCALE=s` (0 < s < 1) multiplies every noise multiplier where noise is added
(Opacus' DP-SGD on the clients, Flower's central-DP wrapper on the server, the audit's replay)
while the accountant, the ledger and results.json keep the calibrated figure: a deliberate
calibration bug. It exists so a test can show that `fedge audit`'s empirical lower bound on
epsilon exceeds the claimed epsilon when the noise is too small; nothing else sets it, and every
use logs a warning. Unset (the normal case) the noise is the calibrated one.
"""

from __future__ import annotations

import logging
import math
import os

log = logging.getLogger("fedge")
ENV = "FEDGE_TEST_NOISE_SCALE"


def applied_noise(noise: float) -> float:
    """The noise multiplier actually applied: `noise`, or `noise` x the test-only scale."""
    raw = os.environ.get(ENV)
    if raw is None:
        return noise
    try:
        scale = float(raw)
    except ValueError:
        scale = math.nan
    if not 0.0 < scale < 1.0:
        raise ValueError(f"{ENV}={raw!r}: a test-only scale in (0, 1); unset it for real runs")
    log.warning(
        "%s=%s: noise %.4g applied as %.4g, below the accountant's calibration (test only)",
        ENV, raw, noise, noise * scale,
    )  # fmt: skip
    return noise * scale
