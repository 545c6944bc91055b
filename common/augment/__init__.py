"""augment layer (see docs/architecture.md)."""
