"""Global-batch sampling: one seeded shuffled stream of records for the whole run, cut into
global batches; process k of n reads the k-th contiguous slice of every global batch.

So n processes assemble exactly the global batches one process would (same rows in the same
order, same augmentation randomness per row): the multi-host run trains like the single-host
one, and the processes' records are disjoint and together cover every epoch.
"""

from __future__ import annotations

import numpy as np
from grain._src.python.record import RecordMetadata  # the record type grain samplers return


class GlobalBatchSampler:
    """grain sampler: local index -> (record key, per-row rng) of this process's slice.

    Epochs are reshuffled (a permutation per (seed, epoch)); batches run across epoch ends.
    With `num_epochs`, the stream stops at the last whole global batch, the same step on every
    process.
    """

    def __init__(self, num_records: int, global_batch_size: int, *, shard_index: int = 0,
                 shard_count: int = 1, seed: int = 0, num_epochs: int | None = None,
                 worker_count: int = 0) -> None:
        if global_batch_size % shard_count:
            raise ValueError(f"global batch {global_batch_size} is not divisible by "
                             f"{shard_count} processes")
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard_index {shard_index} not in [0, {shard_count})")
        self.num_records, self.global_batch = num_records, global_batch_size
        self.local_batch = global_batch_size // shard_count
        self.shard_index, self.seed, self.num_epochs = shard_index, seed, num_epochs
        self.workers = max(1, worker_count)
        self._max_batches = None if num_epochs is None else num_epochs * num_records // global_batch_size
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def local_batch_and_row(self, index: int) -> tuple[int, int]:
        """Which output batch (and row in it) sampler index `index` lands in. grain hands index
        i to worker i % W, each worker batches its own records in order, and the loader emits
        the workers' batches round-robin: undoing that makes batches independent of W."""
        worker, n = index % self.workers, index // self.workers
        return (n // self.local_batch) * self.workers + worker, n % self.local_batch

    def global_position(self, index: int) -> int:
        """Position in the global record stream of this process's `index`-th record."""
        batch, row = self.local_batch_and_row(index)
        return batch * self.global_batch + self.shard_index * self.local_batch + row

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:  # consecutive indices share an epoch: keep the last one
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.num_records)
            self._epoch = epoch
        return self._perm

    def __getitem__(self, index: int) -> RecordMetadata:
        if index < 0 or (self._max_batches is not None
                         and self.local_batch_and_row(index)[0] >= self._max_batches):
            raise IndexError(f"sampler index {index} past the end of the stream")
        position = self.global_position(index)
        epoch, offset = divmod(position, self.num_records)
        rng = np.random.Generator(np.random.Philox(key=(self.seed << 64) | position))
        return RecordMetadata(index=index, record_key=int(self._permutation(epoch)[offset]), rng=rng)

    def __repr__(self) -> str:
        return (f"GlobalBatchSampler(records={self.num_records}, global_batch={self.global_batch}, "
                f"shard={self.shard_index}, seed={self.seed}, num_epochs={self.num_epochs})")
