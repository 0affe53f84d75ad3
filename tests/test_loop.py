"""The host loop's branches with fakes: no program is compiled, each test takes milliseconds.

A fake state is the number of steps trained; a fake call's loss at step s is 100 / (s + 1) (or
NaN where a test poisons it); the fake store keeps saved states in memory. The end-to-end tests
(test_crash_safety.py, test_population.py) show the same branches with compiled programs.
"""

import errno
import json
import os
import signal

import numpy as np
import pytest
from conftest import small_config

from vae_jax import launch, loop, stopping
from vae_jax.config import member_config
from vae_jax.errors import DivergenceError, Preempted, WorkdirError


class FakeStore:
    """checkpoint.CheckpointStore in memory: {step: (state, extra)}."""

    def __init__(self, saved=None, fail_save_at=None):
        self.saved = dict(saved or {})
        self.fail_save_at = fail_save_at
        self.waits = 0

    def __call__(self, directory, max_to_keep):  # as loop.run opens it
        return self

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass

    def restore_latest(self, initial_state, config):
        if not self.saved:
            return initial_state, 0, {}
        step = max(self.saved)
        state, extra = self.saved[step]
        return state, step, extra or {}

    def save(self, step, state, config, extra=None):
        if step == self.fail_save_at:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/w/checkpoints/tmp")
        self.saved[step] = (state, extra)

    def wait(self):
        self.waits += 1

    def complete_steps(self):
        return sorted(self.saved)


class FakePrograms:
    """Programs of K fake members: the loss of member k at step s is (k + 1) * 100 / (s + 1)."""

    description = "fake programs"

    def __init__(self, size=1, stacked=False, nan_at=None, eval_value=-90.0, pictures=None):
        self.size, self.stacked, self.nan_at = size, stacked, nan_at or {}
        self.eval_value, self.pictures_error = eval_value, pictures
        self.calls, self.pictures = [], []

    def prepare(self, state, first_step, num_steps):
        pass

    def settle_step_loop(self, state, recorded, resumed):
        return None

    def run(self, state, first_step, num_steps, should_stop):
        self.calls.append((first_step, num_steps))
        steps = np.arange(first_step, first_step + num_steps)
        losses = np.stack([(k + 1) * 100.0 / (steps + 1) for k in range(self.size)])
        for k, step in self.nan_at.items():
            losses[k, steps == step] = np.nan
        metrics = {"loss": losses, "elbo": -losses, "kl": losses / 10, "recon": losses * 0.9}
        if not self.stacked:
            metrics = {name: values[0] for name, values in metrics.items()}
        return state + num_steps, metrics

    def evaluate(self, state):
        values = np.full(self.size, self.eval_value) - state
        metrics = {"elbo": values, "kl": -values / 10, "recon": -values * 0.9}
        return metrics if self.stacked else {name: v[0] for name, v in metrics.items()}

    def save_pictures(self, images_dir, epoch, state, write):
        if self.pictures_error is not None:
            raise self.pictures_error
        self.pictures.append(epoch)


class Clock:
    """Each reading one second after the last."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        self.now += 1.0
        return self.now


class StopAfterCalls:
    """A stop request (SIGTERM) that arrives during training call number `calls`."""

    def __init__(self, programs, calls):
        self.programs, self.calls, self.signum = programs, calls, signal.SIGTERM

    def __call__(self):
        return self

    @property
    def requested(self):
        return len(self.programs.calls) >= self.calls

    def poll(self):
        return self.requested

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        pass


def make_job(programs, *, epochs=3, steps_per_epoch=4, population=(), **overrides):
    config = small_config(num_epochs=epochs, **overrides)
    stacked = bool(population)
    if stacked:
        config.population_size = len(population)
        config.objective = "beta_vae"
        config.population_betas = tuple(population)
    members = tuple(member_config(config, k) for k in range(len(population))) or (config,)
    return loop.Job(
        config=config,
        members=members,
        stacked=stacked,
        initial_state=0,
        steps_per_epoch=steps_per_epoch,
        total_steps=min(epochs * steps_per_epoch, config.max_steps or 10**9),
        image_shape=(28, 28, 1),
        build_programs=lambda state: programs,
    )


def run(job, workdir, store, **options):
    os.makedirs(workdir, exist_ok=True)
    options.setdefault("clock", Clock())
    return loop.run(job, str(workdir), open_checkpoints=store, **options)


def without_timings(records):
    return [
        {k: v for k, v in r.items() if k not in ("train_seconds", "examples_per_second")}
        for r in records
    ]


def test_a_straight_run_records_every_epoch_and_saves_by_the_rule(tmp_path):
    programs, store = FakePrograms(), FakeStore()
    job = make_job(programs, checkpoint_every_epochs=2, steps_per_call=3)
    (records,) = run(job, tmp_path, store)
    assert [(r["epoch"], r["step"]) for r in records] == [(1, 4), (2, 8), (3, 12)]
    assert programs.calls == [(0, 3), (3, 1), (4, 3), (7, 1), (8, 3), (11, 1)]  # never across
    assert sorted(store.saved) == [8, 12]  # every 2nd epoch, and the end
    assert records[0]["train_loss"] == pytest.approx(np.mean(100.0 / np.arange(1, 5)))
    assert records[2]["test_elbo"] == -90.0 - 12
    assert records[0]["train_seconds"] == 2.0  # two calls of one (fake) second each
    assert records[0]["examples_per_second"] == 4 * 128 / 2.0
    assert programs.pictures == [1, 2, 3] and store.waits == 1
    with open(tmp_path / "metrics.jsonl") as f:
        assert [json.loads(line) for line in f] == records
    with open(tmp_path / "run.json") as f:
        assert json.load(f)["image_shape"] == [28, 28, 1]


def test_resuming_continues_from_the_stored_step_and_drops_later_records(tmp_path):
    straight = run(make_job(FakePrograms()), tmp_path / "straight", FakeStore())[0]
    # A run that logged epoch 2 but whose newest complete checkpoint is epoch 1's.
    os.makedirs(tmp_path / "resumed")
    with open(tmp_path / "resumed" / "metrics.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in straight[:2])
    programs = FakePrograms()
    resumed = run(make_job(programs), tmp_path / "resumed", FakeStore({4: (4, None)}))[0]
    assert programs.calls == [(4, 4), (8, 4)]
    assert resumed[0] == straight[0]  # kept as written
    assert without_timings(resumed) == without_timings(straight)


def test_a_finished_run_compiles_nothing(tmp_path):
    job = make_job(None)  # build_programs would hand out None: it must not be called
    job = loop.Job(**{**job.__dict__, "build_programs": lambda state: pytest.fail("built")})
    assert run(job, tmp_path, FakeStore({12: (12, None)})) == [[]]


@pytest.mark.parametrize("stop_call, stopped_at, saved", [(2, 6, [4, 6]), (1, 4, [4])])
def test_a_stop_saves_that_step_and_the_rerun_matches_the_straight_run(
    tmp_path, stop_call, stopped_at, saved
):
    """A stop inside an epoch saves the unfinished epoch's metrics with the state; a stop at an
    epoch's end saves that epoch's checkpoint. Either way the rerun ends as the straight run."""
    straight = run(make_job(FakePrograms(), steps_per_call=2), tmp_path / "a", FakeStore())[0]
    programs, store = FakePrograms(), FakeStore()
    stop_call = {1: 2, 2: 3}[stop_call]  # calls of 2 steps: call 2 ends epoch 1, call 3 is inside
    job = make_job(programs, steps_per_call=2)
    with pytest.raises(Preempted) as stop:
        run(job, tmp_path / "b", store, signals=StopAfterCalls(programs, stop_call))
    assert (stop.value.step, stop.value.signum) == (stopped_at, signal.SIGTERM)
    assert sorted(store.saved) == saved
    extra = store.saved[stopped_at][1]
    if stopped_at % 4:
        assert extra["epoch_metrics"]["loss"] == pytest.approx([100 / 5, 100 / 6])
        assert extra["epoch_train_seconds"] == 1.0
    resumed = run(make_job(FakePrograms(), steps_per_call=2), tmp_path / "b", store)[0]
    assert without_timings(resumed) == without_timings(straight)
    assert resumed[1]["train_seconds"] == straight[1]["train_seconds"]  # carried over the stop


def test_a_population_stop_keeps_every_members_unfinished_epoch(tmp_path):
    programs, store = FakePrograms(size=2, stacked=True), FakeStore()
    job = make_job(programs, population=(1.0, 4.0), steps_per_call=2)
    with pytest.raises(Preempted):
        run(job, tmp_path, store, signals=StopAfterCalls(programs, 1))
    extra = store.saved[2][1]
    assert [m["loss"] for m in extra["members_epoch_metrics"]] == [
        pytest.approx([100.0, 50.0]),
        pytest.approx([200.0, 100.0]),
    ]
    records = run(make_job(FakePrograms(2, True), population=(1.0, 4.0)), tmp_path, store)
    assert [r[0]["train_loss"] for r in records] == pytest.approx(
        [np.mean(k * 100.0 / np.arange(1, 5)) for k in (1, 2)]
    )
    assert os.path.isfile(tmp_path / "members" / "1" / "metrics.jsonl")
    assert records[0][0]["examples_per_second"] == 2 * 4 * 128 / records[0][0]["train_seconds"]


def test_a_non_finite_loss_stops_naming_the_step_and_the_kept_checkpoint(tmp_path):
    store = FakeStore()
    with pytest.raises(DivergenceError) as error:
        run(make_job(FakePrograms(nan_at={0: 6})), tmp_path, store)
    assert "non-finite at step 7 (epoch 2)" in str(error.value)
    assert "the last good checkpoint (step 4) is kept" in str(error.value)
    assert sorted(store.saved) == [4]  # nothing saved after the bad step


def test_a_diverging_population_member_is_named(tmp_path):
    programs = FakePrograms(size=3, stacked=True, nan_at={2: 5})
    job = make_job(programs, population=(0.5, 1.0, 4.0), population_learning_rates=(1e-3,) * 3)
    with pytest.raises(DivergenceError) as error:
        run(job, tmp_path, FakeStore())
    assert str(error.value).startswith(
        "population member 2 (seed 2, beta 4, learning_rate 0.001): the training loss became "
        "non-finite at step 6 (epoch 2)"
    )


def test_a_non_finite_evaluation_stops_before_the_record(tmp_path):
    with pytest.raises(DivergenceError, match=r"the test figures became non-finite after step 4"):
        run(make_job(FakePrograms(eval_value=np.inf)), tmp_path, FakeStore())
    assert (
        not os.path.exists(tmp_path / "metrics.jsonl")
        or not open(tmp_path / "metrics.jsonl").read()
    )


def test_skipped_updates_are_counted_and_an_all_skipped_epoch_stops(tmp_path):
    class Skipping(FakePrograms):
        def run(self, state, first_step, num_steps, should_stop):
            state, metrics = super().run(state, first_step, num_steps, should_stop)
            skipped = np.ones(num_steps) if first_step >= 4 else (np.arange(num_steps) == 1) * 1.0
            return state, {**metrics, "skipped": skipped}

    with pytest.raises(DivergenceError, match="every update of epoch 2 .* was skipped"):
        run(make_job(Skipping(), nan_policy="skip"), tmp_path, FakeStore())
    with open(tmp_path / "metrics.jsonl") as f:
        first = json.loads(f.readline())
    assert first["skipped_steps"] == 1
    assert first["train_loss"] == pytest.approx(np.mean(100.0 / np.array([1, 3, 4])))


@pytest.mark.parametrize("where", ["pictures", "checkpoint"])
def test_a_failed_write_is_one_error_naming_the_intact_checkpoint(tmp_path, where):
    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "images" / "x.png"))
    store = FakeStore(fail_save_at=8 if where == "checkpoint" else None)
    programs = FakePrograms()
    if where == "pictures":
        original = programs.save_pictures

        def save_pictures(images_dir, epoch, state, write):
            if epoch == 2:
                raise full
            original(images_dir, epoch, state, write)

        programs.save_pictures = save_pictures
    with pytest.raises(WorkdirError) as error:
        run(make_job(programs), tmp_path, store)
    message = str(error.value)
    assert message.startswith("cannot write to the workdir: No space left on device (")
    assert "the last complete checkpoint (step 4) is intact" in message
    assert message.endswith("run the same command again to resume.")


def test_the_real_stop_signals_restore_the_previous_handlers():
    before = signal.getsignal(signal.SIGTERM)
    with loop.StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert not stop.requested  # until the next boundary asks
        assert stop.poll() and stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is before


def test_coordinated_stop_counts_polls_and_keeps_the_agreed_answer():
    asked = []

    def reached(count):
        asked.append(count)
        return count == 2  # the sync point JAX's service would agree on

    stop = loop.CoordinatedStop(reached)
    assert [stop.poll() for _ in range(5)] == [False, False, True, True, True]
    assert asked == [0, 1, 2]  # not asked again once agreed
    assert stop.requested and stop.signum == signal.SIGTERM


def test_coordinated_stop_passes_ctrl_c_on_as_sigterm_and_leaves_sigterm_alone():
    forwarded = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: forwarded.append(signum))
    try:
        jax_handler = signal.getsignal(signal.SIGTERM)
        with loop.CoordinatedStop(lambda count: bool(forwarded)) as stop:
            assert signal.getsignal(signal.SIGTERM) is jax_handler
            os.kill(os.getpid(), signal.SIGINT)
            assert forwarded == [signal.SIGTERM]  # what JAX's notifier would catch
            assert stop.poll() and stop.signum == signal.SIGINT  # this process exits 130
            with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C does not wait
                os.kill(os.getpid(), signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_raising_max_steps_replaces_the_part_epochs_line_and_equals_a_straight_run(tmp_path):
    straight = run(make_job(FakePrograms(), max_steps=10), tmp_path / "straight", FakeStore())[0]
    assert [(r["epoch"], r["step"]) for r in straight] == [(1, 4), (2, 8), (3, 10)]

    store = FakeStore()
    first = run(make_job(FakePrograms(), max_steps=6), tmp_path / "raised", store)[0]
    assert [(r["epoch"], r["step"]) for r in first] == [(1, 4), (2, 6)]  # training ended there
    assert store.saved[6][1]["epoch_metrics"]["loss"]  # the part epoch travels with the state
    # The same command again changes nothing; a higher max_steps finishes epoch 2 once.
    assert run(make_job(FakePrograms(), max_steps=6), tmp_path / "raised", store)[0] == first
    raised = run(make_job(FakePrograms(), max_steps=10), tmp_path / "raised", store)[0]
    assert [(r["epoch"], r["step"]) for r in raised] == [(1, 4), (2, 8), (3, 10)]
    assert without_timings(raised) == without_timings(straight)


def test_a_ctrl_c_during_start_up_still_stops_a_coordinated_run_by_sigint():
    # Between jax.distributed.initialize and the loop, Ctrl-C is passed on to JAX as a SIGTERM;
    # the process must still report (and exit with) SIGINT, as its peers that got it later do.
    forwarded = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, lambda signum, frame: forwarded.append(signum))
    try:
        launch.pass_on_early_stops()
        os.kill(os.getpid(), signal.SIGINT)
        assert forwarded == [signal.SIGTERM]
        assert stopping.early_stops()[-1] == signal.SIGINT  # noted for the coordinated stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stop = loop.CoordinatedStop(lambda count: True, early=stopping.early_stops()[-1])
    assert stop.poll() and stop.signum == signal.SIGINT
    assert loop.CoordinatedStop(lambda count: True).poll()  # no early stop: SIGTERM
