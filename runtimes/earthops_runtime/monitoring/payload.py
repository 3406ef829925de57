"""Payload logging: a sample of what the model saw and answered, as Parquet beside the reports.

Per window, ``monitoring/payloads/<window-id>.parquet``, one row per sampled chip: when, the request
id, the model version, the chip's shape and band names, its per-band means, the model's output for
it, and its feature values (float32, little-endian, row-major) only while they fit ``max_bytes``
(else ``values`` is null and ``truncated`` true). Nothing else of the request is kept: no headers,
no client addresses, no credentials. The sample is random (``rate`` of the chips) and bounded
(``max_records`` per window), so a drifted window can be inspected later at a bounded cost.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from earthops.core.monitoring import monitoring_prefix
from earthops.core.store import Store

DEFAULT_RATE = 0.05
DEFAULT_MAX_BYTES = 256 * 1024
DEFAULT_MAX_RECORDS = 500


@dataclass(frozen=True)
class PayloadSettings:
    """How much to keep: ``rate`` of the chips (0-1], at most ``max_records`` per window, values of
    a chip only up to ``max_bytes``."""

    rate: float = DEFAULT_RATE
    max_bytes: int = DEFAULT_MAX_BYTES
    max_records: int = DEFAULT_MAX_RECORDS

    def __post_init__(self) -> None:
        if not 0 < self.rate <= 1:
            raise ValueError(f"payload sample rate {self.rate}: expected a share in (0, 1]")
        if self.max_bytes < 0:
            raise ValueError(f"payload max bytes {self.max_bytes}: expected 0 or more")
        if self.max_records < 1:
            raise ValueError(f"payload max records {self.max_records}: expected at least 1")


def payload_key(namespace: str, name: str, window_id: str) -> str:
    return f"{monitoring_prefix(namespace, name)}/payloads/{window_id}.parquet"


class PayloadLog:
    """The sampled records of the current window (see the module docstring)."""

    def __init__(self, settings: PayloadSettings, seed: int = 0):
        self.settings = settings
        self.records: list[dict[str, Any]] = []
        self._rng = np.random.default_rng(seed)

    def add(self, batch: Any) -> None:
        """Sample chips of an observed batch (``features``, ``outputs``, names, ``request_id``)."""
        room = self.settings.max_records - len(self.records)
        n = int(batch.features.shape[0])
        if room <= 0 or n == 0:
            return
        picked = np.flatnonzero(self._rng.random(n) < self.settings.rate)[:room]
        now = datetime.now(UTC).isoformat()
        for i in picked.tolist():
            chip = np.asarray(batch.features[i], np.float32)
            raw = chip.astype("<f4").tobytes()
            fits = len(raw) <= self.settings.max_bytes
            with np.errstate(invalid="ignore"):
                means = np.nanmean(chip.reshape(chip.shape[0], -1), axis=1)
            self.records.append({
                "time": now, "request_id": batch.request_id, "model": batch.model_name,
                "model_version": batch.model_version, "chip": i, "shape": list(chip.shape),
                "bands": list(batch.feature_names), "band_means": [float(m) for m in means],
                "output": np.asarray(batch.outputs[i], np.float32).reshape(-1).tolist(),
                "classes": list(batch.class_names), "values": raw if fits else None, "truncated": not fits,
            })

    def flush(self, store: Store, namespace: str, name: str, window_id: str) -> str | None:
        """Write the window's records (if any) as Parquet and start afresh; returns the key written."""
        if not self.records:
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(self.records)
        buffer = io.BytesIO()
        pq.write_table(table, buffer, compression="zstd")
        key = payload_key(namespace, name, window_id)
        store.write_bytes(key, buffer.getvalue())
        self.records = []
        return key


__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_MAX_RECORDS", "DEFAULT_RATE", "PayloadLog", "PayloadSettings", "payload_key"]
