"""Several connections to one index (the box's receiver, sync agent, printer and web
each have one): a transaction that reads and then writes must not fail because
another connection wrote in between."""

from __future__ import annotations

import threading
import time

from common.db import open_db


def test_a_read_then_write_transaction_waits_instead_of_failing(tmp_path):
    path = tmp_path / "index.db"
    a, b = open_db(path), open_db(path)
    a.execute("CREATE TABLE t (v INTEGER)")
    errors: list[BaseException] = []

    def other_writer() -> None:
        try:
            b.execute("INSERT INTO t VALUES (2)")
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            errors.append(exc)

    with a.atomic():
        assert a.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        writer = threading.Thread(target=other_writer)
        writer.start()
        time.sleep(0.3)  # the other connection tries to write meanwhile: it waits
        a.execute("INSERT INTO t VALUES (1)")
    writer.join(timeout=30)
    assert not errors, errors
    assert sorted(v for (v,) in a.execute("SELECT v FROM t")) == [1, 2]
