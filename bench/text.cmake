# bench_text: tokenizer encode throughput and safetensors load/save of a ~100 MB file.
add_executable(bench_text ${CMAKE_CURRENT_LIST_DIR}/text_bench.cpp)
target_link_libraries(bench_text PRIVATE vla_text vla_weights benchmark::benchmark vla_warnings)
target_compile_definitions(bench_text PRIVATE VLA_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
target_precompile_headers(bench_text REUSE_FROM vla_pch)
set_target_properties(bench_text PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
