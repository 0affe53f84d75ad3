"""Streaming: batches gathered on the host and prefetched to the device by a background thread.

For data that does not fit on the device. The loader yields chunks of consecutive steps,
(num_steps, B, ...) arrays already on the device, which one compiled call scans over; a chunk
never crosses an epoch end. The order of the examples is the very permutation that the on-device
path draws (fold_in(shuffle key, epoch)), so both paths train on the same batches, in the same
order, and give the same metrics.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import jax
import numpy as np


def epoch_order(shuffle_key: jax.Array, epoch: int, num_examples: int) -> np.ndarray:
    """The permutation of epoch `epoch` (0-based), identical to the on-device path's."""
    return np.asarray(jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), num_examples))


def _take(records, indices: np.ndarray) -> np.ndarray:
    """records[indices] for NumPy arrays and for random-access sources with __getitems__."""
    if isinstance(records, np.ndarray):
        return records[indices]
    if hasattr(records, "__getitems__"):
        return np.stack(records.__getitems__(indices.tolist()))
    return np.stack([records[int(i)] for i in indices])


class StreamingLoader:
    """Host-to-device feeder of step chunks.

    Args:
      records: (N, ...) NumPy array, or a random-access source (len() and indexing).
      batch_size: examples per step.
      steps_per_epoch: N // batch_size (the remainder is dropped, as on the device).
      shuffle_key: the SHUFFLE stream key of the run.
      chunk_steps: steps per chunk.
      prefetch: chunks prepared ahead of the one being trained on.
      process_index, process_count: with several processes (hosts), each gathers only its
        contiguous share of every global batch, rows [i*B/P, (i+1)*B/P), so that together they
        feed the same global batches as one process would.
      place: host chunk -> device array (default: `jax.device_put`; training passes one that
        assembles the global array split over the devices of every process).
      pad_chunks: fill a shorter chunk (an epoch's remainder, a resumed epoch's first) with
        zero batches up to `chunk_steps`, so that every chunk has one shape and the training
        program that masks the extra steps compiles once.
    """

    def __init__(
        self,
        records,
        batch_size: int,
        steps_per_epoch: int,
        shuffle_key: jax.Array,
        chunk_steps: int,
        prefetch: int = 2,
        process_index: int = 0,
        process_count: int = 1,
        place=jax.device_put,
        pad_chunks: bool = False,
    ):
        if batch_size % process_count:
            raise ValueError(
                f"batch_size={batch_size} must be divisible by the {process_count} processes."
            )
        self.records = records
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.shuffle_key = shuffle_key
        self.chunk_steps = chunk_steps
        self.prefetch = prefetch
        self.process_index = process_index
        self.process_count = process_count
        self.place = place
        self.pad_chunks = pad_chunks

    def _chunks(self, first_step: int, num_steps: int) -> Iterator[np.ndarray]:
        epoch, first_batch = divmod(first_step, self.steps_per_epoch)
        order = epoch_order(self.shuffle_key, epoch, len(self.records))
        for start in range(first_batch, first_batch + num_steps, self.chunk_steps):
            stop = min(start + self.chunk_steps, first_batch + num_steps)
            global_batches = order[start * self.batch_size : stop * self.batch_size].reshape(
                stop - start, self.batch_size
            )
            share = self.batch_size // self.process_count
            first = self.process_index * share
            batches = _take(self.records, global_batches[:, first : first + share].ravel())
            batches = batches.reshape((stop - start, share, *batches.shape[1:]))
            if self.pad_chunks and stop - start < self.chunk_steps:
                padding = np.zeros(
                    (self.chunk_steps - (stop - start), *batches.shape[1:]), batches.dtype
                )
                batches = np.concatenate([batches, padding])
            yield batches

    def epoch(self, first_step: int, num_steps: int) -> Iterator[jax.Array]:
        """The chunks of steps [first_step, first_step + num_steps), all within one epoch, as
        device arrays; the next chunks are gathered and transferred while this one trains."""
        assert first_step // self.steps_per_epoch == (first_step + num_steps - 1) // (
            self.steps_per_epoch
        ), "a call never crosses an epoch end"
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        done = object()

        def produce():
            try:
                for chunk in self._chunks(first_step, num_steps):
                    ready.put(self.place(chunk))
                ready.put(done)
            except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
                ready.put(error)

        threading.Thread(target=produce, daemon=True, name="vae_jax-prefetch").start()
        while True:
            item = ready.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
