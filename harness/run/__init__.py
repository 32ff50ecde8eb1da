"""Running cases (-> core, model, backends, results, model_zoo): ``run_case``, the one loop every entry point
uses; timing, memory, and the perf measurements (latency, throughput, FLOPs/roofline)."""
