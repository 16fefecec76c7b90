from workbench.registry import BENCHMARKS
