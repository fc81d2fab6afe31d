// SPDX-License-Identifier: Apache-2.0
// SPDX-FileCopyrightText: the mewm authors
//
// Small DCMTK helpers shared by the CT series reader and the SEG reader (private to core/dicom).
#pragma once

#include <dcmtk/config/osconfig.h>  // first, as DCMTK asks
//
#include <dcmtk/dcmdata/dcdatset.h>
#include <dcmtk/dcmdata/dcrledrg.h>
#include <dcmtk/dcmjpeg/djdecode.h>
#include <dcmtk/dcmjpls/djdecode.h>
#include <dcmtk/oflog/oflog.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>

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

}  // namespace mewm::dicom::detail
