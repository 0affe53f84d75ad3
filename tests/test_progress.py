"""A long phase says how long it will take once its rate is measured (progress.py)."""

from vae_jax import progress


class Clock:
    def __init__(self, times):
        self.times = iter(times)

    def __call__(self):
        return next(self.times)


def test_the_estimate_comes_from_the_second_chunk_not_the_compiling_first():
    # Start at 0; the first chunk (with compilation) ends at 5 s, the second 1 s later.
    phase = progress.Phase("IWAE bound", 10, clock=Clock([0.0, 5.0, 6.0, 7.0, 8.0, 9.0, 9.0]))
    phase.update(2)
    assert phase.estimate is None
    phase.update(2)  # 2 examples/s, 6 to go
    assert phase.estimate == 3.0
    for _ in range(3):
        phase.update(2)
    phase.close()
    assert phase.done == 10


def test_a_phase_of_one_or_two_chunks_says_nothing_ahead():
    phase = progress.Phase("PCA", 4, clock=Clock([0.0, 1.0, 2.0, 2.0]))
    phase.update(2)
    phase.update(2)
    phase.close()
    assert phase.estimate is None


def test_durations_read_as_a_person_would_say_them():
    assert [progress.duration(s) for s in (42, 210, 9000)] == ["42 s", "3.5 min", "2.5 h"]
