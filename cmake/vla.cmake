# Shared build helpers: dependencies, warnings, one static library per concern.
find_package(Torch REQUIRED)
find_package(Threads REQUIRED)
find_package(nlohmann_json 3 REQUIRED)

# Header-only deps that may live in an unpacked .deb tree on machines without them installed
# (the GPU machine): point VLA_DEPS_ROOT at it.
set(VLA_DEPS_ROOT "" CACHE PATH "Extra prefix holding header-only deps (CLI11)")
find_path(CLI11_INCLUDE_DIR CLI/CLI.hpp HINTS ${VLA_DEPS_ROOT}/usr/include REQUIRED)

set(VLA_HAVE_CUDA OFF)
if(TARGET torch_cuda OR TORCH_CUDA_LIBRARIES)
  set(VLA_HAVE_CUDA ON)
endif()
message(STATUS "vla: Torch ${Torch_VERSION}, CUDA build: ${VLA_HAVE_CUDA}")

set(VLA_HAVE_SIM OFF)
if(VLA_WITH_SIM)
  find_package(mujoco QUIET)
  find_library(OSMESA_LIBRARY OSMesa)
  if(mujoco_FOUND AND OSMESA_LIBRARY)
    set(VLA_HAVE_SIM ON)
  else()
    message(WARNING "vla: simulator disabled (MuJoCo found: ${mujoco_FOUND}, "
                    "OSMesa: ${OSMESA_LIBRARY})")
  endif()
endif()

# Torch's own flags are not -Wextra clean; its headers are included as system headers.
add_library(vla_torch INTERFACE)
target_link_libraries(vla_torch INTERFACE ${TORCH_LIBRARIES} Threads::Threads)
target_include_directories(vla_torch SYSTEM INTERFACE ${TORCH_INCLUDE_DIRS})
target_compile_options(vla_torch INTERFACE ${TORCH_CXX_FLAGS})
if(VLA_HAVE_CUDA)
  target_compile_definitions(vla_torch INTERFACE VLA_HAVE_CUDA=1)
endif()

add_library(vla_warnings INTERFACE)
target_compile_options(vla_warnings INTERFACE -Wall -Wextra)

# One precompiled torch header shared by every target: compiling <torch/torch.h> costs ~20 s.
add_library(vla_pch OBJECT ${CMAKE_CURRENT_LIST_DIR}/pch.cpp)
target_link_libraries(vla_pch PRIVATE vla_torch nlohmann_json::nlohmann_json)
target_precompile_headers(vla_pch PRIVATE <torch/torch.h> <nlohmann/json.hpp>)

# vla_add_library(NAME SOURCES a.cpp ... DEPS other_targets ...)
function(vla_add_library name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  add_library(${name} STATIC ${A_SOURCES})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR}/src)
  target_include_directories(${name} SYSTEM PUBLIC ${CLI11_INCLUDE_DIR})
  target_link_libraries(${name} PUBLIC vla_torch nlohmann_json::nlohmann_json ${A_DEPS}
                        PRIVATE vla_warnings)
  target_precompile_headers(${name} REUSE_FROM vla_pch)
endfunction()

# vla_add_test(NAME SOURCES a.cpp ... DEPS libs ...): one GoogleTest binary per concern.
function(vla_add_test name)
  cmake_parse_arguments(A "" "" "SOURCES;DEPS" ${ARGN})
  find_package(GTest REQUIRED)
  include(GoogleTest)
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE ${A_DEPS} GTest::gtest_main vla_warnings)
  target_compile_definitions(${name} PRIVATE VLA_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  target_precompile_headers(${name} REUSE_FROM vla_pch)
  gtest_discover_tests(${name} DISCOVERY_MODE PRE_TEST DISCOVERY_TIMEOUT 60
                       PROPERTIES ENVIRONMENT "VLA_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endfunction()
