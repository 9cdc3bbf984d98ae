"""Every public DICOM file we can get goes through: intake (``radsetu edge import``, and
C-STORE from dcmtk's storescu where a modality could send it), ``radsetu pack`` and
``unpack``, and the hub's ingest. Each file is byte-identical at the far end, or refused
at intake with a reason; any other outcome fails the test. The counts are printed
(``pytest -s`` shows them).

The corpus (``devkit.corpus.corpus_files``, sources in docs/corpus.md) is real files,
odd ones included: big endian, deflated, 1-bit, float pixel data, RGB, palette, YBR,
multi-frame, overlays, private tags, truncated and malformed files.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from common.dicomfile import MAX_META_BYTES, InvalidInstance, read_meta
from devkit.box import Box, free_port, wait_port
from devkit.corpus import CorpusFile, corpus_files, derived_files
from edge.sneakernet import pack, sources_from_store, unpack
from edge.store import reader
from hub.ingest import import_pack
from hub.store import FileHubStore
from tests.conftest import need

RADSETU = [sys.executable, "-m", "radsetu"]

# the storescu option that proposes each transfer syntax (docs: NOTES on dcmtk)
STORESCU_FLAGS = {
    "1.2.840.10008.1.2": ["-xi"],
    "1.2.840.10008.1.2.1": ["-xe"],
    "1.2.840.10008.1.2.2": ["-xb"],
    "1.2.840.10008.1.2.1.99": ["-xd"],
    "1.2.840.10008.1.2.4.50": ["-xy"],
    "1.2.840.10008.1.2.4.51": ["-xx"],
    "1.2.840.10008.1.2.4.70": ["-xs"],
    "1.2.840.10008.1.2.4.80": ["-xt"],
    "1.2.840.10008.1.2.4.81": ["-xu"],
    "1.2.840.10008.1.2.4.90": ["-xv"],
    "1.2.840.10008.1.2.4.91": ["-xw"],
    "1.2.840.10008.1.2.5": ["-xr"],
}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def dataset_of(data: bytes) -> bytes | None:
    """The bytes after the Part 10 meta header, or the whole file when it has none."""
    try:
        return data[read_meta(data[:MAX_META_BYTES]).end :]
    except InvalidInstance:
        return None


def box_index(data_dir: Path) -> tuple[set[str], set[str], list[str]]:
    with reader(data_dir) as db:
        rows = db.execute("SELECT sha256, dataset_sha256, study_uid FROM instances").fetchall()
    return {r[0] for r in rows}, {r[1] for r in rows}, sorted({r[2] for r in rows})


@pytest.fixture
def corpus(tmp_path) -> list[CorpusFile]:
    return corpus_files() + derived_files(tmp_path / "derived")


def test_every_public_dicom_file_gets_through(tmp_path, corpus):
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()

    # -- intake: radsetu edge import of a folder holding every file ------------------
    src = tmp_path / "corpus"
    src.mkdir()
    by_name: dict[str, CorpusFile] = {}
    for i, f in enumerate(corpus):
        name = f"{i:04d}_{f.path.name}"
        shutil.copyfile(f.path, src / name)
        by_name[name] = f
    box = Box(tmp_path / "box")  # its config and data folder; not serving yet
    r = subprocess.run(
        [*RADSETU, "edge", "import", str(src), "--config", str(box.config), "-v"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    refused: dict[str, str] = {}
    for line in r.stderr.splitlines():
        if "import refused " in line:
            name, _, why = line.split("import refused ", 1)[1].partition(": ")
            refused[name] = why
    assert refused.keys() <= by_name.keys()
    file_sha, dataset_sha, studies = box_index(box.data_dir)
    for name, f in by_name.items():
        data = f.path.read_bytes()
        if name in refused:
            assert refused[name].strip(), f"{f.source} {f.name}: refused without a reason"
            counts["import: refused"] += 1
            reasons[refused[name][:70]] += 1
        elif sha(data) in file_sha:
            counts["import: kept byte for byte"] += 1
        elif (ds := dataset_of(data)) is not None and sha(ds) in dataset_sha:
            counts["import: dataset kept byte for byte (own meta header)"] += 1
        else:
            pytest.fail(f"{f.source} {f.name}: neither kept nor refused by radsetu edge import")

    # -- intake: C-STORE from storescu, beside dcmtk's bit-preserving receiver --------
    accepted = [n for n in by_name if n not in refused]
    groups: dict[str, list[Path]] = defaultdict(list)
    for name in accepted:
        ts = read_meta((src / name).read_bytes()[:MAX_META_BYTES]).transfer_syntax
        if ts in STORESCU_FLAGS:
            groups[ts].append(src / name)
        else:
            counts["c-store: storescu cannot propose its transfer syntax"] += 1
    wire_dir = tmp_path / "wire"
    wire_dir.mkdir()
    wire_port = free_port()
    storescp = subprocess.Popen(
        [need("storescp"), "+B", "+xa", "-aet", "RADSETU", "-od", str(wire_dir), str(wire_port)],
        stderr=subprocess.DEVNULL,
    )
    box.start()
    try:
        wait_port(wire_port, proc=storescp)
        for ts, paths in sorted(groups.items()):
            outcome = per_file(send(box.dicom_port, ts, paths))
            send(wire_port, ts, paths)  # the same send, to see what went on the wire
            for p in paths:
                how = outcome.get(str(p), "storescu could not read or send it")
                counts[f"c-store: {how}"] += 1
    finally:
        box.stop()
        storescp.terminate()
        storescp.wait()
    sent = {}
    for p in wire_dir.iterdir():
        data = p.read_bytes()
        meta = read_meta(data[:MAX_META_BYTES])
        sent[(meta.sop_instance_uid, meta.transfer_syntax)] = data[meta.end :]
    file_sha, dataset_sha, studies = box_index(box.data_dir)
    with reader(box.data_dir) as db:
        at_box = {
            (u, t): d
            for u, t, d in db.execute(
                "SELECT sop_instance_uid, transfer_syntax, dataset_sha256 FROM instances"
            )
        }
    for key, data in sent.items():
        if key not in at_box:
            # storescp took it but the box did not: only with a refusal's reason
            counts["c-store: refused by the box"] += 1
            continue
        assert sha(data) in dataset_sha, f"{key}: the box's dataset is not what was sent"
        counts["c-store: dataset kept as sent on the wire"] += 1

    # -- radsetu pack / unpack and the hub's ingest, study by study -------------------
    hub = FileHubStore(tmp_path / "hub")
    codecs: Counter[str] = Counter()
    try:
        for uid in studies:
            sources = sources_from_store(box.data_dir, uid)
            out = tmp_path / "packs" / f"{uid}.radsetu"
            out.parent.mkdir(exist_ok=True)
            result = pack(sources, out, "corpus-box", 256 * 1024, 3, pixel_effort=3)
            assert not result.held, result.held
            codecs.update(e.codec for e in result.manifest.instances)
            counts["pack: coder fell back to zstd"] += len(result.fallbacks)
            _, written = unpack(out, tmp_path / "unpacked" / uid)
            expected = sorted(s.path.read_bytes() for s in sources)
            assert sorted(p.read_bytes() for p in written) == expected, uid
            counts["unpack: byte-identical"] += len(written)
            ack = import_pack(hub, str(out))
            assert ack.get("verified"), f"{uid}: the hub did not verify it: {ack}"
            at_hub = sorted(i["sha256"] for i in hub.study(uid))
            assert at_hub == sorted(sha(d) for d in expected), uid
            for i in hub.study(uid):
                stored = tmp_path / "hub" / "objects" / i["sha256"][:2] / f"{i['sha256']}.dcm"
                assert sha(stored.read_bytes()) == i["sha256"]
            counts["hub: byte-identical"] += len(at_hub)
    finally:
        hub.close()

    print(f"\ncorpus: {len(corpus)} files from {len({f.source for f in corpus})} sources")
    for k, n in sorted(counts.items()):
        print(f"  {n:5d}  {k}")
    print("  codecs at pack: " + ", ".join(f"{c} {n}" for c, n in codecs.most_common()))
    print("  refused at import, by reason:")
    for why, n in reasons.most_common():
        print(f"  {n:5d}  {why}")
    assert counts["hub: byte-identical"] == counts["unpack: byte-identical"] > 300


def send(port: int, ts: str, paths: list[Path]) -> str:
    cmd = [need("storescu"), "-v", "-nh", "-aec", "RADSETU", *STORESCU_FLAGS[ts]]
    r = subprocess.run(
        [*cmd, "127.0.0.1", str(port), *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    return r.stderr


def per_file(stderr: str) -> dict[str, str]:
    """storescu -v's log: what became of each file it read."""
    out, current = {}, None
    for line in stderr.splitlines():
        if "Sending file: " in line:
            current = line.split("Sending file: ", 1)[1].strip()
        elif "Received Store Response" in line and current:
            ok = "(Success)" in line or "Warning" in line
            out[current] = "stored" if ok else "refused by the box: " + line.split("Response", 1)[1]
            current = None
    return out
