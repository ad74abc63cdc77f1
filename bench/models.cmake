# bench_models: CPU latency of a small Qwen2.5-VL (random weights) at 1 and 5 views, all views in
# one sequence vs views as a batch, plus preprocessing and decode speed.
add_executable(bench_models ${CMAKE_CURRENT_LIST_DIR}/models_bench.cpp)
target_link_libraries(bench_models PRIVATE vla_models benchmark::benchmark vla_warnings)
target_precompile_headers(bench_models REUSE_FROM vla_pch)
