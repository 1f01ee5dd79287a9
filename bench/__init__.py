"""dlkern's benchmark harness. Every timing is preceded by a correctness check (dlkern.testing)."""
