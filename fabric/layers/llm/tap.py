"""What one engine replica counts on its data path: its load (in-flight requests, busy
share) and, per response, the status, first-token time and usage the engine reported.
Pure: no Ray or Serve import, so its unit tests run without them."""

from __future__ import annotations

import json
import time


class LoadMeter:
    """In-flight generation requests and the share of time the engine had any (its
    utilisation, as a GPU's "busy" counter would report it)."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.inflight = 0
        self.requests = 0      # generation requests finished
        self.tokens_out = 0    # completion tokens they produced
        self.records: list[dict] = []  # usage records not yet acknowledged by the ledger
        self._busy = 0.0
        self._since = self._mark = clock()

    def _advance(self) -> None:
        now = self.clock()
        if self.inflight:
            self._busy += now - self._mark
        self._mark = now

    def start(self) -> None:
        self._advance()
        self.inflight += 1

    def finish(self, tokens_out: int = 0) -> None:
        self._advance()
        self.inflight -= 1
        self.requests += 1
        self.tokens_out += tokens_out

    def take_utilisation(self) -> float:
        """Busy share since the previous call."""
        self._advance()
        elapsed = self._mark - self._since
        util = self._busy / elapsed if elapsed > 0 else 0.0
        self._busy, self._since = 0.0, self._mark
        return min(1.0, util)


_CONTENT = b'"delta":{"content":"'
_EMPTY = b'"delta":{"content":""'


class TokenTap:
    """Watches one response's bytes: status, time to first token, and the usage the engine
    reports. Streams are made to report usage (``include_usage`` is added to the request when
    the client did not ask); the usage event is then removed before it reaches a client that
    did not ask for it. Without usage (an engine error mid-stream) completion tokens fall back
    to one per content delta. Byte searches per chunk, a JSON parse only on the usage event:
    this runs on the data path.
    """

    MAX_BODY = 8 * 2**20

    def __init__(self, strip_usage: bool = False, clock=time.perf_counter) -> None:
        self.strip_usage = strip_usage
        self.clock = clock
        self.status = 0
        self.streaming = False
        self.deltas = 0
        self.usage: dict | None = None
        self.first_token_at: float | None = None
        self._buf = bytearray()

    def start(self, message: dict) -> None:
        self.status = message.get("status", 0)
        for k, v in message.get("headers", []):
            if k.lower() == b"content-type":
                self.streaming = v.startswith(b"text/event-stream")

    def body(self, chunk: bytes) -> bytes:
        """Observe a body chunk; returns the bytes to send on (the usage event may be cut)."""
        if not self.streaming:
            if len(self._buf) < self.MAX_BODY:
                self._buf += chunk
            return chunk
        content = chunk.count(_CONTENT) - chunk.count(_EMPTY)
        if content > 0 and self.first_token_at is None:
            self.first_token_at = self.clock()
        self.deltas += content
        if b'"usage":{' in chunk:
            kept = []
            for event in chunk.split(b"\n\n"):
                if event.startswith(b"data: {") and b'"usage":{' in event:
                    try:
                        self.usage = json.loads(event[6:]).get("usage") or self.usage
                    except ValueError:
                        pass
                    if self.strip_usage and b'"choices":[]' in event:
                        continue
                kept.append(event)
            chunk = b"\n\n".join(kept)
        return chunk

    def finish(self) -> None:
        if not self.streaming and self._buf:
            try:
                self.usage = json.loads(self._buf).get("usage")
            except (ValueError, AttributeError):
                self.usage = None
            if self.first_token_at is None:
                self.first_token_at = self.clock()

    def completion_tokens(self) -> int:
        if self.usage:
            return int(self.usage.get("completion_tokens") or 0)
        return max(0, self.deltas) if self.streaming else 0

    def prompt_tokens(self) -> int:
        return int((self.usage or {}).get("prompt_tokens") or 0)

    def cached_tokens(self) -> int:
        details = (self.usage or {}).get("prompt_tokens_details") or {}
        return int(details.get("cached_tokens") or 0)
