#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
"""`mewm import dicom` on DICOM series written by pydicom (not by mewm), checked with nibabel.

A NIfTI volume with an oblique affine is written by nibabel; pydicom writes it as a CT series
(ImagePositionPatient/ImageOrientationPatient/PixelSpacing from the affine, LPS; stored values
with RescaleSlope/Intercept; file names and instance numbers in an order unrelated to position;
a text file and a binary file beside them). mewm imports it to NIfTI and nibabel must read back
the same affine and the same HU. Then the refusals: gantry tilt, a missing slice, mixed
orientations, two series without --series-uid (listed), an undecodable transfer syntax (JPEG 2000),
and an RLE-compressed series that DCMTK decodes. Exit 77 (skipped) without pydicom or nibabel.

    /usr/bin/python3 tests/tools/dicom_import_test.py MEWM
    /usr/bin/python3 tests/tools/dicom_import_test.py --write-fixture FOLDER [TILT_MM]
"""
import os
import random
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import nibabel as nib
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid, RLELossless
except ImportError as error:
    print("skipped: %s (Debian: python3-pydicom python3-nibabel)" % error)
    sys.exit(77)

MEWM = sys.argv[1]
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
        print("FAIL:", message)


def ras_affine():
    """An oblique RAS affine: 0.8 x 0.7 mm pixels, 2.5 mm slices, rotated 12 degrees about z and
    5 degrees about x, with det > 0."""
    a, b = np.radians(12.0), np.radians(5.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.8, 0.7, 2.5])
    affine[:3, 3] = [-101.5, 37.25, -310.0]
    return affine


def volume(shape=(40, 36, 12), seed=5):
    rng = np.random.default_rng(seed)
    data = rng.integers(-1024, 1800, size=shape).astype(np.int16)
    data[5:15, 6:20, 3:9] = 60  # a block of liver-like HU
    return data


def write_series(folder, data, affine, series_uid=None, slope=1.0, intercept=-1024.0,
                 tilt_mm=0.0, skip=(), orientation_of=None, syntax=ExplicitVRLittleEndian,
                 description="pydicom CT", frame_of_reference_uid=None, instances=None):
    """Writes data (i, j, k) with a RAS affine as one CT series, one file per slice. With
    frame_of_reference_uid, the files carry it; `instances`, a list, receives the SOP instance
    UIDs."""
    os.makedirs(folder, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row, column = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    order = list(range(data.shape[2]))
    random.Random(len(folder)).shuffle(order)  # file names unrelated to position
    for n, k in enumerate(order):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = os.path.join(folder, "IM%04d" % n)
        ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientID = "DCM001"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SeriesDescription = description
        if frame_of_reference_uid:
            ds.FrameOfReferenceUID = frame_of_reference_uid
        if instances is not None:
            instances.append(ds.SOPInstanceUID)
        ds.InstanceNumber = data.shape[2] - k  # reversed: not the order to trust either
        position = lps @ np.array([0.0, 0.0, k, 1.0])
        position[:3] += np.array(row) * tilt_mm * k  # a sideways shift per slice: gantry tilt
        ds.ImagePositionPatient = [float("%.6f" % v) for v in position[:3]]
        r, c = (orientation_of(k) if orientation_of else (row, column))
        ds.ImageOrientationPatient = [float("%.8f" % v) for v in list(r) + list(c)]
        ds.PixelSpacing = [float("%.6f" % spacing[1]), float("%.6f" % spacing[0])]
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = data.shape[1], data.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = np.round((data[:, :, k].T.astype(np.float64) - intercept) / slope)
        ds.PixelData = stored.astype(np.int16).tobytes()
        ds.is_little_endian, ds.is_implicit_VR = True, False
        if syntax == RLELossless:
            ds.compress(RLELossless)
        elif syntax != ExplicitVRLittleEndian:
            from pydicom.encaps import encapsulate
            ds.file_meta.TransferSyntaxUID = syntax
            ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\0" * 64])
            ds["PixelData"].VR = "OB"
        ds.save_as(path, write_like_original=False)
    return series_uid


def mewm(*args):
    result = subprocess.run([MEWM, "import", "dicom", *args], capture_output=True, text=True,
                            timeout=120)
    return result.returncode, result.stdout + result.stderr


def main():
    with tempfile.TemporaryDirectory() as tmp:
        affine = ras_affine()
        data = volume()
        nib.save(nib.Nifti1Image(data, affine), os.path.join(tmp, "source.nii.gz"))
        source = nib.load(os.path.join(tmp, "source.nii.gz"))  # nibabel's affine, as stored
        good = os.path.join(tmp, "good")
        write_series(good, np.asarray(source.dataobj), source.affine, slope=0.5,
                     intercept=-1024.0)
        with open(os.path.join(good, "README.txt"), "w") as f:
            f.write("not DICOM\n")
        with open(os.path.join(good, "junk.bin"), "wb") as f:
            f.write(os.urandom(4096))
        out = os.path.join(tmp, "imported.nii.gz")
        code, text = mewm(good, "--out", out)
        check(code == 0, "import of the good series: %s" % text)
        check("2 non-DICOM files skipped" in text, "skipped files reported: %s" % text)
        if code == 0:
            imported = nib.load(out)
            check(np.allclose(imported.affine, source.affine, atol=1e-4),
                  "affine\n%s\nvs nibabel's\n%s" % (imported.affine, source.affine))
            values = np.asarray(imported.dataobj, dtype=np.float64)
            check(values.shape == data.shape, "shape %s vs %s" % (values.shape, data.shape))
            if values.shape == data.shape:
                check(np.array_equal(values, data.astype(np.float64)),
                      "HU differ: max |diff| %g" % np.abs(values - data).max())
        code, text = mewm(good, "--out", os.path.join(tmp, "imported.vdb"))
        check(code == 0 and os.path.getsize(os.path.join(tmp, "imported.vdb")) > 0,
              ".vdb output: %s" % text)
        code, text = mewm(good, "--out", out)
        check(code == 1 and "exists" in text, "an existing output is not replaced: %s" % text)

        # A flipped slice axis (det < 0): slices are sorted along the normal, so k runs the other
        # way; every voxel must still sit where nibabel puts it.
        flipped = source.affine @ np.diag([1.0, 1.0, -1.0, 1.0])
        write_series(os.path.join(tmp, "flipped"), data, flipped)
        out_f = os.path.join(tmp, "flipped.nii.gz")
        code, text = mewm(os.path.join(tmp, "flipped"), "--out", out_f)
        check(code == 0, "flipped: %s" % text)
        if code == 0:
            imported = nib.load(out_f)
            expected = flipped @ np.diag([1.0, 1.0, -1.0, 1.0])
            expected[:3, 3] = (flipped @ np.array([0, 0, data.shape[2] - 1, 1.0]))[:3]
            check(np.allclose(imported.affine, expected, atol=1e-4),
                  "flipped affine\n%s\nvs\n%s" % (imported.affine, expected))
            check(np.array_equal(np.asarray(imported.dataobj), data[:, :, ::-1].astype(np.float32)),
                  "flipped HU")

        # Refusals, each naming its reason.
        write_series(os.path.join(tmp, "tilt"), data, source.affine, tilt_mm=0.4)
        code, text = mewm(os.path.join(tmp, "tilt"), "--out", os.path.join(tmp, "t.nii.gz"))
        check(code == 1 and "gantry tilt" in text, "tilt: %s" % text)
        write_series(os.path.join(tmp, "gap"), data, source.affine, skip=(6,))
        code, text = mewm(os.path.join(tmp, "gap"), "--out", os.path.join(tmp, "g.nii.gz"))
        check(code == 1 and "uneven slice spacing" in text and "missing slice" in text,
              "gap: %s" % text)
        rot = np.radians(20.0)
        write_series(os.path.join(tmp, "mixed"), data, source.affine,
                     orientation_of=lambda k: ((1, 0, 0), (0, 1, 0)) if k < 6 else
                     ((np.cos(rot), np.sin(rot), 0), (-np.sin(rot), np.cos(rot), 0)))
        code, text = mewm(os.path.join(tmp, "mixed"), "--out", os.path.join(tmp, "m.nii.gz"))
        check(code == 1 and "mixed orientations" in text, "mixed: %s" % text)

        # Two series in one folder: listed, refused without --series-uid, chosen with it.
        two = os.path.join(tmp, "two")
        first = write_series(os.path.join(two, "a"), data, source.affine, description="first")
        second = write_series(os.path.join(two, "b"), data[:, :, :8], source.affine,
                              description="second")
        code, text = mewm(two, "--list")
        check(code == 0 and first in text and second in text and '"second"' in text,
              "list: %s" % text)
        code, text = mewm(two, "--out", os.path.join(tmp, "two.nii.gz"))
        check(code == 1 and "--series-uid" in text and first in text and second in text,
              "two series: %s" % text)
        code, text = mewm(two, "--out", os.path.join(tmp, "two.nii.gz"), "--series-uid", second)
        check(code == 0 and "8 slices" in text, "--series-uid: %s" % text)
        code, text = mewm(two, "--out", os.path.join(tmp, "x.nii.gz"), "--series-uid", "1.2.3")
        check(code == 1 and "no series 1.2.3" in text, "unknown series: %s" % text)

        # Compressed: RLE is decoded (same HU), JPEG 2000 is a clear error.
        write_series(os.path.join(tmp, "rle"), data, source.affine, syntax=RLELossless)
        out_r = os.path.join(tmp, "rle.nii.gz")
        code, text = mewm(os.path.join(tmp, "rle"), "--out", out_r)
        check(code == 0, "RLE: %s" % text)
        if code == 0:
            check(np.array_equal(np.asarray(nib.load(out_r).dataobj), data.astype(np.float32)),
                  "RLE HU")
        write_series(os.path.join(tmp, "j2k"), data, source.affine,
                     syntax="1.2.840.10008.1.2.4.90")
        code, text = mewm(os.path.join(tmp, "j2k"), "--out", os.path.join(tmp, "j.nii.gz"))
        check(code == 1 and "JPEG 2000" in text and "cannot be decoded" in text, "J2K: %s" % text)

        # A slice cut short at either end of the series was skipped as "not DICOM" and the
        # volume imported one slice short; it is refused, named, wherever the cut falls.
        for cut in (200, 3000):
            folder = os.path.join(tmp, "cut%d" % cut)
            write_series(folder, data, source.affine)
            names = sorted(os.listdir(folder))
            last = max(names, key=lambda n: float(
                pydicom.dcmread(os.path.join(folder, n)).ImagePositionPatient[2]))
            with open(os.path.join(folder, last), "r+b") as f:
                f.truncate(cut)
            code, text = mewm(folder, "--out", os.path.join(tmp, "cut%d.nii.gz" % cut))
            check(code == 1 and "start like DICOM but cannot be read" in text and last in text,
                  "cut at %d: %s" % (cut, text))
            check(not os.path.exists(os.path.join(tmp, "cut%d.nii.gz" % cut)), "cut: no output")
            code, text = mewm(folder, "--list")
            check(code == 0 and "damaged, not readable as DICOM" in text, "cut, list: %s" % text)

        # A slice declaring more pixels than its PixelData holds (4096 x 4096 in a few KB) is
        # refused from its header, before the volume is allocated.
        folder = os.path.join(tmp, "short")
        write_series(folder, data, source.affine)
        first = os.path.join(folder, sorted(os.listdir(folder))[0])
        ds = pydicom.dcmread(first)
        ds.Rows, ds.Columns = 4096, 4096
        ds.save_as(first)
        code, text = mewm(folder, "--out", os.path.join(tmp, "short.nii.gz"))
        check(code == 1 and "PixelData holds" in text and "4096 x 4096" in text,
              "short PixelData: %s" % text)

        # No DICOM at all; a missing folder.
        os.makedirs(os.path.join(tmp, "empty"))
        with open(os.path.join(tmp, "empty", "notes.txt"), "w") as f:
            f.write("x")
        code, text = mewm(os.path.join(tmp, "empty"), "--out", os.path.join(tmp, "e.nii.gz"))
        check(code == 1 and "no DICOM image series" in text and "1 not DICOM" in text,
              "empty: %s" % text)
        code, text = mewm(os.path.join(tmp, "missing"), "--out", os.path.join(tmp, "e.nii.gz"))
        check(code == 1 and "is not a folder" in text, "missing: %s" % text)
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("PASS")
    return 0


def write_fixture(folder, tilt_mm):
    """For the C++ test: FOLDER/source.nii.gz (nibabel) and FOLDER/series/ (pydicom) from it."""
    os.makedirs(folder, exist_ok=True)
    nib.save(nib.Nifti1Image(volume(), ras_affine()), os.path.join(folder, "source.nii.gz"))
    source = nib.load(os.path.join(folder, "source.nii.gz"))
    write_series(os.path.join(folder, "series"), np.asarray(source.dataobj), source.affine,
                 slope=0.5, tilt_mm=tilt_mm)
    with open(os.path.join(folder, "series", "README.txt"), "w") as f:
        f.write("not DICOM\n")
    return 0


if __name__ == "__main__":
    if MEWM == "--write-fixture":  # dicom_import_test.py --write-fixture FOLDER [TILT_MM]
        sys.exit(write_fixture(sys.argv[2], float(sys.argv[3]) if len(sys.argv) > 3 else 0.0))
    sys.exit(main())
