"""``server`` settings (conf/server/default.yaml), one typed dataclass checked once."""

from __future__ import annotations

from dataclasses import dataclass

BATCHING = ("mixed", "off")


@dataclass
class ServerConfig:
    """Config key ``server``."""

    host: str = "127.0.0.1"
    """Address to listen on; 127.0.0.1 keeps the endpoint on this machine."""
    port: int = 8000
    """TCP port; 0 picks a free one (printed when ready)."""
    max_batch: int = 8
    """Requests decoded together in one batch, each row with its own adapter."""
    batching: str = "mixed"
    """``mixed``: rows routed to different skills share a batch; ``off``: one request at a time."""
    max_waiting: int = 64
    """Requests waiting for the decoder beyond the running batch; more are refused with 429."""
    max_body_bytes: int = 1_048_576
    """Request bodies larger than this are refused with 413."""
    max_tokens_limit: int = 512
    """Largest ``max_tokens`` a request may ask for."""
    watch_interval_s: float = 0.5
    """Seconds between scans of skills_dir for cards the learner published."""
    learner: bool = True
    """Start the background learner process."""
    learner_threads: int = 1
    """Torch threads of the learner process."""
    learner_nice: int = 10
    """Niceness added to the learner process (0 leaves it at the server's priority)."""
    events_kept: int = 50
    """Learning events kept in memory for the page."""

    def problems(self) -> list[str]:
        p = []
        if not 0 <= self.port <= 65535:
            p.append(f"server.port={self.port} must be in 0..65535 (0: any free port)")
        if self.batching not in BATCHING:
            p.append(f"server.batching={self.batching!r} must be one of {', '.join(BATCHING)}")
        for name in ("max_batch", "max_waiting", "max_body_bytes", "max_tokens_limit", "learner_threads",
                     "events_kept"):
            if getattr(self, name) < 1:
                p.append(f"server.{name}={getattr(self, name)} must be >= 1")
        if not self.watch_interval_s > 0:
            p.append(f"server.watch_interval_s={self.watch_interval_s} must be > 0")
        if not 0 <= self.learner_nice <= 19:
            p.append(f"server.learner_nice={self.learner_nice} must be in 0..19")
        return p
