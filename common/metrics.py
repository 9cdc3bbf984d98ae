"""``/metrics`` for both sides' web services, through the Prometheus client library: the
time taken by every request (a histogram per endpoint), and the service's own figures,
read at each scrape from its database by a collector, so they are never out of date and
every process of a cluster gives the same answer.

The hub's web service is several gunicorn processes: its request figures are kept in
files under ``PROMETHEUS_MULTIPROC_DIR`` (`share_between_processes`, before the workers
start), and each scrape sums every process's figures, whichever process answers it."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# seconds: a page or an API call is a few ms; a study's upload or a PDF some seconds
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ENV = "PROMETHEUS_MULTIPROC_DIR"


def share_between_processes(folder: Path) -> None:
    """Before a server forks its workers: every process's request figures go to files in
    ``folder`` (emptied now: a restart starts the counts again, as Prometheus expects)."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    os.environ[ENV] = str(folder)
    # the client library picks how it keeps values when it is imported; the app's
    # figures are made after this, so they take the files
    values.ValueClass = values.get_value_class()


def worker_gone(pid: int) -> None:
    """A worker exited: its files stay (its counts still count), its live gauges go."""
    if os.environ.get(ENV):
        multiprocess.mark_process_dead(pid)


class _Read(Collector):
    """Figures made at scrape time by ``read`` (typed metric families)."""

    def __init__(self, read: Callable[[], Iterable[Metric]]):
        self._read = read

    def collect(self) -> Iterator[Metric]:
        yield from self._read()


class _Own(Collector):
    """The figures of this process's own registry (one process: no files to sum)."""

    def __init__(self, registry: CollectorRegistry):
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self._registry.collect()


def time_requests(app: Flask, prefix: str) -> None:
    """Observe how long each of ``app``'s requests takes, by endpoint, method and status:
    ``<prefix>_request_duration_seconds``."""
    own = CollectorRegistry()
    latency = Histogram(
        f"{prefix}_request_duration_seconds",
        "time to answer a request, by Flask endpoint, method and HTTP status",
        ["endpoint", "method", "status"],
        buckets=BUCKETS,
        registry=None if os.environ.get(ENV) else own,
    )
    app.extensions["radsetu_metrics"] = own

    def start() -> None:
        g.metrics_started = time.perf_counter()

    def stop(response: Any) -> Any:
        began = g.pop("metrics_started", None)
        if began is not None:
            latency.labels(
                request.endpoint or "unmatched", request.method, str(response.status_code)
            ).observe(time.perf_counter() - began)
        return response

    # first of the before-request functions: a refused or redirected request counts too
    app.before_request_funcs.setdefault(None, []).insert(0, start)
    app.after_request(stop)


def exposition(app: Flask, read: Callable[[], Iterable[Metric]]) -> Response:
    """The answer to ``/metrics``: the request figures of every process, and ``read``'s."""
    registry = CollectorRegistry(auto_describe=True)
    if os.environ.get(ENV):
        multiprocess.MultiProcessCollector(registry)
    else:
        own = app.extensions.get("radsetu_metrics")
        if own is not None:
            registry.register(_Own(own))
    registry.register(_Read(read))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
