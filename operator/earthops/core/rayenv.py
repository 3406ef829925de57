"""The environment every Ray process that runs earthops work starts with: the embedded local Ray
(:func:`earthops_runtime.raycluster.connect`) and the pods of the RayJobs the operator creates.

``MALLOC_ARENA_MAX=1``: one malloc arena for all of a process's threads. Ray Tune runs a trial's
training function in a thread of its actor, and glibc gives such a thread its own arena, made of heaps
of at most 64 MiB that are mapped when a step's buffers need room and unmapped when they are freed: a
trial's epochs then took ~1.4 million minor page faults instead of ~150,000 and ran 20-25 % slower
(measured on the 2-core CI machine, about every second trial actor, at random). In the one arena the
Trainer's malloc settings (:mod:`earthops_runtime.training.allocator`) keep freed memory for the next
step. glibc reads the variable when a process starts, so it has to be in the environment the worker
is started with; musl and macOS ignore it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

#: Variables and values for Ray's worker processes.
RAY_WORKER_ENV: dict[str, str] = {"MALLOC_ARENA_MAX": "1"}


@contextlib.contextmanager
def starting_ray_workers() -> Iterator[None]:
    """Around the ``ray.init`` that starts a local Ray: the raylet it starts, and so every worker the
    raylet starts, inherits :data:`RAY_WORKER_ENV` (a value the caller's environment already has is
    kept); this process's environment is as it was afterwards. (Ray's ``runtime_env`` ``env_vars`` reach
    the workers' start too, but through the runtime-env agent: 1.2 s more before the first tasks and
    0.3 s more per actor, measured.)"""
    added = {k: v for k, v in RAY_WORKER_ENV.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)
