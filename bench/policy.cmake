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
