"""``radsetu edge serve``: the box's services in one process.

The DICOM receiver and the readiness clock run in background threads; the web API runs
under waitress in the main thread. SIGTERM and SIGINT stop all of them cleanly; a
SIGKILL or power cut is what the store's start-up check is for.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from edge import receiver, scp, worklist
from edge.boot import check_store, lock_data_dir, open_store
from edge.config import Config
from edge.notify import Watchdog, notify
from edge.outbox import Outbox
from edge.reports import Printer
from edge.store import Store
from edge.sync import Agent
from edge.web import create_app
from edge.webserver import make_server

log = logging.getLogger("radsetu.edge")


RETENTION_EVERY = 600.0  # seconds between retention sweeps


def _readiness_loop(store: Store, stop: threading.Event, retention_days: float) -> None:
    interval = max(0.2, min(5.0, store.quiet_seconds / 4))
    last_sweep = 0.0
    while not stop.wait(interval):
        try:
            store.mark_ready()
        except Exception:  # keep the clock running; the next tick tries again
            log.exception("readiness check failed")
        if time.monotonic() - last_sweep >= RETENTION_EVERY:
            last_sweep = time.monotonic()
            try:
                store.purge_expired(retention_days)
                if store.reserve_bytes and store.free_bytes() < store.reserve_bytes:
                    store.purge_for_space(store.reserve_bytes - store.free_bytes())
            except Exception:
                log.exception("retention sweep failed")


def _start_agent(config: Config) -> Agent | None:
    if not config["sync"]["enabled"]:
        log.info("sync is off ([sync] enabled = false): studies stay on the box")
        return None
    # the agent gets its own connection to the index: it writes from its threads
    sync_store = open_store(config)
    agent = Agent(config, sync_store, Outbox(sync_store, config.box_id, config["sync"]))
    return agent.start()


def _health_check(
    config: Config, store: Store, dicom: Any, ticker: threading.Thread, printer: Printer
) -> Callable[[], str | None]:
    """What the watchdog asks before it is fed: None, or why the box is not well."""

    def healthy() -> str | None:
        for name, thread in (
            ("the DICOM receiver", getattr(dicom, "thread", None)),
            ("the readiness clock", ticker),
            ("the printer", printer if config["print"]["printer"] else None),
        ):
            if thread is not None and not thread.is_alive():
                return f"{name} stopped"
        try:
            store.db.execute("SELECT 1 FROM studies LIMIT 1").fetchall()
        except Exception as exc:  # noqa: BLE001 - any failure is a reason to restart
            return f"the index does not answer: {exc}"
        return None

    return healthy


def _on_signals(stop: threading.Event) -> list[Any]:
    """SIGTERM and SIGINT stop the box, also one that comes while it is starting (its
    ports may be open before its web server runs): the servers put in the list
    returned are closed."""
    servers: list[Any] = []

    def shutdown(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()
        for server in servers:
            server.close()

    signal.signal(signal.SIGTERM, shutdown)
    signal.signal(signal.SIGINT, shutdown)
    return servers


def serve(config: Config) -> int:
    stop = threading.Event()
    servers = _on_signals(stop)
    log.info(
        "box %s starting (config: %s, data: %s)", config.box_id, config.source, config.data_dir
    )
    lock_data_dir(config)
    store = open_store(config)
    check_store(store)
    engine = receiver if config["dicom"]["engine"] == "native" else scp
    dicom = engine.start(config, store)
    mwl = worklist.start(config, config.data_dir)
    ticker = threading.Thread(
        target=_readiness_loop,
        args=(store, stop, config["store"]["retention_days"]),
        daemon=True,
        name="readiness",
    )
    ticker.start()
    agent = _start_agent(config)
    print_store = open_store(config)
    printer = Printer(print_store, config["print"]["printer"])
    printer.start()
    w = config["web"]
    web_store = open_store(config)  # uploads from the clinic's page
    web = make_server(create_app(config, agent, web_store), config, web_store.tmp)
    log.info("clinic page on http://%s:%s/ (API: /api/studies)", w["host"], w["port"])
    servers.append(web)
    Watchdog(_health_check(config, store, dicom, ticker, printer), stop).start()
    notify(f"READY=1\nSTATUS=serving DICOM on {config['dicom']['port']}, web on {w['port']}")
    try:
        if not stop.is_set():  # else a signal came while starting
            web.run()
    except OSError:
        if not stop.is_set():
            raise
    finally:
        notify("STOPPING=1")
        stop.set()
        dicom.shutdown()
        if mwl is not None:
            mwl.shutdown()
        if agent is not None:
            agent.stop()
            agent.store.close()
        printer.stop_event.set()
        printer.join(timeout=70)
        print_store.close()
        store.close()
    log.info("box %s stopped", config.box_id)
    return 0
