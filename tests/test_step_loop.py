"""The host-driven step loop trains on the same batches as the scan and resumes exactly."""

import numpy as np
import pytest
from conftest import SMALL_CONV as CONV
from conftest import small_config, straight_and_resumed, without_timings

from vae_jax import train


@pytest.mark.parametrize("pipeline", ["device", "stream"])
def test_host_loop_and_scan_train_alike(tmp_path, pipeline):
    records = {}
    for loop in ("scan", "host"):
        config = small_config(step_loop=loop, pipeline=pipeline, stream_chunk_steps=3, **CONV)
        records[loop] = without_timings(train.train_and_evaluate(config, str(tmp_path / loop)))
    for scanned, hosted in zip(records["scan"], records["host"], strict=True):
        assert scanned.keys() == hosted.keys()
        for name, value in scanned.items():
            # the same steps on the same batches; fusion may differ in the last bits
            np.testing.assert_allclose(hosted[name], value, rtol=2e-4, err_msg=name)


def test_host_loop_resumes_exactly(tmp_path):
    straight, resumed = straight_and_resumed(
        small_config(step_loop="host", num_epochs=2, **CONV), tmp_path
    )
    assert resumed == straight
