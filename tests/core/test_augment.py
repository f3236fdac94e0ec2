"""Teacher augmentation: seeded views of the right shape, images only mirrored, used in training."""

import numpy as np
import pytest
import torch

from fedge.core.augment import flip_shift, random_flip, random_shift, teacher_view
from fedge.core.models import build_teacher
from fedge.core.training import get_weights, train


def test_views_are_seeded_shape_keeping_and_move_pixels():
    batch = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    one = flip_shift(batch, torch.Generator().manual_seed(3))
    two = flip_shift(batch, torch.Generator().manual_seed(3))
    assert one.shape == batch.shape and torch.equal(one, two)
    flips = [random_flip(batch, torch.Generator().manual_seed(s)) for s in range(20)]
    mirrored = [torch.equal(f[0], batch[0].flip(-1)) for f in flips]
    assert any(mirrored) and not all(mirrored)  # each sample flips with probability 1/2
    assert all(torch.equal(f[0], batch[0]) for f, m in zip(flips, mirrored, strict=True) if not m)
    shifted = random_shift(batch, 2, torch.Generator().manual_seed(0))
    assert not torch.equal(shifted, batch) and (shifted == 0).any()  # zero padding came in
    flat = torch.ones(4, 8)
    assert torch.equal(random_shift(flat, 2, torch.Generator()), flat)
    signals = torch.arange(40.0).view(4, 1, 10)  # never reversed in time
    assert all(torch.equal(random_flip(signals, torch.Generator().manual_seed(s)), signals)
               for s in range(10))  # fmt: skip


def test_augment_settings_that_would_damage_the_data_or_be_ignored_are_refused():
    from fedge.core.config import ConfigError, RunConfig

    for dataset in ("mnist1d", "digits"):
        with pytest.raises(ConfigError, match=f"mirrors images; {dataset} would change meaning"):
            RunConfig(dataset=dataset, augment="flip-shift")
    with pytest.raises(ConfigError, match="not dp local's DP-SGD"):
        RunConfig(augment="shift", dp="local", teacher="linear")
    assert RunConfig(dataset="mnist1d", augment="shift").augment == "shift"


def test_the_setting_names_the_view_and_training_uses_it():
    assert teacher_view("none") is None and teacher_view("flip-shift") is flip_shift
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 1, 8, 8)).astype(np.float32)
    y = rng.integers(0, 10, 64)

    def trained(view):
        model = build_teacher((1, 8, 8), 10, seed=0)
        train(model, x, y, epochs=1, lr=0.05, batch_size=16, seed=1, view=view)
        return get_weights(model)

    plain, again, augmented = trained(None), trained(None), trained(flip_shift)
    assert all(np.array_equal(plain[k], again[k]) for k in plain)
    assert not all(np.array_equal(plain[k], augmented[k]) for k in plain)
