"""Prometheus metrics of one engine, as a node_exporter textfile or on a loopback HTTP port.

Every :class:`Metrics` has its own :class:`~prometheus_client.CollectorRegistry` (never the
process-wide default one), so engines in one process never mix their numbers. Counters and
the job-duration histogram follow the engine's :class:`~uploader_core.monitor.Monitor`
events; the gauges (queue depth, oldest pending age, endpoint health, engine state) are read
from the monitor's snapshot whenever the metrics are collected, so they are never stale.

The monitor's callbacks run on the engine's thread and only add to counters; the textfile is
rewritten by a thread of its own after each pass (and when the engine's state or an
endpoint's health changes), atomically, so node_exporter never reads half a file.

The series (all prefixed ``uploader_``):

- ``events_uploaded_total``, ``job_failures_total`` (failed attempts, each retried later),
  ``events_quarantined_total``, ``bytes_sent_total``: counters since the engine started;
- ``job_duration_seconds``: histogram of completed jobs, from pick-up to archive;
- ``queue_depth``, ``oldest_pending_age_seconds``: what the last scan found pending;
- ``endpoint_up{endpoint}``: 1 or 0 for each endpoint the engine has reported on;
- ``engine_state{state}``: 1 for the engine's current state, 0 for the others;
- ``last_pass_timestamp_seconds``: when the last pass finished (alert on a stale file);
- ``archive_*`` and ``pending_free_bytes``: from archive retention, once it has run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
    write_to_textfile,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .errors import ConfigurationError
from .monitor import EngineState, Event, EventKind, Monitor

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from .engine import DataUploader
    from .retention import RetentionReport

log = logging.getLogger("uploader.metrics")

PREFIX = "uploader"
LOOPBACK = "127.0.0.1"
# Uploads over a cellular link take from under a second to many minutes.
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
TEXTFILE_MODE = 0o644  # node_exporter runs as another user
_REWRITE_ON = (EventKind.PASS_FINISHED, EventKind.STATE, EventKind.ENDPOINT)


class _MonitorGauges(Collector):
    """Gauges read from the monitor's snapshot each time the registry is collected."""

    def __init__(self, monitor: Monitor) -> None:
        self._monitor = monitor

    def collect(self) -> Iterator[Metric]:
        snap = self._monitor.snapshot(pending_limit=1)
        yield GaugeMetricFamily(f"{PREFIX}_queue_depth",
                                "Event packages pending upload at the last scan",
                                value=snap["pending_count"])
        oldest = snap["pending"][0]["age"] if snap["pending"] else 0.0
        yield GaugeMetricFamily(f"{PREFIX}_oldest_pending_age_seconds",
                                "Age of the oldest pending event package (0 when none)",
                                value=max(0.0, oldest))
        endpoints = GaugeMetricFamily(f"{PREFIX}_endpoint_up",
                                      "1 when the endpoint is reachable, 0 when it is down",
                                      labels=["endpoint"])
        for name, health in sorted(snap["endpoints"].items()):
            endpoints.add_metric([name], 1.0 if health["up"] else 0.0)
        yield endpoints
        state = GaugeMetricFamily(f"{PREFIX}_engine_state",
                                  "1 for the engine's current state", labels=["state"])
        for value in EngineState:
            state.add_metric([value.value], 1.0 if snap["state"] == value.value else 0.0)
        yield state
        last_pass = snap["last_pass"]
        if last_pass is not None:
            yield GaugeMetricFamily(f"{PREFIX}_last_pass_timestamp_seconds",
                                    "When the engine last finished a pass (Unix time)",
                                    value=last_pass["finished"])


class Metrics:
    """One engine's metrics; :meth:`start` subscribes and starts the configured exporters.

    ``textfile_path`` (a node_exporter ``*.prom`` file) and ``http_port`` (served on
    127.0.0.1 only; 0 picks a free port, see :attr:`http_address`) are both optional; with
    neither, the metrics are kept in :attr:`registry` and exported nowhere.
    """

    def __init__(self, monitor: Monitor, *, textfile_path: str | Path | None = None,
                 http_port: int | None = None) -> None:
        self.monitor = monitor
        self.textfile_path = None if textfile_path is None else Path(textfile_path)
        self.http_port = http_port
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.uploaded = Counter(f"{PREFIX}_events_uploaded", "Events uploaded and archived",
                                registry=r)
        self.failures = Counter(f"{PREFIX}_job_failures",
                                "Failed attempts of a job; each is retried later", registry=r)
        self.quarantined = Counter(f"{PREFIX}_events_quarantined",
                                   "Event packages moved to the failed directory", registry=r)
        self.bytes_sent = Counter(f"{PREFIX}_bytes_sent",
                                  "Bytes of video and JSON of the events uploaded", registry=r)
        self.duration = Histogram(f"{PREFIX}_job_duration_seconds",
                                  "Time from picking a job up to archiving it",
                                  buckets=DURATION_BUCKETS, registry=r)
        self.archive_bytes = Gauge(f"{PREFIX}_archive_bytes",
                                   "Bytes of the packages in the archive (uploaded_dir)",
                                   registry=r)
        self.archive_packages = Gauge(f"{PREFIX}_archive_packages",
                                      "Packages in the archive (uploaded_dir)", registry=r)
        self.archive_deleted = Counter(f"{PREFIX}_archive_deleted_packages",
                                       "Archived packages deleted by retention", registry=r)
        self.archive_deleted_bytes = Counter(f"{PREFIX}_archive_deleted_bytes",
                                             "Bytes deleted from the archive by retention",
                                             registry=r)
        self.pending_free = Gauge(f"{PREFIX}_pending_free_bytes",
                                  "Free bytes on the pending directory's filesystem",
                                  registry=r)
        r.register(_MonitorGauges(monitor))
        self._unsubscribe: Callable[[], None] | None = None
        self._server: WSGIServer | None = None
        self._server_thread: threading.Thread | None = None
        self._writer: threading.Thread | None = None
        self._dirty = threading.Event()
        self._closing = threading.Event()
        self._write_lock = threading.Lock()
        self._write_error: str | None = None

    @classmethod
    def for_engine(cls, engine: DataUploader) -> Metrics:
        """The metrics the engine's ``uploader.metrics`` settings describe."""
        return cls.from_settings(engine.monitor, engine.settings["metrics"])

    @classmethod
    def from_settings(cls, monitor: Monitor, section: Mapping[str, Any]) -> Metrics:
        path = section.get("textfile_path")
        if path is not None and not str(path).endswith(".prom"):
            raise ConfigurationError(
                f"{path} does not end in .prom; node_exporter's textfile collector reads "
                "only *.prom files", setting="uploader.metrics.textfile_path")
        return cls(monitor, textfile_path=path, http_port=section.get("http_port"))

    @property
    def enabled(self) -> bool:
        """Whether any exporter is configured."""
        return self.textfile_path is not None or self.http_port is not None

    @property
    def http_address(self) -> tuple[str, int] | None:
        """Where the HTTP exporter listens, once started."""
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    # --- lifecycle

    def start(self) -> None:
        """Follow the monitor and start the exporters; raises ConfigurationError naming the
        setting when the port cannot be bound or the textfile cannot be written."""
        if self._unsubscribe is not None:
            return
        self._unsubscribe = self.monitor.subscribe(self._on_event)
        try:
            if self.textfile_path is not None:
                self._write_textfile(raise_errors=True)
                self._writer = threading.Thread(target=self._write_loop,
                                                name="uploader-metrics-textfile", daemon=True)
                self._writer.start()
            if self.http_port is not None:
                self._start_http()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop the exporters; the textfile is written a last time and left in place."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._server_thread is not None:
            self._server_thread.join(timeout=5)
            self._server_thread = None
        if self._writer is not None:
            self._closing.set()
            self._dirty.set()
            self._writer.join(timeout=5)
            self._writer = None
            self._write_textfile()

    def __enter__(self) -> Metrics:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- input

    def _on_event(self, event: Event) -> None:
        # On the engine's thread: only cheap, thread-safe updates here.
        kind = event.kind
        if kind is EventKind.COMPLETED:
            self.uploaded.inc()
            self.bytes_sent.inc(max(0, int(event.data.get("bytes", 0))))
            self.duration.observe(max(0.0, float(event.data.get("duration", 0.0))))
        elif kind is EventKind.RETRY:
            self.failures.inc()
        elif kind is EventKind.QUARANTINED:
            self.quarantined.inc()
        elif kind is EventKind.HOUSEKEEPING:
            self._observe_housekeeping(event.data)
        if kind in _REWRITE_ON:
            self._dirty.set()

    def observe_retention(self, report: RetentionReport) -> None:
        """Record what a retention run found and did."""
        self._observe_housekeeping(report.to_json())

    def _observe_housekeeping(self, report: Mapping[str, Any]) -> None:
        if report["archive_bytes"] or report["archive_packages"] or report["deleted_count"]:
            self.archive_bytes.set(report["archive_bytes"])
            self.archive_packages.set(report["archive_packages"])
        self.archive_deleted.inc(report["deleted_count"])
        self.archive_deleted_bytes.inc(report["deleted_bytes"])
        if report["pending_free_bytes"] is not None:
            self.pending_free.set(report["pending_free_bytes"])
        self._dirty.set()

    # --- exporters

    def _start_http(self) -> None:
        port = self.http_port if self.http_port is not None else 0
        try:
            server, thread = start_http_server(port, addr=LOOPBACK, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(
                f"cannot serve metrics on {LOOPBACK}:{port}: {exc.strerror or exc}",
                setting="uploader.metrics.http_port") from exc
        self._server, self._server_thread = server, thread
        log.info("metrics served on http://%s:%d/metrics", *server.server_address[:2])

    def _write_loop(self) -> None:
        while not self._closing.is_set():
            self._dirty.wait()
            if self._closing.is_set():
                return
            self._dirty.clear()
            self._write_textfile()

    def _write_textfile(self, raise_errors: bool = False) -> None:
        path = self.textfile_path
        if path is None:
            return
        with self._write_lock:
            # Written beside it under a name node_exporter ignores, made readable by others
            # (the service's umask may be strict; metrics hold no secrets), then renamed over
            # it: readers see the old file or the new one, never half of one.
            tmp = path.with_name(f".{path.name}.writing")
            try:
                write_to_textfile(str(tmp), self.registry)
                os.chmod(tmp, TEXTFILE_MODE)
                os.replace(tmp, path)
            except OSError as exc:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                error = ConfigurationError(
                    f"cannot write the metrics file {path}: {exc.strerror or exc}",
                    setting="uploader.metrics.textfile_path")
                if raise_errors:
                    raise error from exc
                message = str(error)
                if message != self._write_error:
                    log.warning("%s", message)
                    self._write_error = message
                return
            if self._write_error is not None:
                log.info("the metrics file %s is written again", path)
                self._write_error = None

