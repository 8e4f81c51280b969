"""The training stream: shuffled, repeated, per-host, batched windows (grain), with a checkpointable iterator."""

from __future__ import annotations

import grain

from planck.shards.windows import ShardWindows


def _mark_absl_flags_parsed() -> None:
    """Let grain's workers read absl flags when no absl app parsed the command line."""
    from absl import flags

    # grain 0.2.18 workers read --grain_enable_multiprocess_worker_profiling on their first
    # next() and raise UnparsedFlagAccessError unless the flags count as parsed.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_batches(
    source: ShardWindows,
    *,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    shuffle: bool = True,
    num_epochs: int | None = None,
    workers: int = 0,
) -> grain.IterDataset:
    """The training stream: shuffled (reshuffled each epoch), repeated, sliced per host, batched; iter() it for a checkpointable iterator."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} is not in [0, {shard_count})")
    ds = grain.MapDataset.source(source)
    if shuffle:
        ds = ds.shuffle(seed=seed)
    # repeat() folds the epoch into the shuffle's seed: every epoch is a new permutation.
    ds = ds.repeat(num_epochs)
    # Slice after shuffle/repeat and before batch: hosts see disjoint examples of one global order.
    ds = ds[shard_index::shard_count]
    ds = ds.batch(batch_size, drop_remainder=True)
    # Reading a window is a memory-mapped slice: reader threads only add GIL contention
    # (bench/loader_throughput.py), so read in the calling thread.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    if workers > 0:
        _mark_absl_flags_parsed()
        # A saved iterator state restores only with the same worker count: keep it in the run config.
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return it
