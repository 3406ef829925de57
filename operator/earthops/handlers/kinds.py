"""Registers the handlers of every kind. Imported by the operator process."""

from earthops.handlers import unsupported

UNSUPPORTED_KINDS = unsupported.register_all()
