"""`make demo`: broker, hub and a box on this machine; a real study through.

Starts Mosquitto on a free port, the hub (`radsetu hub serve`: API and MQTT ingest) and
a box (`radsetu edge serve`), each with a throwaway data folder. Sends a CT study (20
slices made from pydicom-data's real 693_UNCI.dcm with new UIDs) and a real MR instance
to the box with dcmtk's storescu, waits until the hub has verified every instance, has a
radiologist sign a report on the CT and waits until it is back at the box, then prints
what happened and the URLs to open: the reading room, OHIF on the demo's CT, the
clinic's page and the fleet. Everything then stays up until Ctrl-C (or SIGTERM), so that
those URLs open; ``--exit`` (or RADSETU_DEMO_EXIT=1) stops it at once, for scripts.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devkit.box import Box  # noqa: E402
from devkit.broker import Broker, Hub  # noqa: E402
from devkit.corpus import data_file, replicate  # noqa: E402

TIMEOUT = 120
OHIF = Path(__file__).resolve().parent.parent / "build" / "ohif" / "current"


def wait(what: str, cond, timeout: float = TIMEOUT):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{what}: not within {timeout} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--exit", action="store_true", help="stop once the study and its report are through"
    )
    ap.add_argument("--keep", action="store_true", help="(the default now; kept for old scripts)")
    args = ap.parse_args()
    stay = not (args.exit or os.environ.get("RADSETU_DEMO_EXIT", "") not in {"", "0"})
    # SIGTERM (a service manager, `kill`) ends it as cleanly as Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with tempfile.TemporaryDirectory(prefix="radsetu-demo-") as tmp:
        work = Path(tmp)
        broker = Broker(work / "broker")
        hub = box = None
        try:
            print(f"starting Mosquitto on port {broker.port} ...")
            broker.start()
            viewer = {"viewer": {"ohif_dir": str(OHIF)}} if (OHIF / "index.html").is_file() else {}
            hub = Hub(work / "hub", broker.mqtt_config("hub"), sections=viewer)
            print(f"starting the hub (data in {hub.data_dir}) ...")
            hub.start()
            box = Box(
                work / "box", mqtt=broker.mqtt_config(), box_id="demo-clinic", quiet_seconds=3
            )
            print(f"starting a box (data in {box.data_dir}) ...")
            box.start()

            files = replicate(data_file("693_UNCI.dcm"), work / "ct", 20)
            files.append(data_file("MR2_UNCR.dcm"))
            print(
                f"sending {len(files)} real instances with storescu to "
                f"RADSETU@127.0.0.1:{box.dicom_port} ..."
            )
            t = time.monotonic()
            r = subprocess.run(
                ["storescu", "-aec", "RADSETU", "127.0.0.1", str(box.dicom_port), *map(str, files)],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                print(r.stderr, file=sys.stderr)
                return 1
            print(
                f"  all acknowledged in {time.monotonic() - t:.2f} s (each one fsynced and "
                "indexed before its ack)"
            )
            print("waiting for the studies to be quiet (3 s), packed, sent and verified ...")
            t = time.monotonic()
            studies = wait("studies on the box", lambda: box.api("/api/studies")["studies"])
            wait(
                "every study delivered",
                lambda: all(s["state"] == "delivered" for s in box.api("/api/studies")["studies"]),
            )
            print(f"  delivered in {time.monotonic() - t:.1f} s\n")
            studies = box.api("/api/studies")["studies"]
            at_hub = {s["study_uid"]: s for s in hub.api("/api/studies")["studies"]}
            ok = True
            for s in studies:
                detail = box.api(f"/api/studies/{s['study_uid']}")
                hub_detail = hub.api(f"/api/studies/{s['study_uid']}")
                same = sorted(
                    (i["sop_instance_uid"], i["sha256"]) for i in detail["instances"]
                ) == sorted((i["sop_instance_uid"], i["sha256"]) for i in hub_detail["instances"])
                ok &= same and s["study_uid"] in at_hub
                (tr,) = detail["transfers"][:1]
                print(
                    f"  {s['modality']:<3} {s['patient_name']:<22} {s['instances']:>3} instances "
                    f"{s['bytes'] / 1e6:6.1f} MB -> {tr['stream_bytes'] / 1e6:5.2f} MB on the wire "
                    f"in {tr['chunk_count']} chunks; at the hub: "
                    f"{'every SHA-256 equal' if same else 'MISMATCH'}"
                )
            # a radiologist reports the CT; the report travels back to the box
            ct = next(s for s in studies if s["modality"] == "CT")
            password = secrets.token_urlsafe(12)  # a throwaway demo: shown, never kept
            hub.add_user("dr-demo", "radiologist", password)
            box.add_user("reception", password, role="admin")
            hub.add_user("ops-demo", "operator", password)
            t = time.monotonic()
            rep = hub.api(
                f"/api/studies/{ct['study_uid']}/reports",
                {"findings": "No acute intracranial abnormality.", "impression": "Normal CT.",
                 "radiologist": "dr-demo"},
            )  # fmt: skip
            hub.api(f"/api/reports/{rep['report_id']}/sign", {"radiologist": "dr-demo"})
            back = wait(
                "the report back at the box",
                lambda: [r for r in box.api("/api/reports")["reports"]
                         if r["report_id"] == rep["report_id"]],
            )  # fmt: skip
            print(
                f"  report {rep['report_id']} signed at the hub and kept by the box in "
                f'{time.monotonic() - t:.1f} s: "{back[0]["impression"]}" '
                f"(PDF: http://127.0.0.1:{box.web_port}/api/reports/{rep['report_id']}/pdf)"
            )
            (b,) = hub.api("/api/boxes")["boxes"]
            print(
                f"\nthe hub sees box {b['box_id']}: {'online' if b['online'] else 'offline'}, "
                f"backlog {b['status'].get('backlog_studies')} studies, last sync "
                f"{b['status'].get('last_sync')}"
            )
            print(f"\nopen (user names below, password {password}):")
            print(f"  the clinic's page    http://127.0.0.1:{box.web_port}/  (reception)")
            print(f"  the reading room     http://127.0.0.1:{hub.web_port}/  (dr-demo)")
            if viewer:
                print(f"  OHIF on the CT       http://127.0.0.1:{hub.web_port}/ohif/viewer"
                      f"?StudyInstanceUIDs={ct['study_uid']}  (dr-demo)")  # fmt: skip
            print(f"  the fleet            http://127.0.0.1:{hub.web_port}/fleet  (ops-demo)")
            print(f"  the box's studies    http://127.0.0.1:{box.web_port}/api/studies")
            print(f"  the box's sync       http://127.0.0.1:{box.web_port}/api/sync")
            print(f"  the hub's studies    http://127.0.0.1:{hub.web_port}/api/studies")
            print(f"  the hub's boxes      http://127.0.0.1:{hub.web_port}/api/boxes")
            print(f"  the hub's transfers  http://127.0.0.1:{hub.web_port}/api/transfers")
            if not ok:
                print("the hub's copy differs from the box's", file=sys.stderr)
                return 1
            print("\ndemo done: storescu -> box -> hub, verified; the report came back to the box")
            if stay:
                print(
                    "\neverything keeps running so that these open; Ctrl-C to stop "
                    "(make demo RADSETU_DEMO_EXIT=1, or --exit, to stop at once)",
                    flush=True,
                )
                try:
                    while True:
                        time.sleep(1)
                except KeyboardInterrupt:
                    print("\nstopping the box, the hub and the broker ...")
        except (TimeoutError, RuntimeError) as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            for name, part in (("box", box), ("hub", hub)):
                if part is not None:
                    print(
                        f"--- the {name}'s log (end) ---\n{part.log_text()[-3000:]}",
                        file=sys.stderr,
                    )
            return 1
        finally:
            for part in (box, hub):
                if part is not None:
                    part.stop()
            broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
