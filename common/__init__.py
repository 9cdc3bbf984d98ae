"""Plumbing both the box and the hub use, importing neither (docs/architecture.md)."""
