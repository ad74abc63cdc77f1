# bench_gpu: GPU fast-path timings (plain executable with CUDA-event timing; needs a CUDA build
# to do anything useful, builds everywhere). Run through bench/gpu_side_by_side.sh.
add_executable(bench_gpu ${CMAKE_CURRENT_LIST_DIR}/gpu_bench.cpp)
target_link_libraries(bench_gpu PRIVATE vla_gpu vla_warnings)
target_precompile_headers(bench_gpu REUSE_FROM vla_pch)
set_target_properties(bench_gpu PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
