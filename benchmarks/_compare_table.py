"""The table and the target lines of ``compare_redis.py``, for Redis and for RabbitMQ.

Rows whose name starts with ``asyncq`` are asyncq's; ``REFERENCE`` rows (the bare
confirmed-publish ceiling) are neither asyncq nor a peer: no ratio, never the "best peer".
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from _workers import log

METRICS = ("drain", "fanout", "p50", "p99", "enqueue", "enqueue_unconfirmed")
#: True: higher is better (a rate); False: lower is better (a time).
HIGHER_IS_BETTER = {
    "drain": True,
    "fanout": False,
    "p50": False,
    "p99": False,
    "enqueue": True,
    "enqueue_unconfirmed": True,
}
HEADERS = {
    "drain": "drain tasks/s",
    "fanout": "fan-out s",
    "p50": "p50 ms",
    "p99": "p99 ms",
    "enqueue": "enqueue/s",
    "enqueue_unconfirmed": "unconfirmed/s",
}
#: The bare aiormq confirmed publish on RabbitMQ: the ceiling of a confirmed enqueue.
CEILING = "aiormq-bare"
REFERENCE = {CEILING}
NAME_WIDTH = 22

Result = dict[str, float | None]


def is_ours(name: str) -> bool:
    return name.startswith("asyncq")


def metrics_for(broker: str) -> tuple[str, ...]:
    return METRICS if broker == "rabbitmq" else METRICS[:-1]


def fmt(metric: str, value: float | None) -> str:
    if value is None:
        return "-"
    if metric in ("drain", "enqueue", "enqueue_unconfirmed"):
        return f"{value:,.0f}"
    return f"{value:.2f}"


def advantage(metric: str, ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return None
    return ours / theirs if HIGHER_IS_BETTER[metric] else theirs / ours


def best(results: dict[str, Result], metric: str) -> tuple[str, float] | None:
    """The best peer on ``metric`` (asyncq's rows and the reference excluded)."""
    peers = [
        (name, value)
        for name, result in results.items()
        if not is_ours(name) and name not in REFERENCE and (value := result.get(metric)) is not None
    ]
    if not peers:
        return None
    pick = max if HIGHER_IS_BETTER[metric] else min
    return pick(peers, key=lambda item: item[1])


def median_of(runs: list[Result]) -> Result:
    merged: Result = {}
    for metric in (*METRICS, "ceiling"):
        values = [v for run in runs if (v := run.get(metric)) is not None]
        merged[metric] = statistics.median(values) if values else None
    return merged


def print_table(results: dict[str, Result], args: Any) -> None:
    metrics = metrics_for(args.broker)
    widths = [max(17, len(HEADERS[m]) + 2) for m in metrics]
    # On RabbitMQ the enqueue column is the confirmed one.
    headers = {**HEADERS, "enqueue": "confirmed/s"} if args.broker == "rabbitmq" else HEADERS
    ours = results.get("asyncq")
    log("")
    columns = zip(metrics, widths, strict=True)
    log("framework".ljust(NAME_WIDTH) + "".join(headers[m].rjust(w) for m, w in columns))
    for name, result in results.items():
        cells = [name.ljust(NAME_WIDTH)]
        for metric, width in zip(metrics, widths, strict=True):
            cell = fmt(metric, result.get(metric))
            peer = not is_ours(name) and name not in REFERENCE
            ratio = advantage(metric, ours.get(metric), result.get(metric)) if ours and peer else None
            if ratio is not None:
                cell += f" ({ratio:.2f}x)"
            cells.append(cell.rjust(width))
        log("".join(cells))
    for name in (n for n in results if is_ours(n)):
        cells = [f"{name} / best peer".ljust(NAME_WIDTH)]
        for metric, width in zip(metrics, widths, strict=True):
            top = best(results, metric)
            ratio = advantage(metric, results[name].get(metric), top[1]) if top else None
            cells.append(("-" if ratio is None else f"{ratio:.2f}x").rjust(width))
        log("".join(cells))
    ideal = 0.5 * math.ceil(args.sleepers / args.concurrency)
    log(
        f"(x) = asyncq's advantage over that peer: rates asyncq/peer, times peer/asyncq; > 1 means "
        f"asyncq is ahead. Fan-out ideal {ideal:.2f} s. Medians of {args.repeat} run(s)."
    )
    if args.broker == "rabbitmq":
        log(
            "RabbitMQ: 'confirmed/s' waits for each publish's confirm; 'unconfirmed/s' does not "
            f"(dramatiq's and Celery's default, asyncq's confirm_publish=false). {CEILING}: "
            "persistent confirmed publishes straight on aiormq, one at a time (the ceiling)."
        )
    for name in (n for n in results if is_ours(n)):
        log("")
        log(f"targets ({name}):")
        if args.broker == "rabbitmq":
            rabbitmq_targets(results, results[name])
        else:
            redis_targets(results, results[name], ideal)


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def redis_targets(results: dict[str, Result], ours: Result, ideal: float) -> None:
    drain, fanout, p50, enqueue = ours["drain"], ours["fanout"], ours["p50"], ours["enqueue"]
    top = best(results, "drain")
    if drain is not None and top is not None:
        log(
            f"  drain >= 3x best peer ({top[0]} {top[1]:,.0f}/s): {drain:,.0f}/s = {drain / top[1]:.2f}x "
            f"-> {verdict(drain >= 3 * top[1])}"
        )
    if fanout is not None:
        log(
            f"  fan-out <= 1.1x the {ideal:.2f} s ideal ({1.1 * ideal:.2f} s): {fanout:.2f} s = "
            f"{fanout / ideal:.2f}x -> {verdict(fanout <= 1.1 * ideal)}"
        )
    top = best(results, "p50")
    if p50 is not None and top is not None:
        log(
            f"  p50 round trip <= half the best peer's ({top[0]} {top[1]:.2f} ms): {p50:.2f} ms = "
            f"{p50 / top[1]:.2f}x -> {verdict(p50 <= 0.5 * top[1])}"
        )
    top = best(results, "enqueue")
    if enqueue is not None and top is not None:
        log(
            f"  enqueue faster than every peer (best {top[0]} {top[1]:,.0f}/s): {enqueue:,.0f}/s = "
            f"{enqueue / top[1]:.2f}x -> {verdict(enqueue > top[1])}"
        )


def rabbitmq_targets(results: dict[str, Result], ours: Result) -> None:
    drain, p50, enqueue = ours["drain"], ours["p50"], ours["enqueue"]
    unconfirmed = ours["enqueue_unconfirmed"]
    dramatiq = results.get("dramatiq", {})
    top = best(results, "drain")
    if drain is not None and top is not None:
        log(
            f"  drain >= 2x best peer ({top[0]} {top[1]:,.0f}/s): {drain:,.0f}/s = {drain / top[1]:.2f}x "
            f"-> {verdict(drain >= 2 * top[1])}"
        )
    theirs = dramatiq.get("p50")
    if p50 is not None and theirs is not None:
        log(
            f"  p50 round trip <= 0.6x dramatiq's ({theirs:.2f} ms): {p50:.2f} ms = {p50 / theirs:.2f}x "
            f"-> {verdict(p50 <= 0.6 * theirs)}"
        )
    # The ceiling measured beside this row's enqueues, else the median row.
    ceiling = ours.get("ceiling") or results.get(CEILING, {}).get("enqueue")
    if enqueue is not None and ceiling is not None:
        log(
            f"  confirmed enqueue within 10% of the bare ceiling ({ceiling:,.0f}/s): {enqueue:,.0f}/s = "
            f"{enqueue / ceiling:.2f}x -> {verdict(enqueue >= 0.9 * ceiling)}"
        )
    top = best(results, "enqueue")
    if enqueue is not None and top is not None:
        log(
            f"  confirmed enqueue ahead of every confirmed peer (best {top[0]} {top[1]:,.0f}/s): "
            f"{enqueue:,.0f}/s = {enqueue / top[1]:.2f}x -> {verdict(enqueue > top[1])}"
        )
    theirs = dramatiq.get("enqueue_unconfirmed")
    if unconfirmed is not None and theirs is not None:
        log(
            f"  unconfirmed opt-in ahead of dramatiq's unconfirmed default ({theirs:,.0f}/s): "
            f"{unconfirmed:,.0f}/s = {unconfirmed / theirs:.2f}x -> {verdict(unconfirmed > theirs)}"
        )
