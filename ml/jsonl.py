"""Reading a JSON-lines log while another process appends to it (`metrics.jsonl`).

Shared by the seed ensemble, which relays its members' logs (`ml.ensemble`), and the web
platform's training worker, which streams a run's log to its page. No torch: the web process
imports it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class JsonlTail:
    """Reads the complete lines appended to a JSON-lines file since the last call; a line
    still being written (no newline yet) waits for the next call."""

    path: Path
    offset: int = 0
    _partial: bytes = field(default=b"", repr=False)

    def read(self) -> list[dict]:
        try:
            with self.path.open("rb") as f:
                if os.fstat(f.fileno()).st_size < self.offset:  # replaced: start again
                    self.offset, self._partial = 0, b""
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        events = []
        for line in lines:
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn line from a killed writer: skip it
        return events
