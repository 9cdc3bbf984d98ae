"""`radsetu pack` / `radsetu unpack`: a real study to one file and back, byte for byte."""

import ast
import subprocess
import sys

from devkit.corpus import data_file, replicate
from tests.helpers import ROOT

RADSETU = [sys.executable, "-m", "radsetu"]
WIRE = ROOT / "wire"


def run(*args):
    return subprocess.run([*RADSETU, *map(str, args)], capture_output=True, text=True, timeout=120)


def test_round_trip_of_a_real_study(tmp_path):
    # 30 slices made from a real CT slice with new UIDs
    files = replicate(data_file("693_UNCI.dcm"), tmp_path / "study", 30)
    (tmp_path / "study" / "README.txt").write_text("not DICOM")
    r = run("pack", tmp_path / "study", "-o", tmp_path / "s.radsetu", "--chunk-size", "64")
    assert r.returncode == 0, r.stderr
    assert "30 instances" in r.stdout and "skipped" in r.stderr
    packed = (tmp_path / "s.radsetu").stat().st_size
    assert packed < sum(f.stat().st_size for f in files) / 1.5
    r = run("unpack", tmp_path / "s.radsetu", "-o", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    import pydicom

    for f in files:
        uid = pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID
        assert (tmp_path / "out" / f"{uid}.dcm").read_bytes() == f.read_bytes()
    assert not list((tmp_path / "out").glob(".*part"))


def test_damaged_pack_file_is_refused(tmp_path):
    replicate(data_file("693_UNCI.dcm"), tmp_path / "study", 3)
    p = tmp_path / "s.radsetu"
    assert run("pack", tmp_path / "study", "-o", p).returncode == 0
    data = bytearray(p.read_bytes())
    data[-1000] ^= 0xFF
    p.write_bytes(bytes(data))
    r = run("unpack", p, "-o", tmp_path / "out")
    assert r.returncode == 1 and "sha256 mismatch" in r.stderr
    assert (
        not list((tmp_path / "out").glob("*.dcm"))
        or len(list((tmp_path / "out").glob("*.dcm"))) < 3
    )
    assert not list((tmp_path / "out").glob(".*part"))
    (tmp_path / "junk").write_bytes(b"hello")
    r = run("unpack", tmp_path / "junk", "-o", tmp_path / "out2")
    assert r.returncode == 1 and "not a RadSetu pack file" in r.stderr


def test_mixed_studies_are_refused(tmp_path):
    replicate(data_file("693_UNCI.dcm"), tmp_path / "two" / "a", 2)
    replicate(data_file("693_UNCI.dcm"), tmp_path / "two" / "b", 2)
    r = run("pack", tmp_path / "two", "-o", tmp_path / "x.radsetu")
    assert r.returncode == 1 and "one study at a time" in r.stderr


def test_pack_a_study_from_the_box_store(tmp_path):
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "data"}"\n[store]\nreserve_bytes = 0\n')
    files = replicate(data_file("MR2_UNCR.dcm"), tmp_path / "mr", 3, study_uid="1.2.3.999")
    assert run("edge", "import", tmp_path / "mr", "--config", cfg).returncode == 0
    r = run("pack", "1.2.3.999", "--config", cfg, "-o", tmp_path / "mr.radsetu")
    assert r.returncode == 0, r.stderr
    assert run("unpack", tmp_path / "mr.radsetu", "-o", tmp_path / "out").returncode == 0
    assert {p.read_bytes() for p in (tmp_path / "out").glob("*.dcm")} == {
        f.read_bytes() for f in files
    }


def test_wire_does_no_io():
    """wire/ is the sans-I/O core: no sockets, MQTT, SQLite, filesystem or clock."""
    forbidden = {
        "os",
        "socket",
        "sqlite3",
        "sqlite_utils",
        "paho",
        "pathlib",
        "time",
        "shutil",
        "subprocess",
        "threading",
        "io",
        "edge",
        "hub",
    }
    for p in WIRE.glob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                assert n.split(".")[0] not in forbidden, f"{p.name} imports {n}"
        assert "open(" not in p.read_text(), f"{p.name} opens files"


def test_pack_picks_the_coder_for_the_link(tmp_path):
    replicate(data_file("693_UNCI.dcm"), tmp_path / "ct", 4)
    slow = run("pack", tmp_path / "ct", "-o", tmp_path / "a", "--link-kbps", "256")
    assert slow.returncode == 0, slow.stderr
    assert "picked dicom-jxl effort 8" in slow.stdout and "zstd-3" in slow.stdout
    fast = run("pack", tmp_path / "ct", "-o", tmp_path / "b", "--link-kbps", "1000000")
    assert "picked dicom-jxl effort 8" not in fast.stdout
    assert (tmp_path / "a").stat().st_size < (tmp_path / "b").stat().st_size
