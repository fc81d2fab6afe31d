#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
"""Writes the NIfTI fixtures of `--kind auto` (CT or labels?) with nibabel, into kind/, and
kind/expected.json with the kind each should be read as and nibabel's min and max of its values.

Run with the system Python that has nibabel and numpy (Debian: apt-get install python3-nibabel):

    /usr/bin/python3 tests/data/nifti/make_kind_fixtures.py

The C++ test VolumeFileTest.AutoKindFollowsTheEvidenceOfFilesWrittenByNibabel reads each file
with ReadVolumeFile(kAuto) and checks the kind, the reason and the value range. Files are
gzip-compressed with mtime 0, so rerunning the script reproduces the same bytes.
"""

import gzip
import io
import json
import os
import struct

import nibabel as nib
import numpy as np

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kind")
SHAPE = (8, 8, 6)  # 384 voxels: room for more than 256 distinct values
AFFINE = np.array([[-0.8, 0, 0, 100.0], [0, -0.8, 0, 120.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])


def index_ramp():
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    return i + SHAPE[0] * j + SHAPE[0] * SHAPE[1] * k  # 0 .. 383, each once


def ct_hu():
    """A CT in HU: air (-1000) around a body of soft tissue (40 + a ramp) and fat (-100)."""
    v = np.full(SHAPE, -1000, dtype=np.int16)
    v[1:7, 1:7, :] = 40 + (index_ramp()[1:7, 1:7, :] % 50)
    v[2:4, 2:4, :] = -100
    return v


def labels():
    v = np.zeros(SHAPE, dtype=np.int16)
    v[2:6, 2:6, 1:5] = 1
    v[3:5, 3:5, 2:4] = 2
    v[6, 6, 5] = 3
    return v


def image(data, intent=None, scaling=None):
    img = nib.Nifti1Image(data, AFFINE, dtype=data.dtype)
    img.set_qform(AFFINE, code=1)
    img.set_sform(AFFINE, code=1)
    img.header.set_xyzt_units("mm")
    if intent:
        img.header.set_intent(intent)
    if scaling:
        # dcm2niix writes scl_slope / scl_inter itself; nibabel would pick its own on save.
        img.header.set_slope_inter(*scaling)
    return img


def save(name, img, scaling=None):
    raw = io.BytesIO()
    file_map = nib.Nifti1Image.make_file_map({"image": raw, "header": raw})
    img.to_file_map(file_map)
    data = bytearray(raw.getvalue())
    if scaling:
        data[112:120] = struct.pack("<ff", *scaling)  # NIfTI-1 scl_slope, scl_inter
    with open(os.path.join(HERE, name), "wb") as f:
        with gzip.GzipFile(fileobj=f, mode="wb", mtime=0, filename="") as gz:
            gz.write(bytes(data))


def main():
    os.makedirs(HERE, exist_ok=True)
    cases = [
        # (file, data, intent, scaling, expected kind, words the reason holds)
        ("int16_hu.nii.gz", ct_hu(), None, (1.0, 0.0), "ct", "negative"),
        ("uint16_offset.nii.gz", (ct_hu().astype(np.int32) + 1024).astype(np.uint16), None,
         (1.0, -1024.0), "ct", "scaling"),
        ("int16_many_values.nii.gz", index_ramp().astype(np.int16), None, None, "ct",
         "more than 256"),
        ("int16_intent_label.nii.gz", labels(), "label", None, "label", "NIFTI_INTENT_LABEL"),
        ("float32_intent_label.nii.gz", labels().astype(np.float32), "label", None, "label",
         "NIFTI_INTENT_LABEL"),
        ("uint8_few_values.nii.gz", labels().astype(np.uint8), None, None, "label",
         "4 distinct"),
        ("ct_uint8_windowed.nii.gz", (index_ramp() % 200).astype(np.uint8), None, None, "ct",
         "file name"),
        ("seg_uint8_many_labels.nii.gz", (index_ramp() % 200).astype(np.uint8), None, None,
         "label", "200 distinct"),
    ]
    expected = {"generator": f"nibabel {nib.__version__}, numpy {np.__version__}", "files": {}}
    for name, data, intent, scaling, kind, reason in cases:
        save(name, image(data, intent), scaling)
        back = nib.load(os.path.join(HERE, name))
        values = back.get_fdata()
        expected["files"][name] = {
            "kind": kind,
            "reason": reason,
            "intent_code": int(back.header["intent_code"]),
            "min": float(values.min()),
            "max": float(values.max()),
            "affine": back.affine.tolist(),
        }
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
