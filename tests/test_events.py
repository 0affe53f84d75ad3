"""TensorBoard event files: one clean curve whatever the stops and resumes (events.py)."""

import errno
import glob
import json
import logging
import os
import shutil
import struct
import subprocess
import sys

import tensorboardX
from conftest import small_config
from tensorboardX.proto import event_pb2

from vae_jax import events, population, train


def read_points(directory):
    """(tag, step, value) of every scalar, and the tags of images, in the directory's files."""
    scalars, images = [], []
    for path in sorted(glob.glob(os.path.join(directory, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                if value.HasField("image"):
                    images.append((value.tag, event.step))
                elif value.HasField("simple_value"):
                    scalars.append((value.tag, event.step, value.simple_value))
    return scalars, images


def _records(workdir, name="metrics.jsonl"):
    with open(os.path.join(workdir, name)) as f:
        return [json.loads(line) for line in f]


def test_a_resumed_run_has_one_point_per_epoch_equal_to_its_metrics(tmp_path):
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(small_config(num_epochs=2), workdir)
    # As if killed after epoch 2's line but before its checkpoint: the resume redoes epoch 2.
    shutil.rmtree(os.path.join(workdir, "checkpoints", "16"))
    train.train_and_evaluate(small_config(num_epochs=3), workdir)
    scalars, images = read_points(os.path.join(workdir, events.EVENTS_DIR))
    records = _records(workdir)
    elbo = [(step, value) for tag, step, value in scalars if tag == "test/elbo"]
    assert [step for step, _ in elbo] == [8, 16, 24]  # each once, in order
    assert [v for _, v in elbo] == [
        struct.unpack("f", struct.pack("f", r["test_elbo"]))[0] for r in records
    ]
    assert {tag for tag, _, _ in scalars} >= {"train/elbo", "train/kl", "speed/examples_per_second"}
    assert sorted(images) == sorted(
        (f"pictures/{kind}", step)
        for kind in ("reconstructions", "samples")
        for step in (8, 16, 24)
    )
    assert len(glob.glob(os.path.join(workdir, events.EVENTS_DIR, "events.out.*"))) == 1


def test_each_population_member_is_a_run_named_by_its_seed_and_weight(tmp_path):
    config = small_config(
        num_epochs=1, population_size=2, objective="beta_vae", population_betas=(1.0, 4.0)
    )
    workdir = str(tmp_path / "sweep")
    population.train_population(config, workdir)
    runs = sorted(os.listdir(os.path.join(workdir, events.EVENTS_DIR)))
    assert runs == ["0-seed0-beta1-lr0.001", "1-seed1-beta4-lr0.001"]
    for k, run in enumerate(runs):
        scalars, _ = read_points(os.path.join(workdir, events.EVENTS_DIR, run))
        (record,) = _records(workdir, os.path.join("members", str(k), "metrics.jsonl"))
        assert [(s, v) for t, s, v in scalars if t == "test/elbo"] == [
            (8, struct.unpack("f", struct.pack("f", record["test_elbo"]))[0])
        ]


def test_tags_and_hparams_are_what_tensorboard_shows():
    assert events.scalar_tag("train_elbo") == "train/elbo"
    assert events.scalar_tag("valid_kl") == "valid/kl"
    assert events.scalar_tag("examples_per_second") == "speed/examples_per_second"
    assert events.hparams({"latents": 8, "hidden_sizes": (64, 32), "objective": "vae"}) == {
        "hidden_sizes": "[64, 32]",
        "latents": 8,
        "objective": "vae",
    }


def test_the_evaluations_figures_join_the_runs_curves_and_survive_a_rebuild(tmp_path):
    from vae_jax.evaluate import evaluate_workdir

    workdir = str(tmp_path / "run")
    train.train_and_evaluate(small_config(num_epochs=1), workdir)
    result = evaluate_workdir(workdir, iwae_samples=4, max_examples=100, draw=False)
    directory = os.path.join(workdir, events.EVENTS_DIR)
    scalars, _ = read_points(directory)
    evaluated = {tag: (step, value) for tag, step, value in scalars if tag.startswith("eval/")}
    assert evaluated and all(step == 8 for step, _ in evaluated.values())
    name = next(iter(result["metrics"]))
    assert (
        evaluated[f"eval/{name}"][1]
        == struct.unpack("f", struct.pack("f", result["metrics"][name]))[0]
    )
    train.train_and_evaluate(small_config(num_epochs=2), workdir)  # rebuilt, eval.json kept
    rebuilt, _ = read_points(directory)
    assert {t for t, _, _ in rebuilt if t.startswith("eval/")} == set(evaluated)
    assert [s for t, s, _ in rebuilt if t == "test/elbo"] == [8, 16]


def test_closing_on_a_full_disk_logs_instead_of_raising(tmp_path, monkeypatch, caplog):
    # A run that fails for a full disk closes its event files on the way out; their last flush
    # fails too, and must not replace the run's one error line with a traceback.
    log = events.EventLog(str(tmp_path / "tensorboard"), {"beta": 1.0}, None)
    log.add({"epoch": 1, "step": 8, "train_elbo": -100.0})

    def full_disk(writer):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tensorboardX.SummaryWriter, "close", full_disk)
    with caplog.at_level(logging.WARNING):
        log.close()
    assert "not flushed when closed: [Errno 28] No space left on device" in caplog.text


def test_a_full_disk_at_exit_leaves_the_terminal_clean(tmp_path):
    # tensorboardX's own exit hook flushes once more and fails again on a full disk: with the
    # commands' terminal set-up that goes to log.txt, not as a traceback under the error line.
    script = f"""
import errno
import tensorboardX.record_writer
from vae_jax import cli, events
cli.quiet_library_logs()
cli.log_to_workdir({str(tmp_path)!r})
log = events.EventLog({str(tmp_path / "tensorboard")!r}, {{"beta": 1.0}}, None)
log.add({{"epoch": 1, "step": 8, "train_elbo": -100.0}})
def full_disk(self):
    raise OSError(errno.ENOSPC, "No space left on device")
tensorboardX.record_writer.RecordWriter.flush = full_disk
log.add({{"epoch": 2, "step": 16, "train_elbo": -90.0}}, flush=False)
log.close()
"""
    for _ in range(3):  # the writer thread's failure at exit comes in some runs only
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert result.stderr == "", result.stderr
    logged = (tmp_path / "log.txt").read_text()
    assert "not flushed when closed: [Errno 28] No space left on device" in logged
    assert "TensorBoard at exit: [Errno 28] No space left on device" in logged
