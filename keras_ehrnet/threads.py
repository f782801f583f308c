"""CPU threads: how many cores this process may use, and pinning TensorFlow's thread pools.

One place for both, used by the runtimes (artefacts run on every core by default) and by the
timing code (benchmarks pin the pools before the first TensorFlow op).
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask; every core where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def set_tf_threads(num_threads: int) -> bool:
    """Pin TensorFlow's intra-op pool to `num_threads` and its inter-op pool to 1.

    The pools are per process and fixed once TensorFlow's runtime starts: returns False when
    it has started with another count (which then stays), True when the count is in force.
    TensorFlow is imported here, not before, so that callers without it stay importable.
    """
    import tensorflow as tf

    if tf.config.threading.get_intra_op_parallelism_threads() == num_threads:
        return True
    try:
        tf.config.threading.set_intra_op_parallelism_threads(num_threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        return False
    return True
