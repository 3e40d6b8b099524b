"""Reading rosbag2 files (MCAP or sqlite3, a bag directory or a single file) with rosbags.

Message definitions embedded in the bag win; types the bag does not define come
from the chosen distro's typestore (default Kilted). A truncated file or a
corrupt message is reported with its place and the rest is kept.
"""
from __future__ import annotations

import contextlib
import logging
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml
from rosbags.interfaces import MessageDefinition, MessageDefinitionFormat
from rosbags.rosbag2 import Reader
from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

from ..errors import BagError
from ..ros.convert import normalize_msgtype

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


@dataclass(frozen=True)
class UnknownTopic:
    type: str  # a message type this distro's type store lacks (and the bag does not define)
    skipped: int  # its messages, none of which could be read


@dataclass
class BagProblems:
    """What could not be read; replay keeps going and the report lists these (one shape in every mode)."""
    corrupt: list[str] = field(default_factory=list)  # "topic @ t: why"
    truncated: str = ""  # where reading stopped early, if it did
    unknown_types: dict[str, UnknownTopic] = field(default_factory=dict)  # topic -> its type and skipped count


MCAP_MAGIC = b"\x89MCAP0\r\n"
STORAGE_IDS = {".mcap": "mcap", ".db3": "sqlite3"}


def storage_files(path: Path) -> list[Path]:
    """The rosbag2 storage files of a bag directory (a file is its own)."""
    if path.is_file():
        return [path]
    return sorted(f for f in path.iterdir() if f.suffix in STORAGE_IDS)


def mcap_complete(file: Path) -> bool:
    """An MCAP file that was closed properly ends with the magic bytes; a cut one does not.

    Raises BagError for a file that is no MCAP at all (no magic at its start).
    """
    with open(file, "rb") as f:
        if f.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
            raise BagError(f"cannot open bag {file}: not an MCAP file (it does not start with the MCAP magic)")
        if file.stat().st_size < 2 * len(MCAP_MAGIC):
            return False
        f.seek(-len(MCAP_MAGIC), 2)
        return f.read() == MCAP_MAGIC


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
        self._overlay: tempfile.TemporaryDirectory | None = None
        self.reader = self._open()
        self._require_cdr()
        self.typestore, self.unknown_types = self._build_typestore()
        self.distro = self._recorded_distro()

    # -- opening: say what is wrong with a bag, and call it truncated only when it is cut -------------
    def _open(self):
        files = storage_files(self.path)
        if self.path.is_file():
            return self._open_file(self.path)
        if not (self.path / "metadata.yaml").is_file():
            if len(files) == 1:
                log.warning("bag %s has no metadata.yaml; reading %s directly", self.path, files[0].name)
                return self._open_file(files[0])
            if files:
                raise BagError(f"bag {self.path} has {len(files)} storage files but no metadata.yaml (a split "
                               "recording): pass one of the files, or run `ros2 bag reindex "
                               f"{self.path}` to write its metadata.yaml")
            raise BagError(f"{self.path} is not a rosbag2 recording: no metadata.yaml and no .mcap / .db3 file")
        cut = [f for f in files if f.suffix == ".mcap" and not mcap_complete(f)]
        if len(files) == 1 and cut:
            return self._salvage(cut[0], "its end is missing")
        try:
            reader = Reader(self.path)
            reader.open()
            return reader
        except Exception as e:  # rosbags' ReaderError or a storage plugin's own error
            why = f"{type(e).__name__}: {e}".splitlines()[0]
            if "Serialization format" in why:
                raise BagError(f"bag {self.path}: {why.split(': ', 1)[1]} dp-replay decodes CDR (the rosbag2 "
                               "default) only; re-record with serialization format cdr") from e
            if len(files) == 1:
                log.warning("bag %s: metadata.yaml is not usable (%s); reading %s directly",
                            self.path, why, files[0].name)
                return self._open_file(files[0])
            if "Storage plugin ''" in why and files:
                return self._with_storage_identifier(files, why)
            raise BagError(f"cannot open bag {self.path}: {why}") from e

    def _open_file(self, file: Path):
        if file.suffix == ".mcap" and not mcap_complete(file):
            return self._salvage(file, "its end is missing")
        return self._reader(file)

    def _reader(self, path: Path):
        try:
            reader = Reader(path)
            reader.open()
            return reader
        except Exception as e:  # rosbags' ReaderError or a storage plugin's own error
            why = f"{type(e).__name__}: {e}".splitlines()[0]
            raise BagError(f"cannot open bag {path}: {why}") from e

    def _salvage(self, file: Path, why: str):
        """A cut MCAP: keep every complete chunk before the cut (rosbags needs the missing summary)."""
        reader = SalvagedMcap(file)
        if not reader.connections or not reader.message_count:
            raise BagError(f"{file} is truncated before its first complete chunk ({why}): no message can be "
                           "recovered from it")
        self.problems.truncated = (f"{file.name} is truncated ({why}); kept the {reader.message_count} messages "
                                   f"of its complete chunks up to {reader.end_time:.6f} s")
        log.warning("bag %s: %s", self.path, self.problems.truncated)
        return reader

    def _with_storage_identifier(self, files: list[Path], why: str):
        """Some rosbag2 writers leave storage_identifier empty: take it from the files' suffix."""
        ids = {STORAGE_IDS.get(f.suffix) for f in files}
        if len(ids) != 1 or None in ids:
            raise BagError(f"cannot open bag {self.path}: {why}")
        storage = ids.pop()
        log.warning("bag %s: metadata.yaml has an empty storage_identifier; reading its files as %s",
                    self.path, storage)
        meta = yaml.safe_load((self.path / "metadata.yaml").read_text())
        meta["rosbag2_bagfile_information"]["storage_identifier"] = storage
        self._overlay = tempfile.TemporaryDirectory(prefix="dp_replay_bag_")
        overlay = Path(self._overlay.name)
        for f in files:
            (overlay / f.name).symlink_to(f.resolve())
        (overlay / "metadata.yaml").write_text(yaml.safe_dump(meta))
        return self._reader(overlay)

    def _require_cdr(self) -> None:
        for c in self.reader.connections:
            fmt = getattr(getattr(c, "ext", None), "serialization_format", "cdr") or "cdr"
            if fmt != "cdr":
                raise BagError(f"bag {self.path}: topic {c.topic} is recorded with serialization format {fmt!r}; "
                               "dp-replay decodes CDR (the rosbag2 default) only")

    def _build_typestore(self):
        """Embedded definitions per connection where usable, else the distro's; the rest are unknown."""
        store = get_typestore(Stores.EMPTY)
        unknown: dict[str, str] = {}
        for c in self.reader.connections:
            msgtype = normalize_msgtype(c.msgtype)
            if msgtype in store.fielddefs:
                continue
            types = {}
            data = c.msgdef.data if c.msgdef.format != MessageDefinitionFormat.NONE else ""
            try:
                if data.strip() and c.msgdef.format == MessageDefinitionFormat.MSG:
                    types = get_types_from_msg(data, msgtype)
                elif data.strip():
                    for part in data.split("=" * 80 + "\n"):
                        if part.strip():
                            types.update(get_types_from_idl(part.split("\n", 1)[1] if part.startswith("IDL: ")
                                                            else part))
                if msgtype in types:
                    store.register(types)
                    continue
            except Exception as e:  # a broken embedded definition: fall back to the distro's
                first = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
                log.warning("bag %s: cannot parse the embedded definition of %s (%s); using the typestore's",
                            self.path, msgtype, first)
            if msgtype in self.default_store.fielddefs:
                store.register({k: v for k, v in self.default_store.fielddefs.items()
                                if k not in store.fielddefs})
            else:
                unknown[c.topic] = msgtype
        return store, unknown

    def _recorded_distro(self) -> str:
        return str(self.reader.ros_distro or "unknown")

    def close(self) -> None:
        self.reader.close()
        if self._overlay is not None:
            self._overlay.cleanup()

    def __enter__(self) -> "Bag":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def topics(self) -> dict[str, str]:
        return {c.topic: normalize_msgtype(c.msgtype) for c in self.reader.connections}

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for c in self.reader.connections:
            out[c.topic] = out.get(c.topic, 0) + int(c.msgcount)
        return out

    @property
    def message_count(self) -> int:
        return int(self.reader.message_count)

    def problems_found(self) -> BagProblems:
        """Everything that could not be read so far, unknown message types included."""
        return BagProblems(list(self.problems.corrupt), self.problems.truncated,
                           {t: UnknownTopic(m, self.counts.get(t, 0)) for t, m in self.unknown_types.items()})

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
                stopped = f"reading stopped after {last}: {type(e).__name__}: {e}"
                if stopped != self.problems.truncated:  # one warning per problem, however often it is read
                    self.problems.truncated = stopped
                    log.warning("bag %s is truncated or corrupt; %s", self.path, stopped)
                return
            last = f"message {index} ({conn.topic} at {stamp * 1e-9:.6f} s)"
            yield BagMessage(conn.topic, normalize_msgtype(conn.msgtype), stamp * 1e-9, index, bytes(raw))
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


def open_bag(bag: "str | Path | Bag", distro: str = "kilted"):
    """A context giving an open Bag: the caller's (left open) or one opened from a path (closed after)."""
    return contextlib.nullcontext(bag) if isinstance(bag, Bag) else Bag(bag, distro)
