"""Seeded generators of FlexCal's embedded demo data and the demo-model training script.

Run from the repository root, e.g. ``python -m datasets.generate_licl``; see README.md.
"""
