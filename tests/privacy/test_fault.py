"""The test-only noise fault: off unless set, and only a scale in (0, 1) is accepted."""

import pytest

from fedge.privacy.fault import ENV, applied_noise


def test_unset_the_calibrated_noise_is_applied(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert applied_noise(1.7) == 1.7


def test_set_it_scales_the_noise_and_says_so(monkeypatch, caplog):
    monkeypatch.setenv(ENV, "0.25")
    assert applied_noise(2.0) == 0.5
    assert "below the accountant's calibration (test only)" in caplog.text


@pytest.mark.parametrize("raw", ["1", "0", "-0.5", "lots", ""])
def test_a_scale_that_would_not_lower_the_noise_is_refused(monkeypatch, raw):
    monkeypatch.setenv(ENV, raw)
    with pytest.raises(ValueError, match=rf"{ENV}='{raw}': a test-only scale in \(0, 1\)"):
        applied_noise(1.0)
