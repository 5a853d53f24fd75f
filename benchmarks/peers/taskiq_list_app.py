"""taskiq with taskiq-redis's ``ListQueueBroker`` (LPUSH / BRPOP); see taskiq_app for the rest."""

from __future__ import annotations

from peers.taskiq_app import TaskiqClient, command, define, make_broker

DB = 12
WORKLOADS = ("enqueue", "drain", "fanout", "rtt")
broker = make_broker("list", DB)
tasks = define(broker)


def worker_command(workload: str, concurrency: int) -> list[str]:
    return command("peers.taskiq_list_app", concurrency)


class Client(TaskiqClient):
    def __init__(self) -> None:
        super().__init__(broker, tasks)
