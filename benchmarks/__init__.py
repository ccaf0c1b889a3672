"""samekey benchmarks: ``python -m benchmarks
[--quick]`` runs them all (needs the ``bench`` extra)."""
