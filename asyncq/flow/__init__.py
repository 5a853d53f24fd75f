"""Flow control: global rate limits and per-key concurrency limits shared by every worker.

* :mod:`asyncq.flow.gcra`: the rate-limit arithmetic (GCRA), pure;
* :mod:`asyncq.flow.store`: the :class:`~asyncq.flow.store.LimitStore` contract and the
  lookup of the store behind a broker (or result backend);
* :mod:`asyncq.flow.memory`, :mod:`asyncq.flow.redis`, :mod:`asyncq.flow.sqlite`: the stores;
* :mod:`asyncq.flow.spec`: what a task declares (``rate_limit_scope``, ``concurrency_key``,
  ``max_concurrency``), checked once;
* :mod:`asyncq.flow.gate`: the worker side, holding a message until its limits let it start.
"""
