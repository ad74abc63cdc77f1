# bench_policy: act() latency (fast path) and expert training throughput on CPU.
add_executable(bench_policy ${CMAKE_CURRENT_LIST_DIR}/policy_bench.cpp)
target_link_libraries(bench_policy PRIVATE vla_policy benchmark::benchmark vla_warnings)
target_precompile_headers(bench_policy REUSE_FROM vla_pch)
set_target_properties(bench_policy PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
