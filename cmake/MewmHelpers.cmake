# SPDX-License-Identifier: Apache-2.0
# SPDX-FileCopyrightText: the mewm authors

# Warnings for mewm's own code; third-party headers come in as SYSTEM includes.
function(mewm_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic -Wshadow=local
                                           -Wnon-virtual-dtor -Wno-unused-parameter)
  if(MEWM_WERROR)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  # Internal invariants (core/include/mewm/core/assert.h) are checked in Debug and sanitizer builds.
  target_compile_definitions(${target} PRIVATE $<$<CONFIG:Debug>:MEWM_ENABLE_ASSERTS>)
  if(MEWM_FUZZ)
    # The fuzz build: coverage for libFuzzer in every mewm library and binary, and ASan/UBSan;
    # the fuzz targets add -fsanitize=fuzzer at link time (streaming/CMakeLists.txt).
    target_compile_definitions(${target} PRIVATE MEWM_ENABLE_ASSERTS)
    target_compile_options(${target} PRIVATE -fsanitize=fuzzer-no-link,address,undefined -g)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
  if(MEWM_SANITIZE)
    target_compile_definitions(${target} PRIVATE MEWM_ENABLE_ASSERTS)
    target_compile_options(${target} PRIVATE -fsanitize=address,undefined -fno-omit-frame-pointer
                                             -fno-sanitize-recover=undefined)
    target_link_options(${target} PRIVATE -fsanitize=address,undefined)
  endif()
endfunction()

# mewm_add_module(<name> SOURCES ... [PUBLIC_DEPS ...] [PRIVATE_DEPS ...])
# One static library per module, aliased mewm::<name>, with include/ public and src/ private.
function(mewm_add_module name)
  cmake_parse_arguments(ARG "" "" "SOURCES;PUBLIC_DEPS;PRIVATE_DEPS" ${ARGN})
  if(NOT ARG_SOURCES)
    # A module without sources: a header-only library with the same name and alias.
    add_library(mewm_${name} INTERFACE)
    add_library(mewm::${name} ALIAS mewm_${name})
    target_include_directories(mewm_${name} INTERFACE
      $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>)
    target_link_libraries(mewm_${name} INTERFACE ${ARG_PUBLIC_DEPS})
    return()
  endif()
  add_library(mewm_${name} STATIC ${ARG_SOURCES})
  add_library(mewm::${name} ALIAS mewm_${name})
  target_include_directories(mewm_${name}
    PUBLIC $<BUILD_INTERFACE:${CMAKE_CURRENT_SOURCE_DIR}/include>
    PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src)
  target_link_libraries(mewm_${name} PUBLIC ${ARG_PUBLIC_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
  set_target_properties(mewm_${name} PROPERTIES POSITION_INDEPENDENT_CODE ON)
  mewm_set_warnings(mewm_${name})
endfunction()

# mewm_add_test(<name> SOURCES ... DEPS ... [LABELS ...] [TIMEOUT seconds])
# One GoogleTest binary; every TEST is discovered as its own ctest entry (300 s each unless
# TIMEOUT says otherwise).
function(mewm_add_test name)
  cmake_parse_arguments(ARG "" "TIMEOUT" "SOURCES;DEPS;LABELS" ${ARGN})
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest_main GTest::gmock)
  target_compile_definitions(${name} PRIVATE
    MEWM_TEST_DATA_DIR="${PROJECT_SOURCE_DIR}/tests/data"
    MEWM_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  mewm_set_warnings(${name})
  set(labels ${ARG_LABELS})
  if(NOT labels)
    set(labels unit)
  endif()
  # ctest runs two tests at once on two cores. libtorch's OpenMP workers spin for milliseconds after
  # every parallel region unless told to sleep, and beside another busy process that spinning takes
  # the cores both need: two generator runs side by side took 34 s each, 26 s with the passive
  # policy (docs/BENCHMARKS.md, "OpenMP's wait policy"). The mewm processes a test starts inherit it.
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60
    PROPERTIES TIMEOUT ${ARG_TIMEOUT} ENVIRONMENT "OMP_WAIT_POLICY=PASSIVE")
  # Labels are set by a script of our own that ctest reads after the discovered tests: passed
  # through gtest_discover_tests' PROPERTIES, every label after the first was read as a property
  # name, so `ctest -L core` or `-L streaming` found nothing.
  set(labels_file "${CMAKE_CURRENT_BINARY_DIR}/${name}_labels.cmake")
  file(WRITE "${labels_file}"
    "if(${name}_TESTS)\n"
    "  set_tests_properties(\${${name}_TESTS} PROPERTIES LABELS \"${labels}\")\n"
    "endif()\n")
  set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${labels_file}")
endfunction()
