"""Reading one segment YAML file safely: the one reader used by the DAG files, the config
check and the CLI.

A segment file is a few KB written by a person, and the DAG processor reads every one of them
at every parse, so one file must never be able to stop the others: it is refused (with a
message naming the file and, where there is one, the field) when it is not a regular file, is
larger than MAX_BYTES, is not UTF-8, nests deeper than MAX_DEPTH (libyaml's composer recurses
in C and segfaults at ~30,000 levels, killing the processor without an import error), repeats
a key (YAML keeps the last one silently), or uses anchors and aliases (exponential expansion,
and nothing a one-segment file needs).
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.events import (
    AliasEvent,
    CollectionStartEvent,
    DocumentStartEvent,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    StreamEndEvent,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES = 1 << 20
MAX_DEPTH = 32
_MERGE_TAG = "tag:yaml.org,2002:merge"


class UnreadableSegmentFile(ValueError):
    """The file cannot be a segment config; the message says why (and the field, if any)."""


def read_segment_yaml(path: Path) -> Any:
    """The file's YAML document as Python data, or UnreadableSegmentFile."""
    text = _read_text(path)
    loader = _SegmentLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        where = str(exc).replace('in "<unicode string>", ', "")  # the caller names the file
        raise UnreadableSegmentFile(f"invalid YAML: {where}") from None
    finally:
        loader.dispose()


def _read_text(path: Path) -> str:
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as exc:
        raise UnreadableSegmentFile(f"cannot open: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UnreadableSegmentFile("not a regular file (a device, FIFO or socket)")
        data = _read_at_most(fd, min(info.st_size, MAX_BYTES) + 1)
        if len(data) > info.st_size:  # it grew while read: read up to the cap, no further
            data += _read_at_most(fd, MAX_BYTES + 1 - len(data))
    finally:
        os.close(fd)
    if len(data) > MAX_BYTES:
        raise UnreadableSegmentFile(
            f"larger than {MAX_BYTES // 1024} KiB; a segment file is a few KB of YAML"
        )
    return _decode(data)


def _read_at_most(fd: int, size: int) -> bytes:
    chunks, left = [], size
    while left > 0 and (chunk := os.read(fd, left)):
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _decode(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UnreadableSegmentFile("saved as UTF-16 (or UTF-32); save it as UTF-8")
    try:
        text = data.decode("utf-8-sig")  # editors on Windows add a byte-order mark
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UnreadableSegmentFile(
            f"not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    if "\x00" in text:
        raise UnreadableSegmentFile("holds NUL bytes: not a text file")
    return text


_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: faster


class _SegmentLoader(_BaseLoader):
    """The safe loader with its composer replaced by an iterative one over parser events,
    which bounds depth and refuses repeated keys and aliases, naming the field."""

    def get_single_node(self) -> Node | None:
        self.get_event()  # stream start
        node = None
        if not self.check_event(StreamEndEvent):
            node = self._compose_document()
        if not self.check_event(StreamEndEvent):
            event = self.get_event()
            raise ComposerError(
                "expected a single document", None, "but found another", event.start_mark
            )
        self.get_event()
        return node

    def _compose_document(self) -> Node:
        start = self.get_event()
        assert isinstance(start, DocumentStartEvent)
        open_nodes: list[_Open] = []
        while True:
            event = self.get_event()
            if isinstance(event, (SequenceEndEvent, MappingEndEvent)):
                done = open_nodes.pop().node
                done.end_mark = event.end_mark
                if not open_nodes:
                    self.get_event()  # document end
                    return done
                continue
            if isinstance(event, AliasEvent) or getattr(event, "anchor", None):
                why = "anchors and aliases (&name, *name) are not supported"
                raise _refused(open_nodes, why, event, upcoming=True)
            node = self._node(event)
            if open_nodes:
                open_nodes[-1].add(node, event)
            if isinstance(node, ScalarNode) and "\x00" in node.value:
                # YAML's "\0" escape: no database column or log line takes a NUL.
                raise _refused(open_nodes, "holds a NUL character", event, child=True)
            if isinstance(event, CollectionStartEvent):
                if len(open_nodes) >= MAX_DEPTH:
                    raise _refused(open_nodes, f"nested deeper than {MAX_DEPTH} levels", event)
                open_nodes.append(_Open(node, open_nodes[-1].child_path if open_nodes else ()))
            elif not open_nodes:
                self.get_event()  # document end: the document is one scalar
                return node

    def _node(self, event) -> Node:
        tag = event.tag
        if isinstance(event, ScalarEvent):
            if tag is None or tag == "!":
                tag = self.resolve(ScalarNode, event.value, event.implicit)
            return ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
        kind = MappingNode if isinstance(event, MappingStartEvent) else SequenceNode
        if tag is None or tag == "!":
            tag = self.resolve(kind, None, event.implicit)
        return kind(tag, [], event.start_mark, None, flow_style=event.flow_style)


class _Open:
    """A mapping or sequence being composed, with its field path for error messages."""

    def __init__(self, node: Node, path: tuple[str, ...]) -> None:
        self.node, self.path = node, path
        self.key: Node | None = None  # a mapping's key waiting for its value
        self.keys: set[tuple[str, str]] = set()

    @property
    def child_path(self) -> tuple[str, ...]:
        if isinstance(self.node, SequenceNode):
            return (*self.path, str(len(self.node.value) - 1))
        return (*self.path, str(self.node.value[-1][0].value))

    def add(self, node: Node, event) -> None:
        if isinstance(self.node, SequenceNode):
            self.node.value.append(node)
            return
        if self.key is not None:
            self.node.value.append((self.key, node))
            self.key = None
            return
        if not isinstance(node, ScalarNode):
            raise _refused([self], "a key must be a plain value, not a list or mapping", event)
        if node.tag != _MERGE_TAG:
            if (node.tag, node.value) in self.keys:
                why = "appears twice (YAML would silently keep the last); keep one"
                raise _refused([self], why, event, node.value)
            self.keys.add((node.tag, node.value))
        self.key = node


def _refused(
    open_nodes: list[_Open],
    why: str,
    event,
    key: str | None = None,
    child: bool = False,
    upcoming: bool = False,
) -> UnreadableSegmentFile:
    """The error, naming the field being composed, or its `key`, its last `child`, or the
    `upcoming` one (not added yet)."""
    path = open_nodes[-1].path if open_nodes else ()
    if key is not None:
        path = (*path, key)
    elif upcoming and open_nodes:
        parent = open_nodes[-1]
        if isinstance(parent.node, SequenceNode):
            path = (*path, str(len(parent.node.value)))
        elif parent.key is not None:
            path = (*path, parent.key.value)
    elif child and open_nodes:
        parent = open_nodes[-1]
        if parent.key is None:  # a value or a list item (a bad key names its mapping only)
            path = parent.child_path
    where = f"field '{'.'.join(path)}': " if path else ""
    line = event.start_mark.line + 1
    return UnreadableSegmentFile(f"{where}{why} (line {line})")
