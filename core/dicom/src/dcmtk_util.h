// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Small DCMTK helpers shared by the CT series reader and the SEG reader (private to core/dicom).
#pragma once

#include <dcmtk/config/osconfig.h>  // first, as DCMTK asks
//
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcfilefo.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmdata/dctag.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <dcmtk/oflog/oflog.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <mutex>
#include <string>
#include <vector>

#include "mewm/core/expected.h"
#include "mewm/dicom/dicom_import.h"

namespace mewm::dicom::detail {

/// Quiets DCMTK's logger and registers the decoders, once per process.
inline void InitDcmtk() {
  static std::once_flag once;
  std::call_once(once, [] {
    // DCMTK logs every file it cannot parse; mewm reports what matters itself.
    OFLog::configure(OFLogger::FATAL_LOG_LEVEL);
    DJDecoderRegistration::registerCodecs();    // JPEG baseline, extended, lossless
    DJLSDecoderRegistration::registerCodecs();  // JPEG-LS
    DcmRLEDecoderRegistration::registerCodecs();
  });
}

/// True when the file has the DICOM Part 10 preamble ("DICM" at byte 128).
inline bool HasPreamble(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.seekg(128);
  return in.read(magic, 4) && std::string(magic, 4) == "DICM";
}

/// The value of a string tag (all values, backslash-separated), "" when absent.
inline std::string Text(DcmItem& item, const DcmTagKey& tag) {
  OFString value;
  return item.findAndGetOFStringArray(tag, value).good() ? std::string(value.c_str()) : "";
}

/// The error for a folder with no image series, with what the scan skipped.
inline Unexpected NoImageSeries(const FolderScan& scan, const std::string& folder) {
  return MakeError(ErrorCode::kNotFound,
                   "no DICOM image series in '" + folder + "' (" + std::to_string(scan.files) +
                       " files, " + std::to_string(scan.not_dicom) + " not DICOM" +
                       (scan.outside > 0 ? ", " + std::to_string(scan.outside) +
                                               " links out of the folder skipped"
                                         : std::string()) +
                       ")");
}

/// The deepest nesting of sequences and items a DICOM file may have. DCMTK reads (and frees) a
/// nested item by recursion, about 1 to 2 KB of stack a level: 20,000 levels of undefined-length
/// sequences in a 720 KB file overflowed the 8 MB stack. Real objects nest a few levels (a SEG's
/// functional groups, 3 or 4).
inline constexpr int kMaxDicomNesting = 64;

/// How deep the sequences and items of a Part 10 file (`b`, `size` bytes, from the preamble on)
/// nest, read from the element headers alone (no value is parsed), up to `limit` + 1. The meta
/// group is explicit VR little endian; the data set follows its transfer syntax (implicit VR
/// little endian, explicit VR big endian, or explicit VR little endian for every other, the
/// compressed ones included). A defined-length sequence nests what it holds; an undefined-length
/// sequence or UN (whose content is implicit VR, as DCMTK reads it) nests up to its delimiter; an
/// item nests its content, except the fragments of encapsulated pixel data, which are skipped.
/// The scan stops at the first header that does not fit, leaving a damaged file to DCMTK.
inline int DicomNestingDepth(const unsigned char* b, std::size_t size, int limit) {
  constexpr std::uint32_t kUndefined = 0xFFFFFFFFu;
  constexpr std::size_t kUntilDelimiter = SIZE_MAX;
  struct Container {
    std::size_t end;  ///< where a defined-length one ends, or kUntilDelimiter
    bool fragments;   ///< encapsulated pixel data: its items are fragments, not nested data
    bool implicit;    ///< its elements are implicit VR
  };
  std::vector<Container> open;
  const auto u16 = [&](std::size_t at, bool be) {
    return be ? std::uint32_t(b[at] << 8 | b[at + 1]) : std::uint32_t(b[at] | b[at + 1] << 8);
  };
  const auto u32 = [&](std::size_t at, bool be) {
    return be ? (u16(at, true) << 16 | u16(at + 2, true))
              : (u16(at, false) | u16(at + 2, false) << 16);
  };
  std::size_t pos = 132;  // the preamble and "DICM"
  bool meta = true, implicit = false, big = false;
  int deepest = 0;
  const auto push = [&](Container c) {
    open.push_back(c);
    deepest = std::max(deepest, int(open.size()));
  };
  while (pos + 8 <= size && deepest <= limit) {
    while (!open.empty() && open.back().end != kUntilDelimiter && pos >= open.back().end) {
      open.pop_back();
    }
    const bool be = big && !meta;
    const std::uint32_t group = u16(pos, be), element = u16(pos + 2, be);
    if (meta && group != 0x0002) {
      meta = false;
      continue;  // the same header, read again under the data set's syntax
    }
    if (group == 0xFFFE) {  // an item or a delimiter: no VR, a 4-byte length
      const std::uint32_t length = u32(pos + 4, be);
      pos += 8;
      if (element == 0xE000) {
        const bool fragment = !open.empty() && open.back().fragments;
        if (fragment || length == 0) {
          if (length > size - pos) break;
          pos += length;
          continue;
        }
        const bool inner_implicit = open.empty() ? implicit : open.back().implicit;
        push({length == kUndefined ? kUntilDelimiter : pos + length, false, inner_implicit});
      } else if ((element == 0xE00D || element == 0xE0DD) && !open.empty() &&
                 open.back().end == kUntilDelimiter) {
        open.pop_back();
      }
      continue;
    }
    const bool here_implicit = !meta && (open.empty() ? implicit : open.back().implicit);
    std::uint32_t length = 0;
    std::string vr;
    if (!here_implicit) {
      vr.assign(reinterpret_cast<const char*>(b + pos + 4), 2);
      static const char* const kLong[] = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ",
                                          "SV", "UC", "UN", "UR", "UT", "UV"};
      if (std::any_of(std::begin(kLong), std::end(kLong), [&](const char* v) { return vr == v; })) {
        if (pos + 12 > size) break;
        length = u32(pos + 8, be);
        pos += 12;
      } else {
        length = u16(pos + 6, be);
        pos += 8;
      }
    } else {
      length = u32(pos + 4, false);
      pos += 8;
      vr = DcmTag(DcmTagKey(Uint16(group), Uint16(element))).getEVR() == EVR_SQ ? "SQ" : "";
    }
    if (meta && element == 0x0010 && length <= size - pos) {
      std::string syntax(reinterpret_cast<const char*>(b + pos), length);
      while (!syntax.empty() && (syntax.back() == '\0' || syntax.back() == ' ')) {
        syntax.pop_back();
      }
      implicit = syntax == "1.2.840.10008.1.2";
      big = syntax == "1.2.840.10008.1.2.2";
    }
    const bool pixel_data = group == 0x7FE0 && element == 0x0010;
    if (length == kUndefined) {
      // A sequence, UN read as one (implicit VR inside), or encapsulated pixel data.
      const bool fragments = pixel_data || (vr != "SQ" && vr != "UN" && !here_implicit);
      push({kUntilDelimiter, fragments, vr == "UN" || (here_implicit && !fragments)});
      continue;
    }
    if (vr == "SQ" && length > 0) {
      push({pos + length, false, here_implicit});
      continue;
    }
    if (length > size - pos) break;
    pos += length;
  }
  return deepest;
}

/// DcmFileFormat::loadFile after a check that the file nests at most kMaxDicomNesting levels,
/// whose failure is an error condition naming the depth: DCMTK would recurse past the stack.
/// Files without the Part 10 preamble are left to DCMTK (mewm reads no other).
inline OFCondition LoadDicomFile(DcmFileFormat& file, const std::string& path,
                                 Uint32 max_read_length = DCM_MaxReadLength,
                                 E_FileReadMode mode = ERM_autoDetect) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  struct stat st {};
  if (fd >= 0 && ::fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size > 132) {
    const auto size = std::size_t(st.st_size);
    void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map != MAP_FAILED) {
      const auto* bytes = static_cast<const unsigned char*>(map);
      const bool part10 = std::memcmp(bytes + 128, "DICM", 4) == 0;
      const int depth = part10 ? DicomNestingDepth(bytes, size, kMaxDicomNesting) : 0;
      ::munmap(map, size);
      if (depth > kMaxDicomNesting) {
        ::close(fd);
        const std::string text = "its sequences nest more than " +
                                 std::to_string(kMaxDicomNesting) +
                                 " levels deep (no DICOM object does; not read)";
        return OFCondition(OFM_dcmdata, 1000, OF_error, text.c_str());
      }
    }
  }
  if (fd >= 0) ::close(fd);
  return file.loadFile(path.c_str(), EXS_Unknown, EGL_noChange, max_read_length, mode);
}

}  // namespace mewm::dicom::detail
