"""Reading rosbag2 files (MCAP or sqlite3, a bag directory or a single file) with rosbags.

Message definitions embedded in the bag win; types the bag does not define come
from the chosen distro's typestore (default Kilted). A truncated file or a
corrupt message is reported with its place and the rest is kept.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from rosbags.interfaces import MessageDefinition, MessageDefinitionFormat
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from ..errors import BagError

log = logging.getLogger(__name__)

DISTROS = {"kilted": Stores.ROS2_KILTED, "jazzy": Stores.ROS2_JAZZY, "humble": Stores.ROS2_HUMBLE,
           "iron": Stores.ROS2_IRON, "foxy": Stores.ROS2_FOXY}


@dataclass
class BagMessage:
    topic: str
    msgtype: str
    time: float  # bag (receive) time, s
    index: int  # position in the merged stream
    raw: bytes


@dataclass
class BagProblems:
    """What could not be read; replay keeps going and the report lists these."""
    corrupt: list[str] = field(default_factory=list)  # "topic @ t: why"
    truncated: str = ""  # where reading stopped early, if it did


def typestore_for(distro: str):
    try:
        return get_typestore(DISTROS[distro.lower()])
    except KeyError:
        raise BagError(f"unknown ROS distro {distro!r} for the typestore; expected one of {sorted(DISTROS)}") \
            from None


class Bag:
    """An open rosbag2 recording: topics, types, messages in time order across split files."""

    def __init__(self, path: str | Path, distro: str = "kilted"):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        self.default_store = typestore_for(distro)
        self.problems = BagProblems()
        try:
            self.reader = Reader(self.path)
            self.reader.open()
        except Exception as e:  # ReaderError, OSError, or a storage plugin's own error on a cut-off file
            self.reader = SalvagedMcap.open(self.path)
            if self.reader is None:
                raise BagError(f"cannot open bag {self.path}: {type(e).__name__}: {e} (expected a rosbag2 "
                               "directory with metadata.yaml, or a .mcap / .db3 file)") from e
            kept = self.reader.message_count
            end = f" up to {self.reader.end_time:.6f} s" if kept else ""
            self.problems.truncated = (f"{self.reader.file.name} is truncated ({e}); kept the {kept} messages of "
                                       f"its complete chunks{end}")
            log.warning("bag %s: %s", self.path, self.problems.truncated)
        self.typestore, self.unknown_types = self._build_typestore()
        self.distro = self._recorded_distro()

    def _build_typestore(self):
        """Embedded definitions per connection where usable, else the distro's; the rest are unknown."""
        store = get_typestore(Stores.EMPTY)
        unknown: dict[str, str] = {}
        for c in self.reader.connections:
            if c.msgtype in store.fielddefs:
                continue
            types = {}
            data = c.msgdef.data if c.msgdef.format != MessageDefinitionFormat.NONE else ""
            try:
                if data.strip() and c.msgdef.format == MessageDefinitionFormat.MSG:
                    types = get_types_from_msg(data, c.msgtype)
                elif data.strip():
                    for part in data.split("=" * 80 + "\n"):
                        if part.strip():
                            types.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ")
                                                            else part))
                if c.msgtype in types:
                    store.register(types)
                    continue
            except Exception as e:  # a broken embedded definition: fall back to the distro's
                log.warning("bag %s: cannot parse the definition of %s (%s); using the %s typestore",
                            self.path, c.msgtype, e, self.default_store)
            if c.msgtype in self.default_store.fielddefs:
                store.register({k: v for k, v in self.default_store.fielddefs.items()
                                if k not in store.fielddefs})
            else:
                unknown[c.topic] = c.msgtype
        return store, unknown

    def _recorded_distro(self) -> str:
        return str(self.reader.ros_distro or "unknown")

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> "Bag":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def topics(self) -> dict[str, str]:
        return {c.topic: c.msgtype for c in self.reader.connections}

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.reader.connections:
            out[c.topic] = out.get(c.topic, 0) + int(c.msgcount)
        return out

    @property
    def message_count(self) -> int:
        return int(self.reader.message_count)

    def describe_topics(self) -> str:
        return ", ".join(f"{t} [{m}]" for t, m in sorted(self.topics.items())) or "(none)"

    def require(self, topic: str, msgtypes: tuple[str, ...], what: str) -> None:
        """Error naming the bag's topics when a topic the pipeline needs is missing or has a wrong type."""
        if topic not in self.topics:
            raise BagError(f"{what}: topic {topic!r} is not in bag {self.path}; the bag has: "
                           f"{self.describe_topics()}")
        if self.topics[topic] not in msgtypes:
            raise BagError(f"{what}: topic {topic!r} has type {self.topics[topic]}, expected one of {msgtypes}")
        if self.topics[topic] not in self.typestore.fielddefs:
            raise BagError(f"{what}: no definition for {self.topics[topic]} in the bag or the typestore")

    def messages(self, topics: set[str] | None = None) -> Iterator[BagMessage]:
        """Raw messages in bag-time order (split files merged); stops, noting where, on a truncated file."""
        conns = [c for c in self.reader.connections if topics is None or c.topic in topics]
        last = "the start"
        index = 0
        it = self.reader.messages(connections=conns)
        while True:
            try:
                conn, stamp, raw = next(it)
            except StopIteration:
                return
            except Exception as e:  # rosbags raises storage-specific errors on a cut-off file
                self.problems.truncated = f"reading stopped after {last}: {type(e).__name__}: {e}"
                log.warning("bag %s is truncated or corrupt; %s", self.path, self.problems.truncated)
                return
            last = f"message {index} ({conn.topic} at {stamp * 1e-9:.6f} s)"
            yield BagMessage(conn.topic, conn.msgtype, stamp * 1e-9, index, bytes(raw))
            index += 1

    def deserialize(self, msg: BagMessage) -> Any | None:
        """The message object, or None (counted in problems) when it cannot be decoded."""
        if msg.msgtype not in self.typestore.fielddefs:
            return None  # listed in unknown_types; replay never asks for such a topic
        try:
            return self.typestore.deserialize_cdr(msg.raw, msg.msgtype)
        except Exception as e:  # rosbags raises assorted errors on corrupt CDR
            self.problems.corrupt.append(f"{msg.topic} message {msg.index} at {msg.time:.6f} s: "
                                         f"{type(e).__name__}: {e}")
            return None


@dataclass
class _Connection:
    """The fields of a rosbags Connection that Bag uses."""
    topic: str
    msgtype: str
    msgdef: MessageDefinition
    msgcount: int = 0


class SalvagedMcap:
    """Records of an MCAP file whose summary is missing (recording cut off), read front to back.

    rosbags needs the summary section; the mcap library's stream reader does not,
    so every complete chunk before the cut is kept.
    """

    def __init__(self, file: Path):
        from mcap.exceptions import McapError
        from mcap.records import Channel, Message, Schema
        from mcap.stream_reader import StreamReader
        self.file = file
        self.ros_distro = None
        schemas: dict[int, Schema] = {}
        self.connections: list[_Connection] = []
        by_channel: dict[int, _Connection] = {}
        self._messages: list[tuple[_Connection, int, bytes]] = []
        self.error = ""
        with open(file, "rb") as f:
            try:
                for rec in StreamReader(f).records:
                    if isinstance(rec, Schema):
                        schemas[rec.id] = rec
                    elif isinstance(rec, Channel) and rec.schema_id in schemas:
                        sc = schemas[rec.schema_id]
                        fmt = MessageDefinitionFormat.IDL if sc.encoding == "ros2idl" else MessageDefinitionFormat.MSG
                        conn = _Connection(rec.topic, sc.name, MessageDefinition(fmt, sc.data.decode()))
                        by_channel[rec.id] = conn
                        self.connections.append(conn)
                    elif isinstance(rec, Message) and rec.channel_id in by_channel:
                        conn = by_channel[rec.channel_id]
                        conn.msgcount += 1
                        self._messages.append((conn, rec.log_time, bytes(rec.data)))
            except (McapError, EOFError, ValueError, struct.error) as e:
                self.error = f"{type(e).__name__}: {e}"
        self._messages.sort(key=lambda m: m[1])

    @classmethod
    def open(cls, path: Path) -> "SalvagedMcap | None":
        files = [path] if path.suffix == ".mcap" else sorted(path.glob("*.mcap")) if path.is_dir() else []
        if len(files) != 1:
            return None
        salvaged = cls(files[0])
        return salvaged if salvaged.connections else None

    @property
    def message_count(self) -> int:
        return len(self._messages)

    @property
    def end_time(self) -> float:
        return self._messages[-1][1] * 1e-9 if self._messages else 0.0

    def messages(self, connections):
        wanted = {id(c) for c in connections}
        return iter([m for m in self._messages if id(m[0]) in wanted])

    def close(self) -> None:
        self._messages.clear()
