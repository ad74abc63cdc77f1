# bench_sim: physics step, rendering per view (128x128, 224x224, 640x360), expert decision,
# full expert episode, dataset write.
if(TARGET vla_closed_loop)
  add_executable(bench_sim ${CMAKE_CURRENT_LIST_DIR}/sim_bench.cpp)
  target_link_libraries(bench_sim PRIVATE vla_closed_loop benchmark::benchmark vla_warnings)
  target_precompile_headers(bench_sim REUSE_FROM vla_pch)
endif()
