"""Every config in experiments/ loads and is valid; the Burda et al. schedule is the paper's."""

import importlib.util
import pathlib

import numpy as np
import pytest

from vae_jax.config import validate_config
from vae_jax.optim import burda_schedule

EXPERIMENTS = sorted(pathlib.Path(__file__).parent.parent.joinpath("experiments").glob("*.py"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.stem)
def test_experiment_config_is_valid(path):
    spec = importlib.util.spec_from_file_location(f"experiment_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    validate_config(module.get_config())


def test_burda_schedule_runs_three_to_the_i_epochs_at_each_rate():
    steps_per_epoch = 7
    schedule = burda_schedule(1e-3, steps_per_epoch)
    epoch_starts = np.cumsum([0] + [3**i for i in range(8)])  # 0, 1, 4, 13, ..., 3280
    assert epoch_starts[-1] == 3280
    for stage in range(8):
        rate = 1e-3 * 10 ** (-stage / 7)
        first = epoch_starts[stage] * steps_per_epoch
        last = epoch_starts[stage + 1] * steps_per_epoch - 1
        assert float(schedule(first)) == pytest.approx(rate, rel=1e-6)
        assert float(schedule(last)) == pytest.approx(rate, rel=1e-6)
    assert float(schedule(10**9)) == pytest.approx(1e-4, rel=1e-6)  # the last rate holds
