"""QosWatchdog: a QoS mismatch is silent in ROS 2, so warn when a topic has had publishers for a while
but nothing arrived. Plain logic (counts and times in, warnings out), tested without DDS."""
from __future__ import annotations

from typing import Callable


class QosWatchdog:
    def __init__(self, topics: dict[str, tuple[str, str]], warn_after: float):
        """``topics``: key -> (topic name, subscription QoS)."""
        self.topics = topics
        self.warn_after = warn_after
        self.received = {k: 0 for k in topics}
        self.first_seen: dict[str, float] = {}
        self.warned: set[str] = set()

    def delivered(self, key: str) -> None:
        self.received[key] += 1

    def check(self, now: float, publishers: Callable[[str], int]) -> list[tuple[str, str]]:
        """(key, message) for each topic that has just crossed the threshold; each warned once."""
        out = []
        for key, (topic, qos) in self.topics.items():
            if self.received[key] or key in self.warned:
                continue
            count = publishers(topic)
            if not count:
                self.first_seen.pop(key, None)
                continue
            first = self.first_seen.setdefault(key, now)
            if now - first >= self.warn_after:
                self.warned.add(key)
                out.append((key, f"{topic} has {count} publisher(s) but no message arrived in "
                                 f"{self.warn_after:.0f} s: QoS mismatch? (this subscription is {qos}; a "
                                 "best_effort publisher cannot reach a reliable subscription)"))
        return out
