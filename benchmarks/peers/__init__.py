"""One module per framework for ``benchmarks/compare_redis.py``: tasks, worker command, client.

Each module defines, for its framework:

* the tasks ``noop`` (workload 1 and 4), ``sleeper`` (``asyncio.sleep(0.5)``, workload 2) and
  ``echo`` (returns 1, workload 3), which call :mod:`peers._common`'s ``started()`` /
  ``finished()`` so the worker process itself records when the measured span begins and ends;
* ``DB``: the Redis database it uses (FLUSHDB'd before every workload) and ``WORKLOADS``;
* ``worker_command(workload, concurrency)``: the argv of ONE worker process;
* ``Client``: ``open``/``close``, ``fill(task, n)`` (bulk, untimed), ``enqueue()`` (one awaited
  single-call enqueue of ``noop``) and ``round_trip()`` (enqueue ``echo`` and await its result).

Worker processes are started with ``benchmarks/`` as working directory and on ``PYTHONPATH``,
so ``peers.<module>`` imports there as it does in the driver.
"""
