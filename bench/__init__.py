"""The benchmarks: each module states one experiment (``python -m bench.NAME``), ``harness`` runs it."""
