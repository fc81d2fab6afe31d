#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
"""`mewm import dicom-seg` on DICOM-SEG files built by hand with pydicom (not by mewm).

nibabel writes a volume with an oblique affine; pydicom writes it as a CT series (the writer of
dicom_import_test.py) and a Segmentation Storage object on it: Segment Sequence, shared Plane
Orientation and Pixel Measures, per-frame Plane Position and Segment Identification, frames in a
shuffled order, 1-bit pixels packed across frame boundaries (37 x 29 pixels a frame). mewm must
put every voxel where the known masks have it (read back with nibabel), map segments by their
words (Liver -> liver, Mass -> tumor, necrotic core -> necrosis, Portal vein -> ignored), resolve
the tumor/necrosis overlap as documented, read a FRACTIONAL SEG (threshold at half of
MaximumFractionalValue), and refuse: a file that is not a SEG, another frame of reference,
another referenced series, another orientation, another pixel spacing, a frame off the lattice,
missing frames, two frames of a segment at one slice, no mapped segment. Exit 77 (skipped)
without pydicom or nibabel.

With --manifest-run, a manifest cohort of two such patients (CT folders and SEG files in the
manifest's columns) runs through `mewm run` with the mechanistic backend, end to end.

    /usr/bin/python3 tests/tools/dicom_seg_test.py MEWM
    /usr/bin/python3 tests/tools/dicom_seg_test.py --manifest-run MEWM SOURCE_DIR
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
try:
    import numpy as np
    import nibabel as nib
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    import dicom_import_test as ctw  # the CT series writer
except ImportError as error:
    print("skipped: %s (Debian: python3-pydicom python3-nibabel)" % error)
    sys.exit(77)

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
SHAPE = (37, 29, 10)  # 37 x 29 = 1073 pixels a frame: frames start mid-byte
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)
        print("FAIL:", message)


def affine(seed=0):
    """An oblique RAS affine (rotated about z and x), 0.8 x 0.7 x 2.5 mm."""
    a, b = np.radians(12.0 + seed), np.radians(5.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    out = np.eye(4)
    out[:3, :3] = rz @ rx @ np.diag([0.8, 0.7, 2.5])
    out[:3, 3] = [-20.5, 37.25, -110.0]
    return out


def ellipsoid(shape, centre, radii):
    i, j, k = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return (((i - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2 +
            ((k - centre[2]) / radii[2]) ** 2) <= 1.0


def masks(shape=SHAPE):
    """Liver, tumor (inside the liver), necrosis (inside the tumor), a vessel: boolean (i, j, k)."""
    liver = ellipsoid(shape, (18, 14, 4.5), (14, 10, 4.2))
    tumor = ellipsoid(shape, (21, 12, 5), (6, 5, 2.6))
    necrosis = ellipsoid(shape, (21, 12, 5), (2.5, 2, 1.2))
    vessel = np.zeros(shape, bool)
    vessel[5:8, 20:23, :] = True
    return {"liver": liver, "tumor": tumor, "necrosis": necrosis, "vessel": vessel}


class Ct:
    """A CT series written by pydicom from a nibabel NIfTI, with its identity."""

    def __init__(self, folder, seed=0, shape=SHAPE):
        os.makedirs(folder, exist_ok=True)
        data = np.random.default_rng(seed).integers(-200, 300, size=shape).astype(np.int16)
        nib.save(nib.Nifti1Image(data, affine(seed)), os.path.join(folder, "source.nii.gz"))
        self.source = nib.load(os.path.join(folder, "source.nii.gz"))
        self.affine = self.source.affine
        self.shape = shape
        self.folder = os.path.join(folder, "ct")
        self.for_uid = generate_uid()
        self.instances = []
        self.series_uid = ctw.write_series(self.folder, np.asarray(self.source.dataobj),
                                           self.affine, frame_of_reference_uid=self.for_uid,
                                           instances=self.instances)


def code(value, scheme, meaning):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = value, scheme, meaning
    return Sequence([item])


SEGMENT_CODES = {  # SNOMED CT category and type codes of each segment kind
    "liver": (("123037004", "Anatomical Structure"), ("10200004", "Liver")),
    "tumor": (("49755003", "Morphologically Abnormal Structure"), ("108369006", "Neoplasm")),
    "necrosis": (("49755003", "Morphologically Abnormal Structure"), ("6574001", "Necrosis")),
    "vessel": (("123037004", "Anatomical Structure"), ("32764006", "Portal vein")),
}


def write_seg(path, ct, segments, fractional=False, rotate_deg=0.0, spacing_scale=1.0,
              shift_slices=0.0, frame_of_reference_uid=None, referenced_series=None,
              drop_pixel_frames=0, duplicate_frame=False, sop_class=SEG_STORAGE, seed=1):
    """A Segmentation Storage file on `ct`. segments: list of (label, description, kind, values
    (i, j, k) array: bool for BINARY, uint8 for FRACTIONAL). The corruptions the refusal tests
    need are the keyword arguments."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ct.affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row, column = lps[:3, 0] / spacing[0], lps[:3, 1] / spacing[1]
    if rotate_deg:
        a = np.radians(rotate_deg)
        normal = np.cross(row, column)
        rot = lambda v: v * np.cos(a) + np.cross(normal, v) * np.sin(a)
        row, column = rot(row), rot(column)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(path, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality = "SEG"
    ds.PatientID, ds.PatientName = "DCM001", "Test^Seg"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SeriesNumber, ds.InstanceNumber = 300, 1
    ds.FrameOfReferenceUID = frame_of_reference_uid or ct.for_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer, ds.ManufacturerModelName = "pydicom test", "by hand"
    ds.DeviceSerialNumber, ds.SoftwareVersions = "1", "1"
    ds.ContentLabel, ds.ContentDescription, ds.ContentCreatorName = "MASKS", "test", "Test^Seg"
    ds.ContentDate, ds.ContentTime = "20260101", "120000"
    ds.SeriesDate, ds.SeriesTime = "20260101", "120000"
    ds.ImageType = ["DERIVED", "PRIMARY"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = ct.shape[1], ct.shape[0]
    ds.PixelRepresentation, ds.LossyImageCompression = 0, "00"
    if fractional:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.SegmentationType, ds.SegmentationFractionalType = "FRACTIONAL", "PROBABILITY"
        ds.MaximumFractionalValue = 255
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
        ds.SegmentationType = "BINARY"
    reference = Dataset()
    reference.SeriesInstanceUID = referenced_series or ct.series_uid
    instances = []
    for uid in ct.instances:
        item = Dataset()
        item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = ctw.CT_IMAGE_STORAGE, uid
        instances.append(item)
    reference.ReferencedInstanceSequence = Sequence(instances)
    ds.ReferencedSeriesSequence = Sequence([reference])
    dimension_uid = generate_uid()
    indices = []
    for pointer, group in ((0x0062000B, 0x0062000A), (0x00200032, 0x00209113)):
        item = Dataset()
        item.DimensionOrganizationUID = dimension_uid
        item.DimensionIndexPointer, item.FunctionalGroupPointer = pointer, group
        indices.append(item)
    organization = Dataset()
    organization.DimensionOrganizationUID = dimension_uid
    ds.DimensionOrganizationSequence = Sequence([organization])
    ds.DimensionIndexSequence = Sequence(indices)
    seq = []
    for n, (label, description, kind, _) in enumerate(segments, start=1):
        item = Dataset()
        item.SegmentNumber, item.SegmentLabel = n, label
        if description:
            item.SegmentDescription = description
        item.SegmentAlgorithmType = "MANUAL"
        (cat_value, cat_meaning), (type_value, type_meaning) = SEGMENT_CODES[kind]
        item.SegmentedPropertyCategoryCodeSequence = code(cat_value, "SCT", cat_meaning)
        item.SegmentedPropertyTypeCodeSequence = code(type_value, "SCT", type_meaning)
        seq.append(item)
    ds.SegmentSequence = Sequence(seq)
    shared = Dataset()
    orientation = Dataset()
    orientation.ImageOrientationPatient = [float("%.8f" % v) for v in list(row) + list(column)]
    measures = Dataset()
    measures.PixelSpacing = [float("%.6f" % (spacing[1] * spacing_scale)),
                             float("%.6f" % (spacing[0] * spacing_scale))]
    measures.SliceThickness = float("%.6f" % spacing[2])
    measures.SpacingBetweenSlices = float("%.6f" % spacing[2])
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    # Frames: every slice where a segment has a voxel, in a shuffled order.
    frames = []
    for n, (_, _, _, values) in enumerate(segments, start=1):
        for k in range(ct.shape[2]):
            if values[:, :, k].any():
                frames.append((n, k))
    if duplicate_frame:
        frames.append(frames[0])
    random.Random(seed).shuffle(frames)
    per_frame, pixels = [], []
    for n, k in frames:
        item = Dataset()
        content = Dataset()
        content.DimensionIndexValues = [n, k + 1]
        position = Dataset()
        ipp = lps @ np.array([0.0, 0.0, k + shift_slices, 1.0])
        position.ImagePositionPatient = [float("%.6f" % v) for v in ipp[:3]]
        identification = Dataset()
        identification.ReferencedSegmentNumber = n
        item.FrameContentSequence = Sequence([content])
        item.PlanePositionSequence = Sequence([position])
        item.SegmentIdentificationSequence = Sequence([identification])
        per_frame.append(item)
        pixels.append(segments[n - 1][3][:, :, k].T)  # rows = j, columns = i
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    ds.NumberOfFrames = len(frames)
    stacked = np.stack(pixels[:len(pixels) - drop_pixel_frames])
    if fractional:
        ds.PixelData = stacked.astype(np.uint8).tobytes()
    else:
        ds.PixelData = np.packbits(stacked.astype(bool).ravel(), bitorder="little").tobytes()
    ds["PixelData"].VR = "OB"
    ds.is_little_endian, ds.is_implicit_VR = True, False
    ds.save_as(path, write_like_original=False)
    return path


def standard_segments(m):
    return [("Liver", "", "liver", m["liver"]),
            ("Mass", "HCC", "tumor", m["tumor"]),
            ("Core", "necrotic core", "necrosis", m["necrosis"]),
            ("Portal vein", "", "vessel", m["vessel"])]


def mewm(*args):
    result = subprocess.run([MEWM, "import", "dicom-seg", *args], capture_output=True, text=True,
                            timeout=120)
    return result.returncode, result.stdout + result.stderr


def main():
    with tempfile.TemporaryDirectory() as tmp:
        ct = Ct(os.path.join(tmp, "p"))
        m = masks()
        seg = write_seg(os.path.join(tmp, "seg.dcm"), ct, standard_segments(m))
        out = os.path.join(tmp, "labels.nii.gz")
        code_, text = mewm(seg, "--ct", ct.folder, "--out", out)
        print(text)
        check(code_ == 0, "binary SEG: %s" % text)
        check("segment 2 'Mass' -> tumor" in text and "segment 4 'Portal vein' -> ignore" in text
              and "segment 3 'Core' -> necrosis" in text, "roles: %s" % text)
        check("kept as necrosis" in text, "overlap note: %s" % text)
        if code_ == 0:
            liver = nib.load(os.path.join(tmp, "labels_liver.nii.gz"))
            tumor = nib.load(os.path.join(tmp, "labels_tumor.nii.gz"))
            check(np.allclose(liver.affine, ct.affine, atol=1e-4),
                  "labels affine %s vs CT %s" % (liver.affine, ct.affine))
            expected_tumor = m["tumor"].astype(np.int32) + m["necrosis"].astype(np.int32)
            got_tumor = np.asarray(tumor.dataobj).astype(np.int32)
            got_liver = np.asarray(liver.dataobj).astype(np.int32)
            check(got_tumor.shape == SHAPE and got_liver.shape == SHAPE,
                  "shapes %s %s" % (got_tumor.shape, got_liver.shape))
            if got_tumor.shape == SHAPE:
                check(np.array_equal(got_tumor, expected_tumor),
                      "tumor voxels differ: %d" % (got_tumor != expected_tumor).sum())
                check(np.array_equal(got_liver, m["liver"].astype(np.int32)),
                      "liver voxels differ: %d" % (got_liver != m["liver"]).sum())
        code_, text = mewm(seg, "--ct", ct.folder, "--out", out)
        check(code_ == 1 and "exists" in text, "existing output kept: %s" % text)
        code_, text = mewm(seg, "--ct", ct.folder, "--out", os.path.join(tmp, "labels.vdb"))
        check(code_ == 0, ".vdb: %s" % text)

        # --segment-map overrides the words: the vessel becomes tumor, the liver is ignored.
        out_map = os.path.join(tmp, "mapped.nii.gz")
        code_, text = mewm(seg, "--ct", ct.folder, "--segment-map", "1=ignore,4=tumor",
                           "--out", out_map)
        check(code_ == 0 and "(--segment-map)" in text, "segment map: %s" % text)
        if code_ == 0:
            got = np.asarray(nib.load(out_map).dataobj).astype(np.int32)
            expected = (m["tumor"] | m["vessel"]).astype(np.int32) + m["necrosis"]
            check(np.array_equal(got, expected), "mapped voxels differ: %d" % (got != expected).sum())
        code_, text = mewm(seg, "--ct", ct.folder, "--segment-map", "9=tumor", "--out",
                           os.path.join(tmp, "x.nii.gz"))
        check(code_ == 1 and "segments 1-4" in text, "map of a missing segment: %s" % text)
        code_, text = mewm(seg, "--ct", ct.folder, "--segment-map", "1=bone", "--out",
                           os.path.join(tmp, "x.nii.gz"))
        check(code_ == 1 and "unknown role 'bone'" in text, "bad role: %s" % text)

        # FRACTIONAL: in where value >= MaximumFractionalValue / 2.
        rng = np.random.default_rng(3)
        probability = np.where(m["tumor"], rng.integers(0, 256, size=SHAPE), 0).astype(np.uint8)
        probability[m["tumor"] & (probability == 0)] = 128  # 128 of 255 is in
        frac = write_seg(os.path.join(tmp, "frac.dcm"), ct,
                         [("Lesion", "", "tumor", probability)], fractional=True)
        out_frac = os.path.join(tmp, "frac.nii.gz")
        code_, text = mewm(frac, "--ct", ct.folder, "--out", out_frac)
        check(code_ == 0 and "FRACTIONAL" in text, "fractional: %s" % text)
        if code_ == 0:
            got = np.asarray(nib.load(out_frac).dataobj).astype(np.int32)
            expected = (2 * probability.astype(np.int32) >= 255).astype(np.int32)
            check(np.array_equal(got, expected),
                  "fractional voxels differ: %d" % (got != expected).sum())

        # Refusals, each naming its reason.
        def refused(name, needle, *args, **kwargs):
            path = write_seg(os.path.join(tmp, name + ".dcm"), ct, standard_segments(m), **kwargs)
            code_, text = mewm(path, "--ct", ct.folder, "--out", os.path.join(tmp, name + ".vdb"),
                               *args)
            check(code_ == 1 and needle in text and not os.path.exists(
                os.path.join(tmp, name + ".vdb")), "%s: %s" % (name, text))

        refused("for", "frame of reference", frame_of_reference_uid=generate_uid())
        refused("series", "references series", referenced_series=generate_uid())
        refused("orientation", "ImageOrientationPatient", rotate_deg=10.0)
        refused("spacing", "PixelSpacing", spacing_scale=1.25)
        refused("offlattice", "falls between", shift_slices=0.5)
        refused("outside", "outside the CT", shift_slices=-3.0)
        refused("missing", "frames are missing", drop_pixel_frames=2)
        refused("duplicate", "two frames", duplicate_frame=True)
        vessel_only = write_seg(os.path.join(tmp, "vessel.dcm"), ct,
                                [("Portal vein", "", "vessel", m["vessel"])])
        code_, text = mewm(vessel_only, "--ct", ct.folder, "--out", os.path.join(tmp, "v.vdb"))
        check(code_ == 1 and "no segment maps to liver, tumor or necrosis" in text and
              "--segment-map" in text, "no mapped segment: %s" % text)
        ct_file = os.path.join(ct.folder, sorted(os.listdir(ct.folder))[0])
        code_, text = mewm(ct_file, "--ct", ct.folder, "--out", os.path.join(tmp, "c.vdb"))
        check(code_ == 1 and "is not a DICOM-SEG" in text and "1.2.840.10008.5.1.4.1.1.2" in text,
              "a CT slice as SEG: %s" % text)
        with open(os.path.join(tmp, "notes.txt"), "w") as f:
            f.write("hello\n")
        code_, text = mewm(os.path.join(tmp, "notes.txt"), "--ct", ct.folder, "--out",
                           os.path.join(tmp, "n.vdb"))
        check(code_ == 1 and "not a DICOM file" in text, "text file as SEG: %s" % text)

        # The CT folder holding two series: the SEG's referenced series is chosen.
        other = Ct(os.path.join(tmp, "q"), seed=1)
        both = os.path.join(tmp, "both")
        shutil.copytree(ct.folder, os.path.join(both, "a"))
        shutil.copytree(other.folder, os.path.join(both, "b"))
        code_, text = mewm(seg, "--ct", both, "--out", os.path.join(tmp, "both.vdb"))
        check(code_ == 0 and ct.series_uid in text, "referenced series chosen: %s" % text)
        code_, text = mewm(seg, "--ct", both, "--series-uid", other.series_uid, "--out",
                           os.path.join(tmp, "both2.vdb"))
        check(code_ == 1 and "frame of reference" in text, "other series: %s" % text)

        # A symbolic link out of the CT folder is not followed (a confined folder stays so).
        linked = os.path.join(tmp, "linked")
        os.makedirs(linked)
        os.symlink(os.path.join(ct.folder, sorted(os.listdir(ct.folder))[0]),
                   os.path.join(linked, "IM0000"))
        code_, text = mewm(seg, "--ct", linked, "--out", os.path.join(tmp, "linked.vdb"))
        check(code_ == 1 and "1 links out of the folder skipped" in text, "link out: %s" % text)
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("PASS")
    return 0


CLINICAL = "62,M,A,B,30,1,12,0"


def manifest_run(mewm_binary, source_dir):
    """Two patients, each a CT series folder (pydicom) and one SEG (liver and tumor segments) named
    in both the tumor and the liver column; the second CT folder also holds another series, and
    its row picks the CT with ct_series_uid. `mewm run` must finish both with the mechanistic
    backend, and the NIfTI it writes must sit on the DICOM CT's lattice (nibabel's affine)."""
    with tempfile.TemporaryDirectory() as tmp:
        rows, cts = [], []
        for n in range(2):
            folder = os.path.join(tmp, "P%d" % n)
            ct = Ct(folder, seed=n)
            m = masks()
            write_seg(os.path.join(folder, "seg.dcm"), ct,
                      [("Liver", "", "liver", m["liver"]), ("Mass", "", "tumor", m["tumor"])])
            uid = ""
            if n == 1:  # a second series in the same folder: the row names the CT's series
                Ct(os.path.join(folder, "ct", "other"), seed=7)
                uid = ct.series_uid
            rows.append("P%d,P%d/ct,P%d/seg.dcm,P%d/seg.dcm,%s,%s" % (n, n, n, n, uid, CLINICAL))
            cts.append(ct)
        with open(os.path.join(tmp, "patients.csv"), "w") as f:
            f.write("patient_id,ct,tumor,liver,ct_series_uid,age_years,sex,child_pugh,bclc_stage,"
                    "afp_ng_ml,lesion_count,max_diameter_mm,vascular_invasion\n")
            f.write("\n".join(rows) + "\n")
        models = os.path.join(source_dir, "models")
        with open(os.path.join(tmp, "scenario.toml"), "w") as f:
            f.write('[run]\nname = "dicom_manifest"\nseed = 1\n'
                    '[cohort]\nsource = "manifest"\nmanifest = "patients.csv"\n'
                    '[dynamics]\nbackend = "mechanistic"\ncalibration = "%s"\n'
                    '[survival]\nbackend = "cox"\nmodel = "%s"\n'
                    '[planner]\nbeams = 1\nsamples = 1\n'
                    % (os.path.join(models, "mechanistic_calibration.json"),
                       os.path.join(models, "cox_survival.json")))
        out = os.path.join(tmp, "run")
        result = subprocess.run([mewm_binary, "run", os.path.join(tmp, "scenario.toml"), "--quiet",
                                 "--out", out], capture_output=True, text=True, timeout=600)
        text = result.stdout + result.stderr
        print(text)
        check(result.returncode == 0, "mewm run: %s" % text)
        summary = os.path.join(out, "summary.csv")
        if os.path.exists(summary):
            with open(summary) as f:
                table = f.read()
            print(table)
            for n in range(2):
                line = [l for l in table.splitlines() if l.startswith("P%d," % n)]
                check(line and "failed" not in line[0], "P%d in summary.csv: %s" % (n, table))
                path = os.path.join(out, "patients", "P%d" % n, "post_chosen_ct.nii.gz")
                check(os.path.exists(path), "P%d: no %s" % (n, path))
                if os.path.exists(path):
                    written = nib.load(path)
                    check(np.allclose(written.affine, cts[n].affine, atol=1e-4) and
                          written.shape == SHAPE,
                          "P%d: run output affine %s shape %s vs the DICOM CT's %s" %
                          (n, written.affine, written.shape, cts[n].affine))
        else:
            check(False, "no summary.csv: %s" % text)
    if failures:
        print("%d failure(s)" % len(failures))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    MEWM = sys.argv[1] if len(sys.argv) > 1 else ""
    if MEWM == "--manifest-run":  # dicom_seg_test.py --manifest-run MEWM SOURCE_DIR
        sys.exit(manifest_run(sys.argv[2], sys.argv[3]))
    sys.exit(main())
