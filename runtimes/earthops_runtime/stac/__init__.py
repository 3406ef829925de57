"""STAC as earthops speaks it, below everything that reads or writes STAC: the conventions of the
objects earthops writes (:mod:`.conventions`) and the one query semantics (:mod:`.query`: datetime
intervals, bbox and geometry, CQL2, ordering) shared by ingestion and ``earthops search``."""
