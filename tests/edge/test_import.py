"""`radsetu edge import`: folders, DICOMDIR and ZIPs from a USB stick or CD."""

import hashlib
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pydicom
import pytest

from devkit.corpus import SAMPLES, data_file, pydicom_file, sample_path
from edge.importer import run_import, unsafe_zip_name
from edge.store import Store

BIG = 1 << 40


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "data")
    yield s
    s.close()


def stored_bytes(store) -> set[bytes]:
    return {p.read_bytes() for p in store.objects.rglob("*.dcm")}


def imp(store, path, **kw):
    args = {"max_bytes": BIG, "max_total": BIG, "max_ratio": 200, "progress_out": None}
    args.update(kw)
    return run_import(store, Path(path), **args)


def test_folder_is_kept_byte_for_byte(store, tmp_path):
    src = tmp_path / "usb"
    (src / "sub").mkdir(parents=True)
    originals = []
    for i, (origin, name, _) in enumerate(SAMPLES[:6]):
        dest = src / ("sub" if i % 2 else "") / name
        shutil.copy(sample_path(origin, name), dest)
        originals.append(dest.read_bytes())
    (src / "notes.txt").write_text("not an image")
    summary = imp(store, src)
    assert summary.imported == 6
    assert summary.refused == [("notes.txt", summary.refused[0][1])]
    assert "no DICOM file meta header" in summary.refused[0][1]
    assert stored_bytes(store) == set(originals)
    again = imp(store, src)
    assert (again.imported, again.already_there) == (0, 6)


def test_zip_is_kept_byte_for_byte(store, tmp_path):
    z = tmp_path / "study.zip"
    originals = {}
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        for origin, name, _ in SAMPLES[:5]:
            data = sample_path(origin, name).read_bytes()
            zf.writestr(f"DICOM/{name}", data)
            originals[name] = data
    summary = imp(store, z)
    assert summary.imported == 5 and summary.refused == []
    assert stored_bytes(store) == set(originals.values())


def test_zip_traversal_entries_never_land_anywhere(store, tmp_path):
    z = tmp_path / "evil.zip"
    ct = pydicom_file("CT_small.dcm").read_bytes()
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../escape.dcm", ct)
        zf.writestr("/etc/evil.dcm", ct)
        zf.writestr("C:\\windows\\evil.dcm", ct)
        zf.writestr("ok/../../../x.dcm", ct)
        zf.writestr("fine/ct.dcm", data_file("693_UNCI.dcm").read_bytes())
    summary = imp(store, z)
    assert summary.imported == 1
    assert len(summary.refused) == 4
    assert all("path traversal" in r for _, r in summary.refused)
    assert not (tmp_path / "escape.dcm").exists() and not (tmp_path.parent / "escape.dcm").exists()
    # nothing outside the store's own folders was written
    assert sorted(p.name for p in store.root.iterdir()) == [
        "index.db",
        "index.db-shm",
        "index.db-wal",
        "objects",
        "quarantine",
        "tmp",
    ]


@pytest.mark.parametrize(
    "name, unsafe",
    [
        ("a/b.dcm", False),
        ("../a", True),
        ("/abs", True),
        ("a/../../b", True),
        ("C:\\x", True),
        ("..\\x", True),
        ("a\x00b", True),
        ("DICOM/IM0001", False),
    ],
)
def test_unsafe_names(name, unsafe):
    assert unsafe_zip_name(name) is unsafe


def test_zip_bomb_is_refused(store, tmp_path):
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zf:
        with zf.open("huge.dcm", "w", force_zip64=True) as f:
            block = b"\x00" * (1 << 20)
            for _ in range(300):  # 300 MB of zeros, about 300 KB packed
                f.write(block)
    assert z.stat().st_size < 2_000_000
    summary = imp(store, z)
    assert summary.imported == 0
    assert "ZIP bomb" in summary.refused[0][1]
    # and a ZIP claiming more than the total limit is refused whole
    summary = imp(store, z, max_total=100_000_000)
    assert "ZIP bomb" in summary.refused[0][1] and len(summary.refused) == 1
    assert list(store.tmp.iterdir()) == []


def test_dicomdir_on_a_cd(store, tmp_path):
    """pydicom's bundled DICOMDIR with its referenced files, as a CD would hold them."""
    src = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests"
    cd = tmp_path / "cd"
    shutil.copytree(src, cd)
    summary = imp(store, cd)
    assert summary.imported > 0
    listed = {
        "/".join(r.ReferencedFileID)
        if not isinstance(r.ReferencedFileID, str)
        else r.ReferencedFileID
        for r in pydicom.dcmread(cd / "DICOMDIR").DirectoryRecordSequence
        if "ReferencedFileID" in r
    }
    assert summary.imported + len(summary.refused) + summary.already_there == len(listed)


def test_hostile_files_are_refused_with_reasons(store, tmp_path):
    src = tmp_path / "junk"
    src.mkdir()
    (src / "random.bin").write_bytes(bytes(range(256)) * 50)
    (src / "nometa.dcm").write_bytes(pydicom_file("no_meta.dcm").read_bytes())
    ct = data_file("693_UNCI.dcm").read_bytes()
    (src / "truncated.dcm").write_bytes(ct[: len(ct) // 3])
    odd = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    odd.SOPClassUID = odd.file_meta.MediaStorageSOPClassUID = "1.2.3.4.5.6.7.8"
    odd.save_as(src / "oddclass.dcm")
    (src / "good.dcm").write_bytes(ct)
    before = imp(store, data_file("MR2_UNCR.dcm"))
    assert before.imported == 1
    kept_before = stored_bytes(store)
    summary = imp(store, src)
    reasons = dict(summary.refused)
    assert "no DICOM file meta header" in reasons["random.bin"]
    assert "no DICOM file meta header" in reasons["nometa.dcm"]
    assert "truncated" in reasons["truncated.dcm"]
    assert "not a storage SOP class" in reasons["oddclass.dcm"]
    assert summary.imported == 1
    assert kept_before < stored_bytes(store)
    assert list(store.tmp.iterdir()) == []


def test_cli_prints_a_summary_and_exit_code(tmp_path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[store]\nreserve_bytes = 0\n')
    src = tmp_path / "usb"
    src.mkdir()
    shutil.copy(data_file("693_UNCI.dcm"), src)
    run = [sys.executable, "-m", "radsetu", "edge", "import", str(src), "--config", str(cfg)]
    r = subprocess.run(run, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "imported:      1" in r.stdout and "refused:       0" in r.stdout
    assert "import: 1/1 files (100%)" in r.stderr  # progress, when not on a terminal
    (src / "junk.txt").write_text("x")
    r = subprocess.run(run, capture_output=True, text=True)
    assert r.returncode == 1
    assert "already there: 1" in r.stdout and "1 x no DICOM file meta header" in r.stdout
    r = subprocess.run(
        run[:5] + [str(tmp_path / "missing")] + run[6:], capture_output=True, text=True
    )
    assert r.returncode == 2 and "does not exist" in r.stderr
    got = hashlib.sha256(data_file("693_UNCI.dcm").read_bytes()).hexdigest()
    assert (tmp_path / "data" / "objects" / got[:2] / f"{got}.dcm").exists()
