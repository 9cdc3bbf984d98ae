"""Real DICOM for tests and benchmarks: pydicom's bundled files and pydicom-data.

Nothing is fetched: both come from installed packages. Big studies are made from real
slices with new Study/Series/SOP Instance UIDs, in a folder the caller owns.
"""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid


def pydicom_file(name: str) -> Path:
    """A file bundled in pydicom's wheel (never one pydicom would download)."""
    base = Path(pydicom.__file__).parent / "data"
    found = list(base.rglob(name))
    if not found:
        raise FileNotFoundError(f"{name} is not bundled with pydicom")
    return found[0]


def data_file(name: str) -> Path:
    """A file from the pydicom-data package (a test dependency)."""
    import data_store

    p = Path(data_store.__file__).parent / "data" / name
    if not p.exists():
        raise FileNotFoundError(f"{name} is not in pydicom-data")
    return p


# Several modalities and transfer syntaxes, with the dcmtk storescu flag that proposes
# each one's transfer syntax.
SAMPLES: list[tuple[str, str, list[str]]] = [
    ("data", "693_UNCI.dcm", []),  # CT 512x512, explicit VR LE
    ("data", "MR2_UNCR.dcm", []),  # MR 1024x1024
    ("data", "RG1_UNCI.dcm", []),  # CR, 7 MB
    ("data", "US1_UNCR.dcm", []),  # US
    ("pydicom", "MR_small_implicit.dcm", ["-xi"]),  # MR, implicit VR LE
    ("data", "OBXXXX1A_expb.dcm", ["-xb"]),  # US, explicit big endian
    ("data", "OBXXXX1A_rle_2frame.dcm", ["-xr"]),  # US RLE, multi-frame
    ("data", "693_J2KR.dcm", ["-xv"]),  # CT JPEG 2000 lossless
    ("pydicom", "JPEG2000.dcm", ["-xw"]),  # NM JPEG 2000
    ("data", "eCT_Supplemental.dcm", []),  # enhanced CT, multi-frame
    ("data", "JPEG-LL.dcm", ["-xs"]),  # NM, JPEG lossless
    ("data", "emri_small_jpeg_ls_lossless.dcm", ["-xt"]),  # MR JPEG-LS
    ("pydicom", "SC_rgb_jpeg_dcmtk.dcm", ["-xy"]),  # JPEG baseline
    ("pydicom", "image_dfl.dcm", ["-xd"]),  # deflated explicit VR LE
]


def sample_path(origin: str, name: str) -> Path:
    return data_file(name) if origin == "data" else pydicom_file(name)


def replicate(src: Path, out_dir: Path, count: int, study_uid: str | None = None) -> list[Path]:
    """``count`` copies of a real slice as one new study (new UIDs per copy)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(src)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    paths = []
    for i in range(count):
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        p = out_dir / f"{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The bytes after a Part 10 file's meta header."""
    from edge.dicomfile import read_meta

    data = Path(path).read_bytes()
    return data[read_meta(data[:65536]).end :]


def tree_size(paths: list[Path]) -> int:
    return sum(os.path.getsize(p) for p in paths)
