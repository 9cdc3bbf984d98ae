"""A STAT study's lossy preview over an emulated cellular link (devkit/cellular.py: the
box in a network namespace of its own, 2 Mbit/s, 200 ms round trip, 1 % loss each
way), with the real broker, hub and box, and dcmtk's storescu as the modality.

A routine backlog is on its way when a STAT study comes in. Its preview must be at
the hub before the backlog, shown as lossy (the worklist, the reading page's banner,
DICOMweb's Lossy Image Compression attributes) with signing held; then its lossless
instances must replace it everywhere, byte for byte the box's, and signing goes."""

from __future__ import annotations

import http.client
import json
import secrets
import sqlite3
import urllib.error

import pydicom

from devkit import namespaced
from devkit.box import Box
from devkit.broker import Broker, Hub
from devkit.cellular import CellularLink, Profile
from devkit.corpus import head_ct_slices, series_from
from tests.conftest import ROOT, storescu, wait_for
from tests.helpers import (
    assert_same_at_hub,
    box_login,
    box_state,
    delivered,
    hub_study,
    hub_transfers,
    make_study,
    start_box,
)

OHIF = ROOT / "build" / "ohif" / "current"
LOSSY = "00282110"
METHOD = "00282114"


def get(hub: Hub, cookie: str, path: str) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", hub.web_port, timeout=20)
    c.request("GET", path, headers={"Cookie": cookie, "Accept": "application/dicom+json"})
    r = c.getresponse()
    return r.status, r.read()


def test_a_stat_preview_overtakes_the_backlog_then_gives_way_to_its_lossless_study(tmp_path):
    link = CellularLink(Profile(rate_kbps=2000, rtt_ms=200, loss=0.01), seed=19).start()
    broker = Broker(tmp_path / "broker", host=link.hub_ip).start()
    hub = Hub(tmp_path / "hub", {"host": link.hub_ip, "port": broker.port},
              sections={"viewer": {"ohif_dir": str(OHIF)}}).start()  # fmt: skip
    box = Box(tmp_path / "box", mqtt={"host": link.hub_ip, "port": broker.port, "keepalive": 30},
              box_id="cell-preview", quiet_seconds=1,
              stat={"calling_ae_titles": ["ER_CT"]})  # fmt: skip
    proc, log = namespaced.start_box(link.inside(), box)
    try:
        password = secrets.token_urlsafe(12)
        hub.add_user("dr-rao", "radiologist", password)
        cookie = box_login(hub.web_port, "dr-rao", password)
        routine, routine_uid = make_study(tmp_path, "routine", 40)
        stat = series_from(head_ct_slices()[28:34], tmp_path / "stat", 6)  # real head CT
        stat_uid = str(pydicom.dcmread(stat[0], stop_before_pixels=True).StudyInstanceUID)
        namespaced.storescu(link.inside(), box.dicom_port, routine)
        wait_for(lambda: hub_transfers(hub, routine_uid), 240, "the backlog on its way")
        namespaced.storescu(link.inside(), box.dicom_port, stat, aet="ER_CT")

        def previewed() -> dict | None:  # type: ignore[type-arg]
            rows = hub.api("/api/worklist")["studies"]
            return next((r for r in rows if r["study_uid"] == stat_uid), None)

        row = wait_for(previewed, 240, "the STAT study's preview")
        assert row["priority"] == "stat" and 11.5 <= row["preview_ratio"] <= 12.0
        # before the backlog: the routine study is not whole at the hub yet
        assert len(hub_study(hub, routine_uid)) < len(routine)
        assert hub_study(hub, stat_uid) == []  # lossless instances: none yet

        # shown as lossy: the reading page's banner, DICOMweb's attributes
        status, page = get(hub, cookie, f"/read/{stat_uid}")
        assert status == 200 and b'id="lossy-preview"' in page
        assert b"JPEG 2000, up to 12:1" in page
        status, page = get(hub, cookie, f"/ohif/viewer?StudyInstanceUIDs={stat_uid}")
        assert status == 200 and b'id="radsetu-lossy-preview"' in page
        status, body = get(hub, cookie, f"/dicomweb/studies/{stat_uid}/metadata")
        assert status == 200
        meta = json.loads(body)
        assert len(meta) == len(stat)
        for m in meta:
            assert m[LOSSY]["Value"] == ["01"]
            assert m[METHOD]["Value"] == ["ISO_15444_1"]
        # drafting goes, signing waits
        words = {"findings": "No bleed.", "impression": "No bleed.", "radiologist": "dr-rao"}
        r = hub.api(f"/api/studies/{stat_uid}/reports", words)
        try:
            hub.api(f"/api/reports/{r['report_id']}/sign", {})
            raise AssertionError("a report was signed on the preview")
        except urllib.error.HTTPError as exc:
            assert exc.code == 409 and "lossy preview" in exc.read().decode()

        # the lossless study replaces it everywhere
        def replaced() -> bool:
            return len(hub_study(hub, stat_uid)) == len(stat) and not previewed()["preview_ratio"]

        wait_for(replaced, 240, "the lossless study in the preview's place")
        with sqlite3.connect(box.data_dir / "index.db") as db:  # the box is in its netns
            at_box = sorted(db.execute(
                "SELECT sop_instance_uid, sha256 FROM instances WHERE study_uid=?", [stat_uid]
            ).fetchall())  # fmt: skip
        at_hub = sorted((i["sop_instance_uid"], i["sha256"]) for i in hub_study(hub, stat_uid))
        assert at_hub == at_box and len(at_box) == len(stat)
        status, page = get(hub, cookie, f"/read/{stat_uid}")
        assert status == 200 and b'id="lossy-preview"' not in page
        status, page = get(hub, cookie, f"/ohif/viewer?StudyInstanceUIDs={stat_uid}")
        assert status == 200 and b"radsetu-lossy-preview" not in page
        status, body = get(hub, cookie, f"/dicomweb/studies/{stat_uid}/metadata")
        for m in json.loads(body):  # the original's attributes: never compressed lossily
            assert METHOD not in m and m.get(LOSSY, {}).get("Value", ["00"]) == ["00"]
        signed = hub.api(f"/api/reports/{r['report_id']}/sign", {})
        assert signed["state"] == "signed" and signed["on_preview"] is None

        # the order the hub verified them in: preview, STAT lossless, then the backlog
        # the backlog's instances are listed as they are stored, before its transfer
        # is verified: wait for that too
        wait_for(lambda: len(hub_study(hub, routine_uid)) == len(routine), 300, "the backlog")
        wait_for(lambda: all(t["verified_at"] for t in hub_transfers(hub)), 120,
                 "every transfer verified")  # fmt: skip
        done = sorted((t["verified_at"], t["study_uid"], t["chunk_count"])
                      for t in hub_transfers(hub))  # fmt: skip
        assert [uid for _, uid, _ in done][-1] == routine_uid
        assert {uid for _, uid, _ in done[:-1]} == {stat_uid}
        # the lossless transfer carried only what completes each preview: far less
        # than the images (about 4:1 lossless for this CT) once more
        with sqlite3.connect(hub.data_dir / "hub.db") as db:
            manifests = [json.loads(m) for (m,) in db.execute(
                "SELECT manifest FROM transfers WHERE study_uid=?", [stat_uid])]  # fmt: skip
        lossless = [m for m in manifests if "preview" not in m.get("extra", {})]
        assert len(lossless) == 1
        assert {i["codec"] for i in lossless[0]["instances"]} == {"dicom-j2k-rest"}
        images = sum(i["size"] for i in lossless[0]["instances"])
        assert lossless[0]["stream_size"] < images / 4
        assert link.stats()["up"]["random_loss"] > 0  # the link did lose packets
    finally:
        namespaced.stop(proc, log)
        hub.stop()
        broker.stop()
        link.stop()


def test_a_hub_that_lost_the_previews_still_gets_the_study_whole(tmp_path, broker, boxes):
    """The hub verified a STAT study's preview, then lost it (its instances' rows, as a
    restore that lacked them would) before the lossless transfer was in. That
    transfer, of records completing the previews, waits at the hub whole; after
    ``sync.rest_wait_seconds`` the box gives it up and sends the images whole, and the
    hub gets every file byte for byte. The transfer given up is done there too, so
    nothing shows stalled."""
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    # 48 KiB/s: the lossless transfer takes some 10 s after the preview, time to stop
    # the hub before it is in
    sync = {"max_bytes_per_second": 49152, "rest_wait_seconds": 5, "ack_timeout_seconds": 10}
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config(),
                    stat={"calling_ae_titles": ["ER_CT"]}, sync=sync)  # fmt: skip
    stat = series_from(head_ct_slices()[28:34], tmp_path / "stat", 6)
    uid = str(pydicom.dcmread(stat[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(box.dicom_port, stat, aet="ER_CT")

    def transfers() -> list[tuple[str, str]]:
        with sqlite3.connect(box.data_dir / "index.db") as db:
            return db.execute("SELECT kind, state FROM transfers WHERE study_uid=? "
                              "ORDER BY seq", [uid]).fetchall()  # fmt: skip

    def previews_verified() -> bool:
        kinds = transfers()
        return ("lossless", "sending") in kinds and all(
            state == "verified" for kind, state in kinds if kind == "preview"
        )

    wait_for(previews_verified, 120, "the preview verified at the hub")
    hub.stop()
    with sqlite3.connect(hub.data_dir / "hub.db") as db:
        assert db.execute("DELETE FROM instances WHERE lossy=1").rowcount == len(stat)
    hub.start()
    try:
        wait_for(lambda: delivered(box, uid), 180, "the study delivered whole")
        kinds = transfers()
        assert ("lossless", "abandoned") in kinds and kinds[-1] == ("lossless", "verified")
        assert "given up (the hub held it" in box.log_text()
        assert_same_at_hub(box, hub, uid)
        lossless = [t for t in hub_transfers(hub, uid) if t["kind"] == "lossless"]
        assert len(lossless) == 2 and all(t["state"] == "verified" for t in lossless)
    finally:
        hub.stop()


def test_a_stat_preview_is_read_while_the_modality_is_still_sending(tmp_path, broker, boxes):
    """A box waits for a study to be quiet (``store.quiet_seconds``) before it packs
    it; a STAT study's previews do not wait: the first images' preview is readable at
    the hub while the modality has more to send and the box still counts the study as
    receiving. The images after a pause come in a later preview; once quiet, the
    lossless study follows, every image completing its preview, byte for byte."""
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub")).start()
    box = start_box(boxes, tmp_path / "box", broker.mqtt_config(), quiet_seconds=45,
                    stat={"calling_ae_titles": ["ER_CT"]})  # fmt: skip
    stat = series_from(head_ct_slices()[28:40], tmp_path / "stat", 12)
    uid = str(pydicom.dcmread(stat[0], stop_before_pixels=True).StudyInstanceUID)
    storescu(box.dicom_port, stat[:8], aet="ER_CT")

    def shown() -> tuple[int, int]:
        with sqlite3.connect(hub.data_dir / "hub.db") as db:
            return db.execute("SELECT count(*), coalesce(sum(lossy), 0) FROM shown_instances "
                              "WHERE study_uid=?", [uid]).fetchone()  # fmt: skip

    try:
        wait_for(lambda: shown()[1] >= 6, 30, "the first images' preview at the hub")
        assert box_state(box, uid) == "receiving"  # long before the study is quiet
        storescu(box.dicom_port, stat[8:], aet="ER_CT")  # the modality goes on
        wait_for(lambda: shown() == (12, 12), 30, "the later images' preview")
        assert box_state(box, uid) == "receiving"
        wait_for(lambda: delivered(box, uid), 120, "the lossless study, once quiet")
        assert shown() == (12, 0)
        assert_same_at_hub(box, hub, uid)
        with sqlite3.connect(box.data_dir / "index.db") as db:
            kinds = [k for (k,) in db.execute(
                "SELECT kind FROM transfers WHERE study_uid=? ORDER BY seq", [uid])]  # fmt: skip
        assert kinds[-1] == "lossless" and kinds.count("preview") >= 2
        with sqlite3.connect(hub.data_dir / "hub.db") as db:
            manifests = [json.loads(m) for (m,) in db.execute(
                "SELECT manifest FROM transfers WHERE study_uid=?", [uid])]  # fmt: skip
        (lossless,) = [m for m in manifests if "preview" not in m.get("extra", {})]
        assert {i["codec"] for i in lossless["instances"]} == {"dicom-j2k-rest"}
    finally:
        hub.stop()
