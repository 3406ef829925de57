"""The embedded executor: the same resources, run on this machine without a cluster."""

from earthops.control.local.executor import Executor, Unsupported, order, stored_resources

__all__ = ["Executor", "Unsupported", "order", "stored_resources"]
