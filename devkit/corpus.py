"""Real DICOM for tests and benchmarks: pydicom's bundled files, pydicom-data, and the
registry packages in ``requirements-corpus.txt`` (pylinac's demo CBCT, heudiconv's and
nibabel's test data, deid-data).

Nothing is fetched at run time: pydicom and pydicom-data are installed test
dependencies; the others are downloaded by ``make test`` into ``.corpus/`` and unpacked
there by ``python -m devkit.corpus`` (archives inside them, zip and gzip, are opened
too). Big studies are made from real slices with new Study/Series/SOP Instance UIDs, in
a folder the caller owns.
"""

from __future__ import annotations

import functools
import gzip
import os
import shutil
import sys
import tarfile
import zipfile
from dataclasses import dataclass
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
    return series_from([src], out_dir, count, study_uid)


def corpus_file(name: str) -> Path:
    """A corpus file by the end of its name (``make test`` prepares the corpus)."""
    for f in corpus_files():
        if f.name.endswith(name):
            return f.path
    raise FileNotFoundError(f"{name} is not in the corpus")


# heudiconv's test data: a real MR of 3 frames of 162 x 162, whose frames get a preview
MULTI_FRAME_MR = "MRI_102TD_PHA_S.MR.Chen_Matthews_1.3.1.2022.11.16.15.50.20.357.31204541.dcm"


def head_ct_slices() -> list[Path]:
    """A real head CT series: pylinac's demo CBCT "High quality head" (64 slices,
    512 x 512 x 16), in slice order. Raises FileNotFoundError without the corpus."""
    return list(_head_ct())


@functools.cache
def _head_ct() -> tuple[Path, ...]:
    """The series' files, each read once per process: the slices with pixel data, by
    their position along the patient."""
    position: dict[Path, float] = {}
    for f in corpus_files():
        if "High quality head/" in f.name:
            ds = pydicom.dcmread(f.path)
            if "PixelData" in ds:
                z = ds.ImagePositionPatient[2] if "ImagePositionPatient" in ds else 0.0
                position[f.path] = float(z)
    if not position:
        raise FileNotFoundError("pylinac's head CBCT is not in the corpus (run 'make test')")
    return tuple(sorted(position, key=position.__getitem__))


def series_from(
    srcs: list[Path], out_dir: Path, count: int, study_uid: str | None = None
) -> list[Path]:
    """One new study of ``count`` instances made from real slices, taken in turn (a
    series longer than ``srcs`` repeats them), each with new UIDs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = study_uid or generate_uid(), generate_uid()
    originals = [pydicom.dcmread(s) for s in srcs]
    paths = []
    for i in range(count):
        ds = originals[i % len(originals)]
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = i + 1
        p = out_dir / f"{i:05d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def dataset_bytes(path: Path) -> bytes:
    """The bytes after a Part 10 file's meta header."""
    from common.dicomfile import read_meta

    data = Path(path).read_bytes()
    return data[read_meta(data[:65536]).end :]


def tree_size(paths: list[Path]) -> int:
    return sum(os.path.getsize(p) for p in paths)


# -- the whole corpus -------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("RADSETU_CORPUS", ROOT / ".corpus"))
# where, inside each downloaded package, its DICOM files are
PACKAGE_DATA = {
    "pylinac": "pylinac/demo_files",
    "heudiconv": "heudiconv/tests/data",
    "nibabel": "nibabel",
    "deid-data": "deid_data/data",
}
NOT_DICOM = {
    ".py",
    ".pyc",
    ".json",
    ".md",
    ".txt",
    ".dump",
    ".icc",
    ".nii",
    ".csv",
    ".tsv",
    ".ini",
    ".cfg",
    ".yml",
    ".yaml",
    ".mat",
    ".npy",
    ".npz",
    ".png",
    ".jpg",
    ".h5",
    ".xml",
    ".par",
    ".rec",
    ".mgh",
    ".mgz",
    ".img",
    ".hdr",
    ".gii",
    ".trk",
    ".tck",
    ".bz2",
    ".lock",
    ".toml",
    ".js",
    ".html",
    ".dat",
    ".pkl",
    ".sh",
    ".typed",
    ".log",
}


@dataclass(frozen=True)
class CorpusFile:
    source: str  # the package it came from
    name: str  # its path inside the package (an archive's members after "!")
    path: Path


def _looks_like_data(p: Path) -> bool:
    """A .dcm file, a file with no extension (DICOM on CDs has none), or any file with
    the Part 10 prefix: the DICOM files of a package, odd ones included."""
    if p.name.startswith(("README", "LICENSE", "COPYING", ".")) or p.suffix in NOT_DICOM:
        return False
    if p.suffix.lower() == ".dcm" or not p.suffix or p.suffix[1:].isdigit():
        return True
    with open(p, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def _walk(source: str, base: Path) -> list[CorpusFile]:
    return [
        CorpusFile(source, str(p.relative_to(base)), p)
        for p in sorted(base.rglob("*"))
        if p.is_file() and _looks_like_data(p) and "__pycache__" not in p.parts
    ]


def corpus_files() -> list[CorpusFile]:
    """Every candidate DICOM file of every source, in a stable order. Raises
    FileNotFoundError when ``.corpus/`` was not prepared (``make test`` does it)."""
    import data_store

    files = _walk("pydicom " + pydicom.__version__, Path(pydicom.__file__).parent / "data")
    files = [f for f in files if not f.name.endswith(".gz")]  # unpacked below
    files += _walk("pydicom-data", Path(data_store.__file__).parent / "data")
    unpacked = CORPUS / "unpacked"
    if not (unpacked / ".ready").exists():
        raise FileNotFoundError(
            f"{unpacked} is not prepared: run 'make test' (it downloads the corpus "
            "packages of requirements-corpus.txt and unpacks them)"
        )
    for d in sorted(unpacked.iterdir()):
        if d.is_dir():
            files += _walk(d.name, d)
    return files


def prepare(downloads: Path, dest: Path) -> None:
    """Unpack each downloaded package's DICOM folder into ``dest/<name>-<version>/``,
    opening zip and gzip archives found there (and pydicom's own zipped file)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for archive in sorted(downloads.iterdir()):
        name = archive.name
        pkg = next((k for k in PACKAGE_DATA if name.replace("_", "-").startswith(k + "-")), None)
        if pkg is None:
            continue
        version = name[len(pkg) + 1 :].split("-")[0].removesuffix(".tar.gz")
        out = dest / f"{pkg}-{version}"
        inner = PACKAGE_DATA[pkg]
        if name.endswith(".whl"):
            with zipfile.ZipFile(archive) as z:
                for m in z.namelist():
                    if m.startswith(inner + "/") and not m.endswith("/"):
                        _extract(z.read(m), out / m[len(inner) + 1 :])
        else:
            with tarfile.open(archive) as t:
                for m in t.getmembers():
                    _, _, rel = m.name.partition("/")
                    if m.isfile() and rel.startswith(inner + "/"):
                        f = t.extractfile(m)
                        assert f is not None
                        _extract(f.read(), out / rel[len(inner) + 1 :])
    zipped = Path(pydicom.__file__).parent / "data" / "test_files" / "zipMR.gz"
    _extract(zipped.read_bytes(), dest / f"pydicom-{pydicom.__version__}-gz" / "zipMR.gz")
    (dest / ".ready").write_text("unpacked by devkit.corpus\n")


def _extract(data: bytes, target: Path) -> None:
    """Write a file; a zip becomes a folder of its members, a .gz its content."""
    low = target.name.lower()
    if low.endswith(".zip"):
        import io

        with zipfile.ZipFile(io.BytesIO(data)) as z:
            for m in z.namelist():
                if not m.endswith("/") and not m.startswith("__MACOSX"):
                    _extract(z.read(m), target.with_name(target.name + "!") / m)
        return
    if low.endswith(".gz"):
        _extract(gzip.decompress(data), target.with_name(target.name[:-3]))
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


if __name__ == "__main__":
    prepare(Path(sys.argv[1]) / "downloads", Path(sys.argv[1]) / "unpacked")
    print(f"corpus unpacked: {sum(1 for _ in (Path(sys.argv[1]) / 'unpacked').rglob('*'))} entries")


def derived_files(dest: Path) -> list[CorpusFile]:
    """Odd kinds no package carries, made from a real CT slice with new UIDs: float and
    double float pixel data (as in a parametric map), and signed pixels at both
    extremes of their word."""
    import numpy as np

    dest.mkdir(parents=True, exist_ok=True)
    src = data_file("693_UNCI.dcm")
    out = []

    def fresh() -> pydicom.Dataset:
        ds = pydicom.dcmread(src)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    ct = pydicom.dcmread(src).pixel_array
    for name, keyword, dtype in (
        ("float.dcm", "FloatPixelData", np.float32),
        ("double.dcm", "DoubleFloatPixelData", np.float64),
    ):
        ds = fresh()
        del ds.PixelData
        for k in ("PixelRepresentation", "HighBit", "BitsStored"):
            delattr(ds, k)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.30"
        ds.BitsAllocated = 32 if dtype is np.float32 else 64
        setattr(ds, keyword, (ct.astype(dtype) * dtype(0.5)).tobytes())
        ds.save_as(dest / name, enforce_file_format=True)
        out.append(CorpusFile("derived from 693_UNCI.dcm", name, dest / name))
    ds = fresh()
    a = ct.astype(np.int16)
    a[0, :8], a[-1, -8:] = -32768, 32767
    ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 16, 15
    ds.PixelData = a.tobytes()
    ds.save_as(dest / "signed_extremes.dcm", enforce_file_format=True)
    out.append(
        CorpusFile("derived from 693_UNCI.dcm", "signed_extremes.dcm", dest / "signed_extremes.dcm")
    )
    return out
