#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
"""Writes tiny NIfTI fixtures with nibabel, and expected.json with what nibabel reads back.

Run with the system Python that has nibabel and numpy:

    /usr/bin/python3 tests/data/nifti/make_fixtures.py

The C++ test (tests/core/nifti_io_test.cc) checks that mewm's reader agrees with nibabel on the
affine (img.affine, RAS+), the shape and a few voxel values (img.get_fdata()). Everything is
deterministic, so rerunning the script reproduces the same bytes.
"""

import gzip
import json
import os
import struct

import nibabel as nib
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHAPE = (5, 4, 3)
# Voxels whose values expected.json records (i, j, k).
PROBES = [(0, 0, 0), (4, 3, 2), (1, 2, 1), (3, 0, 2), (2, 1, 0)]


def ramp(dtype=np.float32):
    """Distinct value per voxel: i + 10 j + 100 k (+ 0.25 for float types)."""
    i, j, k = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    values = i + 10 * j + 100 * k
    if np.issubdtype(np.dtype(dtype), np.floating):
        values = values + 0.25
    return values.astype(dtype)


def rotation(axis, degrees):
    axis = np.asarray(axis, dtype=np.float64)
    axis = axis / np.linalg.norm(axis)
    x, y, z = axis
    t = np.radians(degrees)
    c, s = np.cos(t), np.sin(t)
    C = 1 - c
    return np.array([
        [x * x * C + c, x * y * C - z * s, x * z * C + y * s],
        [y * x * C + z * s, y * y * C + c, y * z * C - x * s],
        [z * x * C - y * s, z * y * C + x * s, z * z * C + c],
    ])


def affine(rot, zooms, offset):
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag(zooms)
    a[:3, 3] = offset
    return a


AXIAL = affine(np.eye(3), (1.0, 1.0, 1.0), (-2.0, -1.5, -1.0))
ANISO = affine(np.eye(3), (0.8, 1.25, 3.0), (10.0, -20.0, 30.0))
OBLIQUE = affine(rotation((1, 2, 3), 25.0), (0.7, 1.1, 2.5), (-12.5, 7.25, 40.0))
# det < 0: a left-handed voxel grid (qfac = -1 in the qform).
IMPROPER = affine(rotation((0, 1, 1), -35.0) @ np.diag([1, 1, -1]), (1.5, 0.9, 2.0),
                  (5.0, -3.0, 8.0))


def make_image(cls, data, sform=None, sform_code=0, qform=None, qform_code=0, zooms=None,
               endianness=None):
    header = cls.header_class(endianness=endianness) if endianness else None
    img = cls(data, None, header=header, dtype=data.dtype)
    if zooms is not None:
        img.header.set_zooms(zooms)
    img.set_qform(qform, code=qform_code)
    img.set_sform(sform, code=sform_code)
    img.header.set_xyzt_units("mm")
    return img


def patch_scaling(path, slope, inter):
    """nibabel picks its own scl_* on save, so set them afterwards (NIfTI-1: offsets 112, 116)."""
    with open(path, "r+b") as f:
        f.seek(112)
        f.write(struct.pack("<ff", slope, inter))


def fixtures():
    """(file name, writer) pairs; a writer saves the file at the path it is given."""
    out = []

    def add(name, build, post=None):
        def write(path):
            nib.save(build(), path)
            if post:
                post(path)
        out.append((name, write))

    add("sform_only.nii", lambda: make_image(nib.Nifti1Image, ramp(), sform=ANISO, sform_code=2))
    add("qform_only.nii", lambda: make_image(nib.Nifti1Image, ramp(), qform=OBLIQUE, qform_code=1))
    add("qform_improper.nii",
        lambda: make_image(nib.Nifti1Image, ramp(), qform=IMPROPER, qform_code=1))
    add("sform_wins.nii", lambda: make_image(nib.Nifti1Image, ramp(), sform=OBLIQUE, sform_code=4,
                                             qform=AXIAL, qform_code=1))
    add("no_xform.nii",
        lambda: make_image(nib.Nifti1Image, ramp(), zooms=(0.8, 1.25, 3.0)))
    add("oblique_aniso.nii", lambda: make_image(nib.Nifti1Image, ramp(), sform=OBLIQUE,
                                                sform_code=1, qform=OBLIQUE, qform_code=1))
    add("nifti2.nii", lambda: make_image(nib.Nifti2Image, ramp(np.float64), sform=IMPROPER,
                                         sform_code=1, qform=IMPROPER, qform_code=1))
    add("nifti2_qform_only.nii.gz", lambda: make_image(nib.Nifti2Image, ramp(), qform=OBLIQUE,
                                                       qform_code=1))
    add("oblique_aniso.nii.gz", lambda: make_image(nib.Nifti1Image, ramp(), sform=OBLIQUE,
                                                   sform_code=1, qform=OBLIQUE, qform_code=1))
    add("scaled_int16.nii",
        lambda: make_image(nib.Nifti1Image, ramp(np.int16), sform=ANISO, sform_code=1),
        post=lambda p: patch_scaling(p, 0.5, -10.0))
    add("labels_uint8.nii",
        lambda: make_image(nib.Nifti1Image, (ramp(np.int32) % 7).astype(np.uint8),
                           sform=OBLIQUE, sform_code=1, qform=OBLIQUE, qform_code=1))
    add("big_endian.nii", lambda: make_image(nib.Nifti1Image, ramp().astype(">f4"), sform=OBLIQUE,
                                             sform_code=1, qform=OBLIQUE, qform_code=1,
                                             endianness=">"))
    add("singleton_4d.nii", lambda: make_image(nib.Nifti1Image, ramp()[..., np.newaxis],
                                               sform=ANISO, sform_code=1))
    for dtype in (np.int8, np.uint16, np.int32, np.uint32, np.int64, np.float64):
        name = np.dtype(dtype).name
        add(f"dtype_{name}.nii",
            lambda dtype=dtype: make_image(nib.Nifti1Image, (ramp(np.int64) % 100).astype(dtype),
                                           sform=ANISO, sform_code=1))
    return out


def rejected():
    """Files nibabel reads but mewm must refuse, with the ErrorCode name expected."""
    out = []

    def add(name, build, code):
        out.append((name, lambda path: nib.save(build(), path), code))

    add("image_2d.nii", lambda: make_image(nib.Nifti1Image, ramp()[:, :, 0], sform=AXIAL,
                                           sform_code=1), "corrupt_data")
    add("image_4d.nii", lambda: make_image(nib.Nifti1Image, np.stack([ramp(), ramp()], axis=3),
                                           sform=AXIAL, sform_code=1), "corrupt_data")

    def nan_image():
        data = ramp()
        data[1, 2, 0] = np.nan
        data[3, 3, 2] = np.inf
        return make_image(nib.Nifti1Image, data, sform=AXIAL, sform_code=1)

    add("nan_values.nii", nan_image, "corrupt_data")

    def implausible(path):
        # dims 30000^3 float32 (108 GB) in a few hundred compressed bytes: must be refused before
        # anything tries to allocate that much.
        img = make_image(nib.Nifti1Image, ramp(), sform=AXIAL, sform_code=1)
        raw = bytearray(img.header.binaryblock + b"\0" * 4 + ramp().tobytes())
        raw[42:48] = struct.pack("<3h", 30000, 30000, 30000)
        with open(path, "wb") as f:
            f.write(gzip.compress(bytes(raw), mtime=0))

    out.append(("implausible_size.nii.gz", implausible, "corrupt_data"))
    return out


def main():
    files = {}
    for name, write in fixtures():
        path = os.path.join(HERE, name)
        write(path)
        img = nib.load(path)  # read back: what other software sees
        data = img.get_fdata()
        hdr = img.header
        files[name] = {
            "version": 2 if isinstance(img, nib.Nifti2Image) else 1,
            "datatype": int(hdr["datatype"]),
            "shape": [int(n) for n in img.shape],
            "sform_code": int(hdr["sform_code"]),
            "qform_code": int(hdr["qform_code"]),
            "affine": img.affine.tolist(),
            "voxels": [{"index": list(p), "value": float(data[p])} for p in PROBES],
        }
    bad = {}
    for name, write, code in rejected():
        write(os.path.join(HERE, name))
        bad[name] = {"error": code}
    # One line per file keeps the JSON small and diffable.
    lines = [f'  {json.dumps(name)}: {json.dumps(entry, sort_keys=True)}'
             for name, entry in sorted(files.items())]
    rejected_lines = [f'  {json.dumps(name)}: {json.dumps(entry, sort_keys=True)}'
                      for name, entry in sorted(bad.items())]
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        f.write('{\n "generator": ' + json.dumps(f"nibabel {nib.__version__}") + ',\n')
        f.write(' "files": {\n' + ',\n'.join(lines) + '\n },\n')
        f.write(' "rejected": {\n' + ',\n'.join(rejected_lines) + '\n }\n}\n')


if __name__ == "__main__":
    main()
