"""STAC catalogs: shared conventions (extension versions, band tables, item helpers)."""
