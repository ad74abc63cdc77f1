# vla_train_tool: the `vla` CLI with only the training / offline-eval commands (no simulator,
# runtime or GPU libraries), for training runs on machines where those are absent or slow to build.
if(TARGET vla_train AND TARGET vla_eval)
  add_executable(vla_train_tool ${PROJECT_SOURCE_DIR}/apps/vla/main.cpp
                 ${PROJECT_SOURCE_DIR}/apps/vla/cmd_train.cpp
                 ${PROJECT_SOURCE_DIR}/apps/vla/cmd_eval_offline.cpp)
  target_compile_definitions(vla_train_tool PRIVATE VLA_HAS_TRAIN=1 VLA_HAS_EVAL=1)
  target_link_libraries(vla_train_tool PRIVATE vla_train vla_eval vla_warnings)
  target_precompile_headers(vla_train_tool REUSE_FROM vla_pch)
endif()

# bench_policy: act() latency (fast path) and expert training throughput on CPU.
if(TARGET vla_policy)
  add_executable(bench_policy ${CMAKE_CURRENT_LIST_DIR}/policy_bench.cpp)
  target_link_libraries(bench_policy PRIVATE vla_policy benchmark::benchmark vla_warnings)
  target_precompile_headers(bench_policy REUSE_FROM vla_pch)
  set_target_properties(bench_policy PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR})
endif()
