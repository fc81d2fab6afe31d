// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// NIfTI adapter over Debian's niftilib (libnifti2, which handles both NIfTI-1 and NIfTI-2).
//
// niftilib supplies the header structs, byte swapping, datatype tables, the quaternion encoding of
// the qform and the nifti_image -> header conversion. The file I/O itself goes through zlib here
// (it reads and writes plain and gzip files alike), because testing libnifti2 3.0.1 showed:
//  - nifti_image_load() silently replaces NaN/Inf float voxels by 0, so a reader built on it
//    cannot report them, and it accepts a .nii.gz whose gzip trailer (CRC, length) is missing;
//  - nifti_read_header() prints to stderr whatever the debug level, and returns a big-endian
//    NIfTI-1 header unswapped;
//  - nifti_image_write() returns void (no way to see a failed or short write), prints to stderr
//    even at debug level 0 when it cannot open the output, and with nifti_type NIFTI2_1 writes
//    the header and then overwrites it with the data (it treats only NIFTI1_1 as single-file);
//  - nifti_convert_nim2n2hdr() leaves vox_offset 0 and the "\r\n\032\n" after "n+2" zero.
// The affine is recomputed from the raw header fields the way nibabel 5 computes img.affine
// (including the repairs nibabel makes on load), not taken from niftilib's qto_xyz/sto_xyz.
#include "mewm/core/nifti_io.h"

#include <fcntl.h>
#include <nifti2_io.h>
#include <unistd.h>
#include <zlib.h>

#include <Eigen/Dense>
#include <algorithm>
#include <cerrno>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <sstream>
#include <vector>

#include "mewm/core/file_util.h"
#include "mewm/core/limits.h"

namespace mewm {
namespace {

namespace fs = std::filesystem;

struct NiftiImageDeleter {
  void operator()(nifti_image* nim) const { nifti_image_free(nim); }
};
using NiftiImagePtr = std::unique_ptr<nifti_image, NiftiImageDeleter>;

// niftilib keeps its options in a process-wide struct; level 0 silences its diagnostics.
void SilenceNiftilib() {
  static const bool silenced = [] {
    nifti_set_debug_level(0);
    return true;
  }();
  (void)silenced;
}

Unexpected FileError(ErrorCode code, const std::string& path, const std::string& what) {
  return MakeError(code, "NIfTI file '" + path + "': " + what);
}

std::string FormatIndex(std::size_t n, const Index3& dims) {
  const auto nx = static_cast<std::size_t>(dims[0]);
  const auto nxy = nx * static_cast<std::size_t>(dims[1]);
  return "(" + std::to_string(n % nx) + ", " + std::to_string((n % nxy) / nx) + ", " +
         std::to_string(n / nxy) + ")";
}

std::string FormatShape(const std::vector<std::int64_t>& shape) {
  std::string s;
  for (std::size_t d = 0; d < shape.size(); ++d) s += (d ? "x" : "") + std::to_string(shape[d]);
  return s;
}

// ---------------------------------------------------------------------------------------------
// Header

// The header fields mewm uses, as stored, widened to NIfTI-2 types. Raw fields rather than
// niftilib's nifti_image, which drops pixdim[0] (qfac), zeroes NaNs and keeps xform codes that
// nibabel resets.
struct RawHeader {
  int version = 1;
  bool swapped = false;  // the file's byte order is not ours
  bool gzip = false;     // the bytes on disk are gzip-compressed
  std::string magic;
  bool eol_ok = true;  // NIfTI-2 only: magic[4..7] is "\r\n\032\n" or all zero
  std::int64_t dim[8] = {};
  double pixdim[8] = {};
  int datatype = 0;
  int intent_code = 0;
  double scl_slope = 0.0;
  double scl_inter = 0.0;
  int qform_code = 0;
  int sform_code = 0;
  double quatern[3] = {};
  double qoffset[3] = {};
  double srow[3][4] = {};
  std::int64_t vox_offset = 0;     ///< -1 when the stored value is no byte offset
  double stored_vox_offset = 0.0;  ///< as stored, for messages
};

template <typename H>
RawHeader CopyRaw(const H& h, int version) {
  RawHeader r;
  r.version = version;
  r.magic.assign(h.magic, strnlen(h.magic, 4));
  for (int d = 0; d < 8; ++d) {
    r.dim[d] = h.dim[d];
    r.pixdim[d] = h.pixdim[d];
  }
  r.datatype = h.datatype;
  r.intent_code = h.intent_code;
  r.scl_slope = h.scl_slope;
  r.scl_inter = h.scl_inter;
  r.qform_code = h.qform_code;
  r.sform_code = h.sform_code;
  r.quatern[0] = h.quatern_b;
  r.quatern[1] = h.quatern_c;
  r.quatern[2] = h.quatern_d;
  r.qoffset[0] = h.qoffset_x;
  r.qoffset[1] = h.qoffset_y;
  r.qoffset[2] = h.qoffset_z;
  for (int c = 0; c < 4; ++c) {
    r.srow[0][c] = h.srow_x[c];
    r.srow[1][c] = h.srow_y[c];
    r.srow[2][c] = h.srow_z[c];
  }
  // NIfTI-1 stores the offset as a float; niftilib and nibabel truncate it to an integer. A
  // garbage float (NaN, 1e30) must not reach the conversion, which would be undefined.
  const double offset = static_cast<double>(h.vox_offset);
  r.stored_vox_offset = offset;
  r.vox_offset = offset >= 0.0 && offset < 1e18 ? static_cast<std::int64_t>(offset) : -1;
  return r;
}

struct GzCloser {
  void operator()(gzFile_s* gz) const { gzclose_r(gz); }
};
using GzReader = std::unique_ptr<gzFile_s, GzCloser>;

std::string GzMessage(gzFile gz) {
  int errnum = Z_OK;
  const char* msg = gzerror(gz, &errnum);
  return msg != nullptr && *msg ? msg : "unknown zlib error";
}

// Reads and byte-swaps the header (see the top of the file for why not nifti_read_header()).
Expected<RawHeader> ReadRawHeader(const std::string& path, std::uintmax_t file_size) {
  errno = 0;
  GzReader gz(gzopen(path.c_str(), "rb"));  // reads uncompressed files too
  if (gz == nullptr) {
    return FileError(ErrorCode::kIo, path, errno ? std::strerror(errno) : "cannot open");
  }
  unsigned char bytes[sizeof(nifti_2_header)] = {};
  const int got = gzread(gz.get(), bytes, sizeof bytes);
  const bool gzip = !gzdirect(gz.get());
  const bool gz_name = FileExtension(path) == ".nii.gz";
  const std::string not_nifti = "not a NIfTI-1 or NIfTI-2 file (" + std::to_string(file_size) +
                                " bytes" + (gzip ? ", gzip-compressed" : "") + ")";
  if (got < 0) {
    return FileError(ErrorCode::kCorruptData, path, not_nifti + ": " + GzMessage(gz.get()));
  }
  if (gzip && !gz_name) {
    // zlib would read it, but niftilib and nibabel go by the name and would not.
    return FileError(ErrorCode::kCorruptData, path,
                     "holds gzip-compressed data under a .nii name; rename it to .nii.gz");
  }
  if (got < 4) return FileError(ErrorCode::kCorruptData, path, not_nifti);

  std::int32_t sizeof_hdr = 0;
  std::memcpy(&sizeof_hdr, bytes, 4);
  const std::int32_t swapped_size =
      static_cast<std::int32_t>(__builtin_bswap32(static_cast<std::uint32_t>(sizeof_hdr)));
  int version = 0;
  bool swapped = false;
  for (const int v : {1, 2}) {
    const std::int32_t want = v == 1 ? 348 : 540;
    if (sizeof_hdr == want || swapped_size == want) {
      version = v;
      swapped = sizeof_hdr != want;
    }
  }
  if (version == 0) {
    return FileError(
        ErrorCode::kCorruptData, path,
        not_nifti + ": sizeof_hdr is " + std::to_string(sizeof_hdr) + ", expected 348 or 540");
  }
  const int needed = version == 1 ? 348 : 540;
  if (got < needed) {
    return FileError(ErrorCode::kCorruptData, path,
                     "truncated: " + std::to_string(got) + " bytes, shorter than a NIfTI-" +
                         std::to_string(version) + " header (" + std::to_string(needed) + ")");
  }
  RawHeader raw;
  if (version == 1) {
    nifti_1_header h;
    std::memcpy(&h, bytes, sizeof h);
    if (swapped) swap_nifti_header(&h, 1);
    raw = CopyRaw(h, 1);
  } else {
    nifti_2_header h;
    std::memcpy(&h, bytes, sizeof h);
    if (swapped) swap_nifti_header(&h, 2);
    raw = CopyRaw(h, 2);
    static const unsigned char kEol[4] = {'\r', '\n', 0x1a, '\n'};
    static const unsigned char kZero[4] = {0, 0, 0, 0};
    raw.eol_ok = std::memcmp(h.magic + 4, kEol, 4) == 0 || std::memcmp(h.magic + 4, kZero, 4) == 0;
  }
  raw.swapped = swapped;
  raw.gzip = gzip;
  return raw;
}

struct ParsedHeader {
  NiftiInfo info;
  std::size_t voxel_count = 0;
  int bytes_per_voxel = 0;
  std::size_t voxel_bytes = 0;  // voxel_count * bytes_per_voxel
  int swap_size = 0;            // > 0 when the file's byte order differs from ours
  std::int64_t data_offset = 0;
  bool scaled = false;  // apply scl_slope / scl_inter
};

bool SupportedDatatype(int datatype) {
  switch (datatype) {
    case NIFTI_TYPE_UINT8:
    case NIFTI_TYPE_INT8:
    case NIFTI_TYPE_INT16:
    case NIFTI_TYPE_UINT16:
    case NIFTI_TYPE_INT32:
    case NIFTI_TYPE_UINT32:
    case NIFTI_TYPE_INT64:
    case NIFTI_TYPE_UINT64:
    case NIFTI_TYPE_FLOAT32:
    case NIFTI_TYPE_FLOAT64:
      return true;
    default:
      return false;
  }
}

bool ValidXformCode(int code) { return code >= 0 && code <= 5; }  // nibabel's xform_codes

// nibabel's img.affine (Nifti1Header.get_best_affine) after the repairs nibabel's check_fix makes
// on load: pixdim[1..3] of 0 become 1 and negative ones their absolute value, a qfac (pixdim[0])
// other than -1 or 1 becomes 1, and xform codes outside 0..5 become 0.
Expected<Eigen::Matrix4d> NibabelAffine(const std::string& path, const RawHeader& h, int sform_code,
                                        int qform_code) {
  double zooms[4] = {0.0, 1.0, 1.0, 1.0};
  for (int d = 1; d <= 3; ++d) {
    const double p = h.pixdim[d];
    zooms[d] = p == 0.0 ? 1.0 : std::abs(p);
  }
  Eigen::Matrix4d a = Eigen::Matrix4d::Identity();
  if (sform_code != 0) {
    for (int r = 0; r < 3; ++r) {
      for (int c = 0; c < 4; ++c) a(r, c) = h.srow[r][c];
    }
  } else if (qform_code != 0) {
    // nibabel: fillpositive() in long double with a tolerance of 3 eps of the stored precision,
    // then quat2mat(), then R * diag(zooms with the last one times qfac).
    const long double b = h.quatern[0], c = h.quatern[1], d = h.quatern[2];
    const long double w2 = 1.0L - (b * b + c * c + d * d);
    const long double tolerance = -3.0L * (h.version == 1 ? std::numeric_limits<float>::epsilon()
                                                          : std::numeric_limits<double>::epsilon());
    if (!std::isfinite(static_cast<double>(w2)) || w2 < tolerance) {
      std::ostringstream what;
      what << "qform quaternion (b, c, d) = (" << h.quatern[0] << ", " << h.quatern[1] << ", "
           << h.quatern[2] << ") is not part of a unit quaternion (b^2 + c^2 + d^2 > 1)";
      return FileError(ErrorCode::kCorruptData, path, what.str());
    }
    const long double w = w2 < 0 ? 0.0L : std::sqrt(w2);
    Eigen::Matrix3d rot = Eigen::Matrix3d::Identity();
    const long double nq = w * w + b * b + c * c + d * d;
    if (nq >= std::numeric_limits<double>::epsilon()) {
      const long double s = 2.0L / nq;
      const long double X = b * s, Y = c * s, Z = d * s;
      const long double wX = w * X, wY = w * Y, wZ = w * Z;
      const long double xX = b * X, xY = b * Y, xZ = b * Z;
      const long double yY = c * Y, yZ = c * Z, zZ = d * Z;
      rot << static_cast<double>(1.0L - (yY + zZ)), static_cast<double>(xY - wZ),
          static_cast<double>(xZ + wY), static_cast<double>(xY + wZ),
          static_cast<double>(1.0L - (xX + zZ)), static_cast<double>(yZ - wX),
          static_cast<double>(xZ - wY), static_cast<double>(yZ + wX),
          static_cast<double>(1.0L - (xX + yY));
    }
    const double qfac = h.pixdim[0] == -1.0 ? -1.0 : 1.0;
    const Eigen::Vector3d scale(zooms[1], zooms[2], zooms[3] * qfac);
    a.topLeftCorner<3, 3>() = rot * scale.asDiagonal();
    a.topRightCorner<3, 1>() = Eigen::Vector3d(h.qoffset[0], h.qoffset[1], h.qoffset[2]);
  } else {
    // shape_zoom_affine(shape, zooms, x_flip=True): voxel centre of the volume at the origin.
    for (int d = 0; d < 3; ++d) {
      const double zoom = d == 0 ? -zooms[1] : zooms[d + 1];
      const double origin = (static_cast<double>(h.dim[d + 1]) - 1.0) / 2.0;
      a(d, d) = zoom;
      a(d, 3) = -origin * zoom;
    }
  }
  if (!a.allFinite()) {
    return FileError(ErrorCode::kCorruptData, path, "voxel-to-world affine has non-finite entries");
  }
  if (!(std::abs(a.topLeftCorner<3, 3>().determinant()) > 1e-12)) {
    return FileError(ErrorCode::kCorruptData, path,
                     std::string("voxel-to-world affine (") +
                         (sform_code != 0   ? "sform"
                          : qform_code != 0 ? "qform"
                                            : "pixdim") +
                         ") is singular");
  }
  return a;
}

/// Checks that `path` names an existing regular .nii or .nii.gz file, and returns its size.
Expected<std::uintmax_t> NiftiFileSize(const std::string& path) {
  if (!IsNiftiPath(path)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "'" + path + "' is not a NIfTI path (expected .nii or .nii.gz)");
  }
  std::error_code ec;
  const fs::file_status status = fs::status(path, ec);
  if (status.type() == fs::file_type::not_found) {
    return FileError(ErrorCode::kNotFound, path, "does not exist");
  }
  if (ec) return FileError(ErrorCode::kIo, path, ec.message());
  if (fs::is_directory(status)) {
    return FileError(ErrorCode::kIo, path, "is a folder, expected a .nii or .nii.gz file");
  }
  if (!fs::is_regular_file(status)) {
    return FileError(ErrorCode::kIo, path, "is not a regular file");
  }
  const std::uintmax_t file_size = fs::file_size(path, ec);
  if (ec) return FileError(ErrorCode::kIo, path, ec.message());
  return file_size;
}

/// Checks the magic of a single-file NIfTI-1 or -2 (and NIfTI-2's end-of-line bytes).
Status CheckMagic(const std::string& path, const RawHeader& h) {
  const std::string single_magic = h.version == 1 ? "n+1" : "n+2";
  if (h.magic != single_magic) {
    const std::string pair_magic = h.version == 1 ? "ni1" : "ni2";
    return FileError(ErrorCode::kCorruptData, path,
                     "magic '" + h.magic + "' is not that of a single-file NIfTI-" +
                         std::to_string(h.version) + " ('" + single_magic + "')" +
                         (h.magic == pair_magic ? "; .hdr/.img pairs are not supported" : ""));
  }
  if (!h.eol_ok) {
    return FileError(ErrorCode::kCorruptData, path,
                     "NIfTI-2 magic is followed by bytes other than \\r\\n\\032\\n; the "
                     "file was probably mangled by an end-of-line conversion");
  }
  return {};
}

/// The image's shape (dim[1..dim[0]]), checked to be 3-D or 3-D followed by dimensions of 1.
Expected<std::vector<std::int64_t>> ThreeDShape(const std::string& path, const RawHeader& h) {
  const std::int64_t ndim = h.dim[0];
  if (ndim < 1 || ndim > 7) {
    return FileError(ErrorCode::kCorruptData, path,
                     "dim[0] = " + std::to_string(ndim) + ", expected 1 to 7");
  }
  std::vector<std::int64_t> shape(h.dim + 1, h.dim + 1 + ndim);
  for (std::int64_t d = 0; d < ndim; ++d) {
    if (shape[d] < 1) {
      return FileError(ErrorCode::kCorruptData, path,
                       "dimension " + std::to_string(d + 1) + " has size " +
                           std::to_string(shape[d]) + ", expected >= 1");
    }
  }
  const bool extra_dims = std::any_of(shape.begin() + std::min<std::int64_t>(ndim, 3), shape.end(),
                                      [](std::int64_t n) { return n != 1; });
  if (ndim < 3 || extra_dims) {
    return FileError(ErrorCode::kCorruptData, path,
                     "is a " + std::to_string(ndim) + "-D image (shape " + FormatShape(shape) +
                         "); expected a 3-D image (trailing dimensions of size 1 are allowed)");
  }
  return shape;
}

/// Fills `out`'s voxel count, sizes and data offset from the header, checking that they are
/// plausible and, for an uncompressed file, that the file holds every voxel.
Status SizeVoxelData(const std::string& path, const RawHeader& h,
                     const std::vector<std::int64_t>& shape, std::uintmax_t file_size,
                     ParsedHeader& out) {
  int nbyper = 0, swapsize = 0;
  nifti_datatype_sizes(h.datatype, &nbyper, &swapsize);
  std::uint64_t count = 1;
  for (int d = 0; d < 3; ++d) {
    if (__builtin_mul_overflow(count, static_cast<std::uint64_t>(out.info.dims[d]), &count)) {
      count = 0;
    }
  }
  std::uint64_t bytes = 0;
  if (count == 0 || __builtin_mul_overflow(count, static_cast<std::uint64_t>(nbyper), &bytes) ||
      bytes > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max() / 2)) {
    return FileError(ErrorCode::kCorruptData, path,
                     "shape " + FormatShape(shape) + " is too large to be real");
  }
  out.voxel_count = static_cast<std::size_t>(count);
  out.bytes_per_voxel = nbyper;
  out.voxel_bytes = static_cast<std::size_t>(bytes);
  out.swap_size = (swapsize > 1 && h.swapped) ? swapsize : 0;
  out.data_offset = h.vox_offset;
  const std::int64_t header_size = h.version == 1 ? 348 : 540;
  if (out.data_offset < 0) {
    char stored[32];
    std::snprintf(stored, sizeof stored, "%g", h.stored_vox_offset);
    return FileError(ErrorCode::kCorruptData, path,
                     std::string("vox_offset ") + stored + " is not a byte offset");
  }
  if (out.data_offset < header_size) {
    return FileError(ErrorCode::kCorruptData, path,
                     "vox_offset " + std::to_string(out.data_offset) +
                         " points into the header (expected >= " + std::to_string(header_size) +
                         ")");
  }
  const std::uint64_t needed = static_cast<std::uint64_t>(out.data_offset) + bytes;
  if (!h.gzip && file_size < needed) {
    return FileError(ErrorCode::kCorruptData, path,
                     "truncated: the header needs " + std::to_string(needed) + " bytes (offset " +
                         std::to_string(out.data_offset) + " + " + std::to_string(bytes) +
                         " bytes of voxels), the file has " + std::to_string(file_size));
  }
  // deflate cannot compress better than about 1032:1; a header that claims more is garbage, and
  // would otherwise make us allocate whatever it says.
  if (h.gzip && needed / 1032 > file_size + 1024) {
    return FileError(ErrorCode::kCorruptData, path,
                     "header claims " + std::to_string(bytes) + " bytes of voxels, more than a " +
                         std::to_string(file_size) + "-byte gzip file can hold");
  }
  return {};
}

// Reads and checks the header without touching voxel data (except for the size check of an
// uncompressed file, which needs only its length).
Expected<ParsedHeader> ReadHeader(const std::string& path) {
  SilenceNiftilib();
  MEWM_TRY(const std::uintmax_t file_size, NiftiFileSize(path));
  MEWM_TRY(RawHeader h, ReadRawHeader(path, file_size));
  MEWM_RETURN_IF_ERROR(CheckMagic(path, h));
  ParsedHeader out;
  NiftiInfo& info = out.info;
  info.version = h.version;
  info.datatype = h.datatype;
  info.integer_datatype = nifti_is_inttype(h.datatype) != 0;
  info.intent_code = h.intent_code;
  info.scl_slope = h.scl_slope;
  info.scl_inter = h.scl_inter;
  info.sform_code = h.sform_code;
  info.qform_code = h.qform_code;

  if (!SupportedDatatype(h.datatype)) {
    const char* name = nifti_datatype_string(h.datatype);
    return FileError(ErrorCode::kUnsupported, path,
                     "datatype " + std::to_string(h.datatype) + " (" + (name ? name : "?") +
                         ") is not supported; expected an integer or real type of 8 to 64 bits");
  }

  // Shape: 3-D, or 3-D followed by dimensions of size 1 (e.g. a 4th dimension of 1).
  MEWM_TRY(const std::vector<std::int64_t> shape, ThreeDShape(path, h));
  info.dims = {shape[0], shape[1], shape[2]};
  MEWM_RETURN_IF_ERROR(SizeVoxelData(path, h, shape, file_size, out));

  // Scaling as nibabel: none when the slope is 0 or not finite; then the intercept must be finite.
  if (h.scl_slope != 0.0 && std::isfinite(h.scl_slope)) {
    if (!std::isfinite(h.scl_inter)) {
      return FileError(ErrorCode::kCorruptData, path,
                       "scl_slope is valid but scl_inter is not finite");
    }
    out.scaled = true;
  }

  const int sform_code = ValidXformCode(h.sform_code) ? h.sform_code : 0;
  const int qform_code = ValidXformCode(h.qform_code) ? h.qform_code : 0;
  MEWM_TRY(info.affine_ras, NibabelAffine(path, h, sform_code, qform_code));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Voxel data

// Reads the voxel bytes (uncompressed or gzip; zlib reads both) in native byte order.
Expected<std::vector<unsigned char>> ReadVoxelBytes(const std::string& path,
                                                    const ParsedHeader& h) {
  errno = 0;
  GzReader gz(gzopen(path.c_str(), "rb"));
  if (gz == nullptr) {
    return FileError(ErrorCode::kIo, path, errno ? std::strerror(errno) : "cannot open");
  }
  gzbuffer(gz.get(), 1u << 17);
  if (gzseek(gz.get(), static_cast<z_off_t>(h.data_offset), SEEK_SET) != h.data_offset) {
    return FileError(
        ErrorCode::kCorruptData, path,
        "truncated: ends before the voxel data at offset " + std::to_string(h.data_offset));
  }
  std::vector<unsigned char> bytes(h.voxel_bytes);
  std::size_t got = 0;
  while (got < bytes.size()) {
    const unsigned chunk =
        static_cast<unsigned>(std::min<std::size_t>(bytes.size() - got, 1u << 30));
    const int n = gzread(gz.get(), bytes.data() + got, chunk);
    if (n < 0) {
      return FileError(ErrorCode::kCorruptData, path,
                       "damaged compressed data: " + GzMessage(gz.get()));
    }
    if (n == 0) break;
    got += static_cast<std::size_t>(n);
  }
  if (got < bytes.size()) {
    return FileError(ErrorCode::kCorruptData, path,
                     "truncated: " + std::to_string(bytes.size()) +
                         " bytes of voxel data expected after offset " +
                         std::to_string(h.data_offset) + ", found " + std::to_string(got));
  }
  if (!gzdirect(gz.get())) {
    // Drain the stream so that zlib checks the gzip trailer (CRC-32 and length); a stream cut
    // short just after the data reads fine up to here. Bounded: 20 GiB of zeros compressed
    // behind an 8 x 8 x 4 image (20 MB on disk) was inflated for minutes.
    constexpr std::uint64_t kMaxTrailingBytes = 16u << 20;
    unsigned char sink[4096];
    int n = 0;
    std::uint64_t trailing = 0;
    while ((n = gzread(gz.get(), sink, sizeof sink)) > 0) {
      trailing += std::uint64_t(n);
      if (trailing > kMaxTrailingBytes) {
        return FileError(ErrorCode::kCorruptData, path,
                         "holds more than " + std::to_string(kMaxTrailingBytes) +
                             " bytes after its voxel data (a NIfTI file ends with its voxels)");
      }
    }
    int errnum = Z_OK;
    gzerror(gz.get(), &errnum);
    if (n < 0 || errnum != Z_OK) {
      return FileError(ErrorCode::kCorruptData, path,
                       "compressed stream is truncated or damaged: " + GzMessage(gz.get()));
    }
  }
  const int closed = gzclose_r(gz.release());
  if (closed != Z_OK) {
    return FileError(
        ErrorCode::kCorruptData, path,
        "compressed stream is truncated or damaged (zlib error " + std::to_string(closed) + ")");
  }
  if (h.swap_size > 0) {
    nifti_swap_Nbytes(static_cast<std::int64_t>(bytes.size() / h.swap_size), h.swap_size,
                      bytes.data());
  }
  return bytes;
}

// Calls fn(voxel index, value) with each voxel's value as nibabel's get_fdata() gives it.
template <typename T, typename Fn>
void ForEachValueAs(const std::vector<unsigned char>& bytes, const ParsedHeader& h, Fn&& fn) {
  const std::size_t n = h.voxel_count;
  const unsigned char* p = bytes.data();
  if (h.scaled) {
    const double slope = h.info.scl_slope, inter = h.info.scl_inter;
    for (std::size_t i = 0; i < n; ++i) {
      T raw;
      std::memcpy(&raw, p + i * sizeof(T), sizeof(T));
      fn(i, static_cast<double>(raw) * slope + inter);
    }
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      T raw;
      std::memcpy(&raw, p + i * sizeof(T), sizeof(T));
      fn(i, static_cast<double>(raw));
    }
  }
}

template <typename Fn>
void ForEachValue(const std::vector<unsigned char>& bytes, const ParsedHeader& h, Fn&& fn) {
  switch (h.info.datatype) {
    case NIFTI_TYPE_UINT8:
      return ForEachValueAs<std::uint8_t>(bytes, h, fn);
    case NIFTI_TYPE_INT8:
      return ForEachValueAs<std::int8_t>(bytes, h, fn);
    case NIFTI_TYPE_INT16:
      return ForEachValueAs<std::int16_t>(bytes, h, fn);
    case NIFTI_TYPE_UINT16:
      return ForEachValueAs<std::uint16_t>(bytes, h, fn);
    case NIFTI_TYPE_INT32:
      return ForEachValueAs<std::int32_t>(bytes, h, fn);
    case NIFTI_TYPE_UINT32:
      return ForEachValueAs<std::uint32_t>(bytes, h, fn);
    case NIFTI_TYPE_INT64:
      return ForEachValueAs<std::int64_t>(bytes, h, fn);
    case NIFTI_TYPE_UINT64:
      return ForEachValueAs<std::uint64_t>(bytes, h, fn);
    case NIFTI_TYPE_FLOAT32:
      return ForEachValueAs<float>(bytes, h, fn);
    case NIFTI_TYPE_FLOAT64:
      return ForEachValueAs<double>(bytes, h, fn);
    default:
      return;  // ReadHeader admits only the types above
  }
}

// The LPS geometry of a parsed header.
Expected<Geometry> GeometryOf(const std::string& path, const NiftiInfo& info) {
  Eigen::Matrix4d lps = info.affine_ras;
  lps.row(0) *= -1.0;
  lps.row(1) *= -1.0;
  Expected<Geometry> geometry = Geometry::FromAffine(lps);
  if (!geometry) {
    return FileError(ErrorCode::kUnsupported, path,
                     "cannot use its voxel-to-world affine: " + geometry.error().message);
  }
  return geometry;
}

// ---------------------------------------------------------------------------------------------
// Writing

// Flushes a closed file to disk, so that the rename in WriteAtomically publishes whole data.
Status SyncFile(const std::string& path, const std::string& final_path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0 || ::fsync(fd) != 0) {
    const std::string reason = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    return FileError(ErrorCode::kIo, final_path, "cannot sync to disk: " + reason);
  }
  ::close(fd);
  return {};
}

Status WriteBytes(const std::string& temp, const std::string& final_path, bool compress,
                  const std::string& header, const void* data, std::size_t size) {
  if (compress) {
    errno = 0;
    gzFile gz = gzopen(temp.c_str(), "wb6");
    if (gz == nullptr) {
      return FileError(ErrorCode::kIo, final_path,
                       std::string("cannot create: ") + (errno ? std::strerror(errno) : "zlib"));
    }
    gzbuffer(gz, 1u << 17);
    bool ok = gzwrite(gz, header.data(), static_cast<unsigned>(header.size())) ==
              static_cast<int>(header.size());
    const auto* p = static_cast<const unsigned char*>(data);
    for (std::size_t done = 0; ok && done < size;) {
      const unsigned chunk = static_cast<unsigned>(std::min<std::size_t>(size - done, 1u << 30));
      ok = gzwrite(gz, p + done, chunk) == static_cast<int>(chunk);
      done += chunk;
    }
    const std::string reason = ok ? "" : GzMessage(gz);
    const bool closed = gzclose_w(gz) == Z_OK;
    if (!ok || !closed) {
      return FileError(ErrorCode::kIo, final_path,
                       "short write" + (reason.empty() ? std::string() : ": " + reason));
    }
  } else {
    std::FILE* f = std::fopen(temp.c_str(), "wb");
    if (f == nullptr) {
      return FileError(ErrorCode::kIo, final_path,
                       std::string("cannot create: ") + std::strerror(errno));
    }
    bool ok = std::fwrite(header.data(), 1, header.size(), f) == header.size() &&
              std::fwrite(data, 1, size, f) == size && std::fflush(f) == 0;
    const std::string reason = ok ? "" : std::strerror(errno);
    const bool closed = std::fclose(f) == 0;
    if (!ok || !closed) {
      return FileError(ErrorCode::kIo, final_path,
                       "short write" + (reason.empty() ? std::string() : ": " + reason));
    }
  }
  return SyncFile(temp, final_path);
}

// The checks every write makes before touching the file system.
Status CheckWritable(const std::string& path, const Index3& dims, std::size_t size,
                     const Geometry& geometry, NiftiVersion version) {
  if (!IsNiftiPath(path)) {
    return MakeError(ErrorCode::kInvalidArgument,
                     "cannot write '" + path + "': expected a .nii or .nii.gz file name");
  }
  const std::string shape =
      std::to_string(dims[0]) + "x" + std::to_string(dims[1]) + "x" + std::to_string(dims[2]);
  std::uint64_t count = 1;
  for (int d = 0; d < 3; ++d) {
    if (dims[d] < 1) {
      return FileError(
          ErrorCode::kInvalidArgument, path,
          "cannot write an image of dims " + shape + " (every dimension must be >= 1)");
    }
    if (__builtin_mul_overflow(count, static_cast<std::uint64_t>(dims[d]), &count)) count = 0;
  }
  if (count != size) {
    return FileError(
        ErrorCode::kInvalidArgument, path,
        "image dims " + shape + " do not match its " + std::to_string(size) + " voxels");
  }
  if (version == NiftiVersion::kNifti1) {
    for (int d = 0; d < 3; ++d) {
      if (dims[d] > std::numeric_limits<std::int16_t>::max()) {
        return FileError(ErrorCode::kInvalidArgument, path,
                         "dimension of size " + std::to_string(dims[d]) +
                             " does not fit NIfTI-1 (max 32767); write NIfTI-2");
      }
    }
  }
  if (Status valid = geometry.Validate(); !valid) {
    return FileError(ErrorCode::kInvalidArgument, path, valid.error().message);
  }
  return {};
}

template <typename T>
Status WriteVolume(const std::string& path, const Index3& dims, const Geometry& geometry,
                   const std::vector<T>& data, int datatype, NiftiVersion version,
                   int intent_code = NIFTI_INTENT_NONE) {
  SilenceNiftilib();
  MEWM_RETURN_IF_ERROR(CheckWritable(path, dims, data.size(), geometry, version));

  const std::int64_t nim_dims[8] = {3, dims[0], dims[1], dims[2], 1, 1, 1, 1};
  NiftiImagePtr nim(nifti_make_new_nim(nim_dims, datatype, 0));
  if (nim == nullptr) {
    return FileError(ErrorCode::kInternal, path, "niftilib cannot create an image header");
  }
  const bool v2 = version == NiftiVersion::kNifti2;
  nim->nifti_type = v2 ? NIFTI_FTYPE_NIFTI2_1 : NIFTI_FTYPE_NIFTI1_1;
  nim->iname_offset = v2 ? 544 : 352;  // header + 4-byte extender, a multiple of 16
  nim->byteorder = nifti_short_order();
  nim->xyz_units = NIFTI_UNITS_MM;
  nim->dx = nim->pixdim[1] = geometry.spacing[0];
  nim->dy = nim->pixdim[2] = geometry.spacing[1];
  nim->dz = nim->pixdim[3] = geometry.spacing[2];
  nim->scl_slope = 0.0;  // no scaling
  nim->scl_inter = 0.0;
  nim->intent_code = intent_code;

  Eigen::Matrix4d ras = geometry.Affine();
  ras.row(0) *= -1.0;
  ras.row(1) *= -1.0;
  nifti_dmat44 m;
  for (int r = 0; r < 4; ++r) {
    for (int c = 0; c < 4; ++c) m.m[r][c] = ras(r, c);
  }
  nim->sform_code = NIFTI_XFORM_SCANNER_ANAT;
  nim->sto_xyz = m;
  nim->sto_ijk = nifti_dmat44_inverse(m);
  // qfac = -1 encodes a left-handed grid (det < 0); the quaternion then holds the proper part.
  double dx = 0, dy = 0, dz = 0;
  nifti_dmat44_to_quatern(m, &nim->quatern_b, &nim->quatern_c, &nim->quatern_d, &nim->qoffset_x,
                          &nim->qoffset_y, &nim->qoffset_z, &dx, &dy, &dz, &nim->qfac);
  nim->qform_code = NIFTI_XFORM_SCANNER_ANAT;
  nim->pixdim[0] = nim->qfac;
  nim->qto_xyz =
      nifti_quatern_to_dmat44(nim->quatern_b, nim->quatern_c, nim->quatern_d, nim->qoffset_x,
                              nim->qoffset_y, nim->qoffset_z, nim->dx, nim->dy, nim->dz, nim->qfac);
  nim->qto_ijk = nifti_dmat44_inverse(nim->qto_xyz);

  std::string header;
  if (v2) {
    nifti_2_header h2;
    if (nifti_convert_nim2n2hdr(nim.get(), &h2) != 0) {
      return FileError(ErrorCode::kInternal, path, "niftilib cannot encode a NIfTI-2 header");
    }
    // niftilib 3.0.1 leaves vox_offset 0 and the 4 bytes after "n+2" zero.
    h2.vox_offset = nim->iname_offset;
    for (int d = 4; d < 8; ++d) h2.dim[d] = 1;  // unused dimensions: 1, as nibabel writes them
    std::memcpy(h2.magic, "n+2\0\r\n\032\n", 8);
    header.assign(reinterpret_cast<const char*>(&h2), sizeof h2);
  } else {
    nifti_1_header h1;
    if (nifti_convert_nim2n1hdr(nim.get(), &h1) != 0) {
      return FileError(ErrorCode::kInternal, path, "niftilib cannot encode a NIfTI-1 header");
    }
    h1.vox_offset = static_cast<float>(nim->iname_offset);
    for (int d = 4; d < 8; ++d) h1.dim[d] = 1;
    std::memcpy(h1.magic, "n+1", 4);
    header.assign(reinterpret_cast<const char*>(&h1), sizeof h1);
  }
  header.resize(static_cast<std::size_t>(nim->iname_offset), '\0');  // extender: no extensions

  const bool compress = FileExtension(path) == ".nii.gz";
  return WriteAtomically(path, [&](const std::string& temp) -> Status {
    MEWM_RETURN_IF_ERROR(
        WriteBytes(temp, path, compress, header, data.data(), data.size() * sizeof(T)));
    // Read the header back: the file must exist, parse, and (uncompressed) hold all the data.
    Expected<ParsedHeader> back = ReadHeader(temp);
    if (!back) {
      return FileError(ErrorCode::kIo, path,
                       "written file does not read back: " + back.error().message);
    }
    if (back->info.dims != dims || back->info.datatype != datatype ||
        back->info.version != static_cast<int>(version)) {
      return FileError(ErrorCode::kInternal, path, "written header does not match the image");
    }
    return {};
  });
}

}  // namespace

namespace {

/// The voxel bound of MEWM_MAX_VOXELS, before anything is allocated: the file's bytes are held
/// next to the 4-byte values they become.
Status CheckVoxelCount(const std::string& path, const ParsedHeader& h) {
  const Index3& d = h.info.dims;
  return CheckImageVoxels(
      path, std::to_string(d[0]) + " x " + std::to_string(d[1]) + " x " + std::to_string(d[2]),
      h.voxel_count, std::uint64_t(h.bytes_per_voxel) + 4);
}

}  // namespace

Expected<NiftiInfo> ReadNiftiInfo(const std::string& path) {
  MEWM_TRY(ParsedHeader header, ReadHeader(path));
  return header.info;
}

Expected<DenseFloat> ReadNifti(const std::string& path, NiftiInfo* info) {
  MEWM_TRY(ParsedHeader header, ReadHeader(path));
  MEWM_TRY(Geometry geometry, GeometryOf(path, header.info));
  MEWM_RETURN_IF_ERROR(CheckVoxelCount(path, header));
  MEWM_TRY(std::vector<unsigned char> bytes, ReadVoxelBytes(path, header));

  DenseFloat image;
  image.dims = header.info.dims;
  image.geometry = geometry;
  image.data.resize(header.voxel_count);
  std::size_t bad = 0, first_bad = 0;
  ForEachValue(bytes, header, [&](std::size_t n, double v) {
    // Also catches finite doubles beyond float range, whose conversion would be undefined.
    if (!(std::abs(v) <= static_cast<double>(FLT_MAX))) {
      if (bad++ == 0) first_bad = n;
      return;
    }
    image.data[n] = static_cast<float>(v);
  });
  if (bad > 0) {
    return FileError(ErrorCode::kCorruptData, path,
                     std::to_string(bad) +
                         " voxel(s) are NaN, Inf or beyond float range; first "
                         "at index " +
                         FormatIndex(first_bad, image.dims));
  }
  if (info != nullptr) *info = header.info;
  return image;
}

Expected<DenseLabel> ReadNiftiLabels(const std::string& path, NiftiInfo* info) {
  MEWM_TRY(ParsedHeader header, ReadHeader(path));
  MEWM_TRY(Geometry geometry, GeometryOf(path, header.info));
  MEWM_RETURN_IF_ERROR(CheckVoxelCount(path, header));
  MEWM_TRY(std::vector<unsigned char> bytes, ReadVoxelBytes(path, header));

  DenseLabel labels;
  labels.dims = header.info.dims;
  labels.geometry = geometry;
  labels.data.resize(header.voxel_count);
  std::size_t bad = 0, first_bad = 0;
  double first_value = 0.0;
  constexpr double kMin = std::numeric_limits<std::int32_t>::min();
  constexpr double kMax = std::numeric_limits<std::int32_t>::max();
  ForEachValue(bytes, header, [&](std::size_t n, double v) {
    if (!(v >= kMin && v <= kMax) || std::floor(v) != v) {
      if (bad++ == 0) {
        first_bad = n;
        first_value = v;
      }
      return;
    }
    labels.data[n] = static_cast<std::int32_t>(v);
  });
  if (bad > 0) {
    std::ostringstream what;
    what << bad << " voxel(s) are not integer labels in int32 range; first at index "
         << FormatIndex(first_bad, labels.dims) << " = " << first_value;
    return FileError(ErrorCode::kCorruptData, path, what.str());
  }
  if (info != nullptr) *info = header.info;
  return labels;
}

Status WriteNifti(const std::string& path, const DenseFloat& image, NiftiVersion version) {
  MEWM_RETURN_IF_ERROR(CheckWritable(path, image.dims, image.data.size(), image.geometry, version));
  const auto not_finite = [](float v) { return !std::isfinite(v); };
  const auto first = std::find_if(image.data.begin(), image.data.end(), not_finite);
  if (first != image.data.end()) {
    const auto bad = std::count_if(first, image.data.end(), not_finite);
    return FileError(
        ErrorCode::kInvalidArgument, path,
        "cannot write " + std::to_string(bad) +
            " NaN or Inf voxel(s) (ReadNifti would reject the file); first at "
            "index " +
            FormatIndex(static_cast<std::size_t>(first - image.data.begin()), image.dims));
  }
  return WriteVolume(path, image.dims, image.geometry, image.data, NIFTI_TYPE_FLOAT32, version);
}

Status WriteNiftiLabels(const std::string& path, const DenseLabel& labels, NiftiVersion version) {
  const bool fits_int16 = std::all_of(labels.data.begin(), labels.data.end(), [](std::int32_t v) {
    return v >= std::numeric_limits<std::int16_t>::min() &&
           v <= std::numeric_limits<std::int16_t>::max();
  });
  if (!fits_int16) {
    return WriteVolume(path, labels.dims, labels.geometry, labels.data, NIFTI_TYPE_INT32, version,
                       NIFTI_INTENT_LABEL);
  }
  const std::vector<std::int16_t> narrow(labels.data.begin(), labels.data.end());
  return WriteVolume(path, labels.dims, labels.geometry, narrow, NIFTI_TYPE_INT16, version,
                     NIFTI_INTENT_LABEL);
}

bool IsNiftiPath(const std::string& path) {
  const std::string ext = FileExtension(path);
  return ext == ".nii" || ext == ".nii.gz";
}

}  // namespace mewm
