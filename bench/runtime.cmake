# bench_runtime: expert step latency and action-loop jitter with a busy VLM thread.
add_executable(bench_runtime ${CMAKE_CURRENT_LIST_DIR}/runtime_bench.cpp)
target_link_libraries(bench_runtime PRIVATE vla_runtime benchmark::benchmark vla_warnings)
target_precompile_headers(bench_runtime REUSE_FROM vla_pch)
set_target_properties(bench_runtime PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
