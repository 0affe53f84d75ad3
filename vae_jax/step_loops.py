"""Which step loop a run uses: the config's 'scan' or 'host', the one its workdir recorded, or,
for 'auto', the faster of the two measured on the run's own program and device.

A scanned epoch saves the per-step dispatch, but XLA runs some ops several times slower inside
loop bodies (XLA:CPU's convolutions: jax-ml/jax#12868), so neither is right for every model;
measuring a few steps of each costs two compilations and a handful of steps. Both loops compute
the same steps on the same batches; a run resumed from a checkpoint keeps the loop it was
trained with, recorded in run.json, so the resumed run repeats the same arithmetic.
"""

from __future__ import annotations

import time

import jax
from absl import logging

__all__ = ["settle", "measure"]

# A timed call runs enough steps to last about TARGET_SECONDS (host-called steps estimate it),
# between MIN_STEPS and MAX_STEPS. The host loop must win by TIE_MARGIN to be chosen: the scan
# has no per-step dispatch, which a few timed steps underrate. A second timing of a loop is
# skipped when its first already differs from the other loop's by CLEAR_WINNER.
TARGET_SECONDS = 0.25
MIN_STEPS, MAX_STEPS = 2, 64
TIE_MARGIN = 1.1
CLEAR_WINNER = 3.0


def settle(runner, config, state, recorded: dict | None, resumed: bool) -> dict:
    """Sets `runner.step_loop` and returns what run.json records of it.

    Args:
      runner: an `engine.EpochRunner`.
      config: the run's config; its `step_loop` set to 'scan' or 'host' wins.
      state: the state the run starts from (measurement runs on copies).
      recorded: run.json's record of an earlier start of this workdir, or None.
      resumed: whether the run continues from a checkpoint.
    """
    if config.step_loop != "auto":
        choice = {"choice": config.step_loop, "how": "set by the config"}
    elif recorded and recorded.get("choice") in ("scan", "host"):
        choice = dict(recorded)
        logging.info("Step loop: %s, as recorded when this run started.", choice["choice"])
    elif resumed:  # trained before the choice was recorded, by the scan 'auto' then meant
        choice = {"choice": "scan", "how": "kept from a run that did not record its choice"}
    elif jax.process_count() > 1:
        # Timings differ between processes, whose collective programs must match call for call.
        choice = {"choice": "scan", "how": "several processes: not measured"}
    else:
        choice = measure(runner, state)
    runner.step_loop = choice["choice"]
    return choice


def measure(runner, state) -> dict:
    """Times both loops on copies of `state` and keeps the faster; logs and returns the figures."""
    started = time.perf_counter()
    probe = min(MIN_STEPS, runner.steps_per_epoch)
    host = runner.time_steps(state, probe, "host")  # the host program serves any length
    steps = int(min(max(TARGET_SECONDS / max(host, 1e-9), MIN_STEPS), MAX_STEPS))
    steps = min(steps, runner.steps_per_epoch)
    host = min(host, runner.time_steps(state, steps, "host"))
    scan_steps = runner.timing_steps(steps)
    scan = runner.time_steps(state, scan_steps, "scan")
    if 1 / CLEAR_WINNER < scan / host < CLEAR_WINNER:
        scan = min(scan, runner.time_steps(state, scan_steps, "scan"))
    choice = "host" if host * TIE_MARGIN < scan else "scan"
    runner.forget("host" if choice == "scan" else "scan")
    record = {
        "choice": choice,
        "how": "measured",
        "scan_seconds_per_step": scan,
        "host_seconds_per_step": host,
        "measured_steps": steps,
        "scan_measured_steps": scan_steps,
        "measure_seconds": time.perf_counter() - started,
    }
    logging.info(
        "Step loop 'auto': scanned %.4f s/step, host-called %.4f s/step (%d-step calls; "
        "measuring took %.2f s): %s.",
        scan,
        host,
        steps,
        record["measure_seconds"],
        choice,
    )
    return record
