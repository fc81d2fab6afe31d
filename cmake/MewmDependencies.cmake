# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors
# Finds every third-party dependency once, so module CMakeLists only link targets.

# OpenVDB ships only a find module, under its own folder.
# Under each prefix searched too (tools/gpu_check.sh unpacks Debian's packages under one).
foreach(prefix IN LISTS CMAKE_PREFIX_PATH ITEMS /usr)
  list(APPEND CMAKE_MODULE_PATH ${prefix}/lib/x86_64-linux-gnu/cmake/OpenVDB
       ${prefix}/lib/cmake/OpenVDB)
endforeach()
find_package(OpenVDB REQUIRED COMPONENTS openvdb)
find_package(TBB REQUIRED)
find_package(Eigen3 REQUIRED NO_MODULE)
find_package(nlohmann_json REQUIRED)
find_package(tomlplusplus REQUIRED)
find_package(spdlog REQUIRED)
find_package(PNG REQUIRED)
find_package(ZLIB REQUIRED)
find_package(Threads REQUIRED)
# OpenSSL libcrypto (SHA-256, in core).
find_package(PkgConfig REQUIRED)
pkg_check_modules(CRYPTO REQUIRED IMPORTED_TARGET libcrypto)
if(NOT MEWM_MODELS_ONLY)
  find_package(CLI11 REQUIRED)
  # Streaming: Cap'n Proto, ZeroMQ (cppzmq); cpp-httplib (the OpenAI policy's client and the
  # tests' HTTP client of the metrics endpoint).
  find_package(CapnProto CONFIG REQUIRED)
  find_package(cppzmq REQUIRED)
  pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
endif()

# libnifti2-dev's CMake config points at a non-existent libznz path: find the pieces by hand.
find_path(NIFTI_INCLUDE_DIR nifti2_io.h PATH_SUFFIXES nifti REQUIRED)
find_library(NIFTI2_LIBRARY nifti2 REQUIRED)
find_library(ZNZ_LIBRARY znz REQUIRED)
if(NOT TARGET mewm_nifti)
  add_library(mewm_nifti INTERFACE IMPORTED)
  target_include_directories(mewm_nifti SYSTEM INTERFACE ${NIFTI_INCLUDE_DIR})
  target_link_libraries(mewm_nifti INTERFACE ${NIFTI2_LIBRARY} ${ZNZ_LIBRARY} ZLIB::ZLIB m)
endif()

# libtorch: Debian's CPU build by default, or a CUDA build from Torch_DIR.
if(MEWM_WITH_CUDA)
  if(NOT Torch_DIR)
    message(FATAL_ERROR "MEWM_WITH_CUDA=ON needs -DTorch_DIR=<cuda libtorch>/share/cmake/Torch")
  endif()
  set(CUDA_TOOLKIT_ROOT_DIR /usr/local/cuda CACHE PATH "CUDA toolkit")
  enable_language(CUDA)
endif()
find_package(Torch REQUIRED)

# DICOM in (core/dicom/): DCMTK (libdcmtk-dev), whose Debian CMake config works as shipped.
if(NOT MEWM_MODELS_ONLY)
  find_package(DCMTK CONFIG REQUIRED)
endif()
