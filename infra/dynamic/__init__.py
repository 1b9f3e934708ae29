"""Pulumi dynamic providers of this program (small, picklable, no module-level clients)."""
