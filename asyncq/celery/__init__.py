"""Celery interop: consume and produce messages in Celery's wire protocol (v2) on Redis and RabbitMQ.

:mod:`~asyncq.celery.protocol` is the codec (kombu's envelope, Celery's headers, result
records and exception records); :mod:`~asyncq.celery.redis_transport` reads and writes kombu's
Redis layout and Celery's Redis result keys; :mod:`~asyncq.celery.consumer` runs Celery
messages in an asyncq worker; :mod:`~asyncq.celery.producer` sends tasks to Celery workers.
See docs/celery-interop.md.
"""
