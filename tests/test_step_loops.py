"""step_loop='auto' measures both loops on the run's own program, keeps the faster, records the
choice in run.json, and a resumed run keeps it."""

import json

import pytest
from conftest import SMALL_CONV as CONV
from conftest import small_config, without_timings

from vae_jax import step_loops, train


class FakeRunner:
    """Seconds per step of each loop as given; counts the timed calls."""

    def __init__(self, scan, host, steps_per_epoch=100, chunk=None):
        self.seconds = {"scan": scan, "host": host}
        self.steps_per_epoch, self.step_loop = steps_per_epoch, "auto"
        self.timed, self.forgotten = [], []
        self.chunk = chunk  # the scan's masking granularity (a GPU's), None on a CPU

    def timing_steps(self, num_steps):
        if self.chunk is None:
            return num_steps
        return min(self.steps_per_epoch, -(-num_steps // self.chunk) * self.chunk)

    def time_steps(self, state, num_steps, step_loop):
        self.timed.append((step_loop, num_steps))
        return self.seconds[step_loop]

    def forget(self, step_loop):
        self.forgotten.append(step_loop)


@pytest.mark.parametrize(
    "scan, host, choice",
    [(0.26, 0.07, "host"), (0.01, 0.02, "scan"), (0.0100, 0.0095, "scan"), (0.012, 0.010, "host")],
)
def test_measure_keeps_the_faster_and_prefers_the_scan_within_ten_percent(scan, host, choice):
    runner = FakeRunner(scan, host)
    record = step_loops.measure(runner, state=None)
    assert record["choice"] == choice and record["how"] == "measured"
    assert record["scan_seconds_per_step"] == scan and record["host_seconds_per_step"] == host
    assert runner.forgotten == ["host" if choice == "scan" else "scan"]
    assert record["measure_seconds"] >= 0


def test_measure_sizes_its_calls_from_the_host_step_and_skips_a_clear_second_timing():
    slow_scan = FakeRunner(scan=0.26, host=0.07)
    record = step_loops.measure(slow_scan, state=None)
    steps = record["measured_steps"]
    assert steps == int(step_loops.TARGET_SECONDS / 0.07)  # about a quarter second per call
    assert slow_scan.timed == [("host", 2), ("host", steps), ("scan", steps)]  # one scan timing
    fast = FakeRunner(scan=0.001, host=0.0011)
    record = step_loops.measure(fast, state=None)
    assert record["measured_steps"] == step_loops.MAX_STEPS
    assert [loop for loop, _ in fast.timed] == ["host", "host", "scan", "scan"]
    short_epochs = FakeRunner(scan=0.001, host=0.001, steps_per_epoch=3)
    assert step_loops.measure(short_epochs, state=None)["measured_steps"] == 3


def test_measure_times_the_scan_in_whole_mask_chunks_where_masking_works_in_chunks():
    # Off the CPU a 3-step call of an epoch-long scan computes a whole chunk of 32 steps: timing
    # 3 would count 32 steps' time as 3, so the scan is timed for the chunk.
    gpu = FakeRunner(scan=0.26, host=0.07, chunk=32)
    record = step_loops.measure(gpu, state=None)
    steps = record["measured_steps"]
    assert gpu.timed == [("host", 2), ("host", steps), ("scan", 32)]
    assert record["scan_measured_steps"] == 32


def test_settle_takes_the_config_then_the_record_then_scans_old_checkpoints():
    runner = FakeRunner(scan=0.2, host=0.1)
    set_host = step_loops.settle(runner, small_config(step_loop="host"), None, None, False)
    assert set_host == {"choice": "host", "how": "set by the config"} and runner.timed == []
    recorded = {"choice": "host", "how": "measured", "scan_seconds_per_step": 0.3}
    auto = small_config(step_loop="auto")
    assert step_loops.settle(runner, auto, None, recorded, True) == recorded
    assert runner.step_loop == "host" and runner.timed == []
    old = step_loops.settle(runner, auto, None, None, True)  # resumed, nothing recorded
    assert old["choice"] == "scan" and runner.step_loop == "scan" and runner.timed == []
    assert step_loops.settle(runner, auto, None, None, False)["how"] == "measured"


def run_info(workdir):
    return json.loads((workdir / "run.json").read_text())


def test_auto_measures_the_real_program_and_records_it(tmp_path):
    records = train.train_and_evaluate(small_config(step_loop="auto", **CONV), str(tmp_path))
    recorded = run_info(tmp_path)["step_loop"]
    assert recorded["how"] == "measured" and recorded["choice"] in ("scan", "host")
    assert recorded["scan_seconds_per_step"] > 0 and recorded["host_seconds_per_step"] > 0
    assert 2 <= recorded["measured_steps"] <= 4  # 256 examples in batches of 64
    assert len(records) == 2


def test_a_resumed_run_keeps_the_recorded_loop_and_resumes_exactly(tmp_path):
    straight = train.train_and_evaluate(
        small_config(step_loop="host", **CONV), str(tmp_path / "straight")
    )
    resumed_dir = tmp_path / "resumed"
    train.train_and_evaluate(small_config(step_loop="host", num_epochs=1, **CONV), str(resumed_dir))
    assert run_info(resumed_dir)["step_loop"] == {"choice": "host", "how": "set by the config"}
    resumed = train.train_and_evaluate(small_config(step_loop="auto", **CONV), str(resumed_dir))
    assert run_info(resumed_dir)["step_loop"]["choice"] == "host"  # nothing measured again
    assert without_timings(resumed) == without_timings(straight)
