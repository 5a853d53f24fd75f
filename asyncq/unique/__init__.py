"""Unique tasks: at most one copy of a call queued or running, per key, across the cluster.

* :mod:`asyncq.unique.spec`: what a task declares (``unique=True``, ``unique_key=``,
  ``unique_ttl=``) and the key of one call;
* :mod:`asyncq.unique.store`: the :class:`~asyncq.unique.store.LockStore` contract and the lookup
  of the store behind a broker;
* :mod:`asyncq.unique.memory`, :mod:`asyncq.unique.redis`, :mod:`asyncq.unique.sqlite`: the stores;
* :mod:`asyncq.unique.send`: the producer side (take the lock or return the holder's handle)
  and the worker side (release it when the task has finished for good).
"""
