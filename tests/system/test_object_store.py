"""The hub with its large things in an S3-compatible object store (``[objects] url``):
a real SeaweedFS, a real broker, a real box and hub. Instances, chunks in progress and
report PDFs live in the bucket, none in the hub's data folder; what the box kept
arrives byte-identical; DICOMweb, the rendered image and the report's delivery read
from the same store."""

from __future__ import annotations

import hashlib
import json
import sys
import urllib.request

import boto3
import pytest

from devkit.broker import Broker, Hub
from devkit.seaweed import SeaweedFS
from hub import config as hub_config
from hub.objects import FolderObjects, S3Objects
from tests.conftest import storescu, wait_for
from tests.helpers import delivered, make_study, start_box


def bucket(s: SeaweedFS, name: str) -> dict[str, bytes]:
    """Every object in the bucket, by key, with its bytes."""
    c = boto3.client("s3", endpoint_url=s.url, aws_access_key_id=s.access_key,
                     aws_secret_access_key=s.secret_key, region_name="us-east-1")  # fmt: skip
    out = {}
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=name):
        for o in page.get("Contents", []):
            out[o["Key"]] = c.get_object(Bucket=name, Key=o["Key"])["Body"].read()
    return out


def test_a_study_and_its_report_through_an_s3_object_store(tmp_path, seaweed, boxes):
    broker = Broker(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub"),
              sections={"objects": seaweed.objects_config("radsetu-hub")})  # fmt: skip
    hub.start()
    try:
        box = start_box(boxes, tmp_path / "box", broker.mqtt_config())
        files, uid = make_study(tmp_path, "study", 5)
        storescu(box.dicom_port, files)
        wait_for(lambda: delivered(box, uid), 60, "the study verified at the hub")

        stored = bucket(seaweed, "radsetu-hub")
        instances = {k: v for k, v in stored.items() if k.startswith("objects/")}
        sent = {i["sha256"] for i in box.api(f"/api/studies/{uid}")["instances"]}
        assert len(sent) == len(files)
        assert {hashlib.sha256(v).hexdigest() for v in instances.values()} == sent
        assert all(k.endswith(f"{hashlib.sha256(v).hexdigest()}.dcm") for k, v in
                   instances.items())  # fmt: skip
        assert not [k for k in stored if k.startswith("chunks/")]  # dropped once verified
        # nothing large in the hub's own folder
        assert not list((hub.data_dir / "objects").rglob("*.dcm"))
        assert not [p for p in (hub.data_dir / "chunks").rglob("*") if p.is_file()]

        # DICOMweb and the rendered image read from the bucket
        (sop,) = [i["sop_instance_uid"] for i in hub.api(f"/api/studies/{uid}")["instances"]][:1]
        req = urllib.request.Request(
            f"http://127.0.0.1:{hub.web_port}/dicomweb/studies/{uid}",
            headers={"Authorization": f"Bearer {hub.token}"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            body = r.read()
        assert all(v in body for v in instances.values())
        req = urllib.request.Request(
            f"http://127.0.0.1:{hub.web_port}/api/studies/{uid}/instances/{sop}/rendered",
            headers={"Authorization": f"Bearer {hub.token}"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            assert r.read().startswith(b"\x89PNG")

        # the signed report's PDF is kept in the bucket and reaches the box from there
        draft = {"findings": "No fracture.", "impression": "Normal.", "radiologist": "Dr A"}
        r = hub.api(f"/api/studies/{uid}/reports", draft)
        hub.api(f"/api/reports/{r['report_id']}/sign", {})
        pdfs = [k for k in bucket(seaweed, "radsetu-hub") if k.startswith("reports/")]
        assert pdfs == [f"reports/{r['report_id']}-v1.pdf"]
        wait_for(lambda: len(box.api("/api/reports")["reports"]) == 1, 40, "the report at the box")
        assert not (hub.data_dir / "reports").exists()
    finally:
        hub.stop()
        broker.stop()


def test_a_study_sent_while_the_object_store_is_down_arrives_once_it_is_back(
    tmp_path, seaweed, boxes
):
    """The store killed (SIGKILL) before a study comes: the hub stores nothing, so it
    tells the box it holds nothing, and the box keeps sending; once the store is back
    every instance arrives, byte-identical, once."""
    broker = Broker(tmp_path / "broker").start()
    hub = Hub(tmp_path / "hub", broker.mqtt_config("hub"),
              sections={"objects": seaweed.objects_config("radsetu-down")})  # fmt: skip
    hub.start()
    try:
        box = start_box(boxes, tmp_path / "box", broker.mqtt_config(),
                        sync={"ack_timeout_seconds": 5})  # fmt: skip
        seaweed.kill()
        files, uid = make_study(tmp_path, "study", 8)
        storescu(box.dicom_port, files)
        wait_for(lambda: "hub error" in str(hub.api("/api/boxes")), 60, "the hub's failed writes")
        assert not delivered(box, uid)
        seaweed.start()
        wait_for(lambda: delivered(box, uid), 120, "the study once the store is back")
        stored = bucket(seaweed, "radsetu-down")
        kept = sorted(hashlib.sha256(v).hexdigest() for k, v in stored.items()
                      if k.startswith("objects/"))  # fmt: skip
        at_box = sorted(i["sha256"] for i in box.api(f"/api/studies/{uid}")["instances"])
        assert kept == at_box and len(kept) == len(files)
        at_hub = hub.api(f"/api/studies/{uid}")["instances"]
        assert sorted(i["sha256"] for i in at_hub) == at_box  # each once
    finally:
        hub.stop()
        broker.stop()


def test_the_object_store_keeps_and_refuses_like_the_folder(tmp_path, seaweed):
    """The same calls on both stores give the same answers."""
    cfg = seaweed.objects_config("radsetu-unit")
    s3 = S3Objects(cfg, tmp_path / "tmp")
    s3.ensure_bucket()
    (tmp_path / "tmp").mkdir()
    folder = FolderObjects(tmp_path / "folder", tmp_path / "tmp")
    for store in (s3, folder):
        store.put_bytes("chunks/t1/00000000", b"first")
        store.put_bytes("chunks/t1/00000001", b"second")
        part = tmp_path / "tmp" / "part"
        part.write_bytes(b"x" * (20 << 20))  # over one S3 part: a multipart upload
        store.put_file("objects/ab/abc.dcm", part)
        assert not part.exists()
        assert store.get("chunks/t1/00000001") == b"second"
        with store.open("objects/ab/abc.dcm") as f:
            assert len(f.read()) == 20 << 20
        with store.local("objects/ab/abc.dcm") as p:
            assert p.stat().st_size == 20 << 20
        store.delete_prefix("chunks/t1/")
        assert not store.exists("chunks/t1/00000000") and store.exists("objects/ab/abc.dcm")
    with pytest.raises(ValueError):
        folder.put_bytes("../outside", b"x")  # a key never leaves the folder


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        ({"url": "ftp://x"}, "objects.url"),
        ({"url": "http://x", "bucket": "A_b"}, "objects.bucket"),
        ({"url": "http://x", "secret_key": ""}, "objects.secret_key"),
    ],
)
def test_object_store_config_is_checked(tmp_path, objects, message):
    section = {"access_key": "k", "secret_key": "s", **objects}
    lines = "\n".join(f'{k} = "{v}"' for k, v in section.items())
    path = tmp_path / "hub.toml"
    path.write_text(f'data_dir = "{tmp_path}"\n[objects]\n{lines}\n')
    with pytest.raises(hub_config.ConfigError, match=message):
        hub_config.load(path)


def test_the_hub_role_writes_the_object_store_section(tmp_path):
    """The hub role's config template with an object store, a second broker, an SMS
    gateway and an SMTP relay, read by the hub itself."""
    from tests.system.test_provisioning import ANSIBLE, playbook

    out = tmp_path / "hub.toml"
    (tmp_path / "etc/tls").mkdir(parents=True)
    for name in ("ca.crt", "hub.crt", "hub.key"):  # the config checks they are there
        (tmp_path / "etc/tls" / name).write_text("")
    book = tmp_path / "render.yml"
    book.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n"
        f"  vars_files: [{ANSIBLE / 'roles/hub/defaults/main.yml'}]\n"
        "  tasks:\n"
        "    - ansible.builtin.template:\n"
        f"        src: {ANSIBLE / 'roles/hub/templates/hub.toml.j2'}\n"
        f"        dest: {out}\n"
        "        mode: '0640'\n"
    )
    extra = {
        "ansible_python_interpreter": sys.executable,
        "hub_data_dir": str(tmp_path / "data"),
        "hub_etc": str(tmp_path / "etc"),
        "radsetu_broker_host": "broker.test",
        "radsetu_broker_port": 8883,
        "hub_objects_url": "http://objects.test:8333",
        "hub_objects_access_key": "a-key-id",
        "radsetu_hub_objects_secret_key": "a-test-secret",
        "hub_other_brokers": ["broker-2.test:8883"],
        "hub_index_url": "postgresql://hub:pw@db.test/radsetu",
        # a critical finding's messages
        "hub_public_url": "https://hub.example.in",
        "hub_sms_url": "http://kannel.test:13013/cgi-bin/sendsms",
        "hub_sms_username": "radsetu",
        "radsetu_hub_sms_password": "an-sms-secret",
        "radsetu_hub_sms_inbound_key": "a-long-inbound-key",
        "hub_smtp_host": "smtp.test",
        "hub_smtp_port": 587,
        "hub_smtp_starttls": True,
        "radsetu_hub_smtp_password": "a-mail-secret",
    }
    playbook("-i", "localhost,", "-e", json.dumps(extra), str(book))
    cfg = hub_config.load(out, env={})
    assert cfg["objects"] == {"url": "http://objects.test:8333", "bucket": "radsetu",
                              "access_key": "a-key-id", "secret_key": "a-test-secret",
                              "region": ""}  # fmt: skip
    assert cfg["web"]["behind_tls_proxy"] is True
    assert cfg["mqtt"]["other_brokers"] == ["broker-2.test:8883"]
    assert cfg["index"]["url"] == "postgresql://hub:pw@db.test/radsetu"
    assert cfg["critical"] == {"confirm_minutes": 15.0, "patient_data": "initials",
                               "public_url": "https://hub.example.in"}  # fmt: skip
    assert cfg["sms"]["url"].startswith("http://kannel.test") and cfg["sms"]["password"] == (
        "an-sms-secret") and cfg["sms"]["inbound_key"] == "a-long-inbound-key"  # fmt: skip
    assert cfg["smtp"]["port"] == 587 and cfg["smtp"]["starttls"] is True
    assert cfg["smtp"]["password"] == "a-mail-secret"
