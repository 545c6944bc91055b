"""Pipeline stages: prepare -> multi-seed runs -> aggregate -> report, and the `repro` CLI."""
