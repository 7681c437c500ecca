"""Reproducible speed and memory measurements of migrator against skopeo (see README.md)."""
