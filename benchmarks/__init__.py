"""chunksft benchmarks: run each as a module from the repository root, e.g.
``python -m benchmarks.bench_chunk_attention`` (benchmarks/README.md lists them)."""
