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

#: Variables and values for Ray's worker processes.
RAY_WORKER_ENV: dict[str, str] = {"MALLOC_ARENA_MAX": "1"}
