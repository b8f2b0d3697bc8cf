"""New Git objects kept in memory, readable at once, and written to the clone as one pack.

Why: one commit per change rewrites the changed file's folder tree, about 42 bytes per entry.
Written as a zlib-compressed loose object, a 10,000-entry folder costs several milliseconds per
commit in compression and file creation alone, which caps a clone at about a hundred commits per
second. Here a commit costs hashing its objects and compressing its blob (kept compressed, as
the pack will hold it); a tree that already has a version in memory is kept as a Git delta
against that version (a few dozen bytes for a one-file change), so memory stays small however
large the folder, and :meth:`ObjectStore.flush` writes what is pending as one pack in which
those trees are ``OFS_DELTA`` entries.

Guarantees:

- Every object added is readable through the repository at once: the store is an object
  database backend of that ``pygit2.Repository``, so walks, diffs and lookups see pending
  objects like any other.
- Nothing is durable before :meth:`ObjectStore.flush` returns. The caller must not let a ref on
  disk point at a pending object before that; a process killed earlier loses the pending
  objects and nothing else (the refs on disk still name objects on disk). The store also
  flushes by itself once :data:`SPILL_BYTES` of blobs wait: everything pending (a commit's
  objects may then span two packs), and never a ref.
- :meth:`ObjectStore.flush` writes the pack and its index to temporary files, fsyncs both,
  then renames them into ``objects/pack`` (pack first, index last: readers find packs by their
  index) and fsyncs the directory, so a pack is either complete or not seen by readers.
- Delta chains are at most :data:`DELTA_DEPTH` long, and every base is in the same pack.
- **The packs a push sends.** Once told (:meth:`ObjectStore.mark_sent`) that the remote has
  everything flushed so far, the store keeps every pack it writes open until the next
  :meth:`~ObjectStore.mark_sent`, and adds no object a pack so kept already holds. Those packs
  together (:meth:`ObjectStore.unsent_packs`) hold every object the store was given since, each
  exactly once, so :func:`joined_pack` can make them one pack for a push without searching
  deltas again. They stay readable while open even if ``git repack`` or ``git gc`` deletes
  their files. Past :data:`UNSENT_PACK_LIMIT` packs or :data:`UNSENT_OBJECT_LIMIT` objects (a
  long outage) the store stops keeping them, and says so (``unsent_packs()`` is None) until the
  next ``mark_sent``.

Trees are serialised exactly as Git does (entries sorted by name, a folder's name compared as
if it ended in ``/``), so object IDs equal those libgit2 or Git compute for the same content.
"""

from __future__ import annotations

import bisect
import collections
import hashlib
import os
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import pygit2
from pygit2.enums import ObjectType

if TYPE_CHECKING:
    from reverserd.git.signing import CommitSigner

DELTA_DEPTH = 50
"""Longest chain of deltas before a tree is stored whole again: Git's own default
``pack.depth``. Reading the newest version of a tree applies at most this many deltas."""

PACK_COMPRESSION = 1
"""zlib level for the local pack. A push over smart HTTP sends its entries as they are, and the
server keeps them so until it repacks with ``-F``; Git's own pushes and ``git gc`` reuse them
too, so this is what the repository keeps; the commit path's speed matters more here than the
last few percent of size."""

STORED_BELOW = 512
"""Tree deltas shorter than this (a one-file change makes a few dozen bytes per tree on the
folder's path) go into the pack as zlib streams of one stored block: deflate would save a byte
or two of each, and setting up its state (256 KiB, zeroed) costs about 19 us a delta, several
per commit. Commits and files are compressed whatever their size: what they would gain stays
in the repository's packs for good."""

TREE_CACHE_ENTRIES = 120_000
"""Parsed tree entries kept for trees written recently or read to be changed. A version that a
change has edited leaves the cache as its successor enters (the delta between them is its last
use; pending objects are never read back before the flush writes them), so the cache holds
current versions: every folder of a 100,000-object tree spread over 100 folders, or twelve
10,000-file folders, and a change never re-parses the tree it edits. While edited versions
stayed until the least recently used went, at 100,000 files in 100 folders they pushed current
ones out, and a change re-parsed its folder, or rebuilt it from its chain of deltas, most of
the time: 1.9-2.1 ms of CPU per commit to apply, 0.46 ms with 300,000 entries."""

SPILL_BYTES = 32 * 2**20
"""Compressed blobs the store holds before it writes what is pending as a pack of its own,
without waiting for :meth:`ObjectStore.flush`: a reconcile of 100,000 files then keeps a few
megabytes of them in memory, not all. Objects only, never a ref, so nothing a crash could
leave behind points at anything missing."""

UNSENT_PACK_LIMIT = 64
"""Packs written since the last push that the store keeps open for the next one: one or two
per push normally (the push's flush, and a spill during a reconcile). More means pushes have
been failing for long; the open files would hold disk space that ``git repack`` freed, so the
store lets them go and the next push finds its objects itself (libgit2's pack builder)."""

UNSENT_OBJECT_LIMIT = 250_000
"""Objects in the kept packs the store remembers by ID (about 85 bytes each, so at most about
21 MB), to write none twice before a push. A push carries a few thousand normally, a reconcile
of 100,000 files about 100,000; an outage of an hour at 200 commits per second would be nearly
three million, so past this bound the store lets the packs go, as past
:data:`UNSENT_PACK_LIMIT`."""

PACK_CHUNK = 64 * 2**10
"""Bytes of pack one piece of :func:`joined_pack` carries: what is read from disk at a time,
and how often a push asks its fence (``reverserd.git.smart_http``)."""

_BACKEND_PRIORITY = 0
"""libgit2 asks backends in descending priority: the clone's own packs (2) and loose objects
(1) come first, so reads of objects on disk pay no Python call. Every backend is asked before
libgit2 rescans the pack directory, so pending objects are found on the first pass."""

_OFS_DELTA = 6
_TREE_MODE = 0o40000
_FILE_MODES = frozenset({0o100644, 0o100755})
_MAX_INSERT = 0x7F
_MAX_COPY = 0xFFFFFF
_LARGE_OFFSET = 0x80000000


@dataclass(slots=True)
class _Pending:
    kind: int
    size: int
    data: bytes | None
    """Whole content, or None when the object is kept compressed or as a delta."""
    base: bytes | None = None
    delta: bytes = b""
    depth: int = 0
    packed: bytes | None = None
    """A blob's content as its pack entry holds it (zlib at :data:`PACK_COMPRESSION`)."""


class Tree:
    """A tree's entries in Git order: ``keys`` to search, ``entries`` as serialised bytes."""

    __slots__ = ("entries", "keys", "size")

    def __init__(self, keys: list[bytes], entries: list[bytes], size: int) -> None:
        self.keys = keys
        self.entries = entries
        self.size = size

    @classmethod
    def parse(cls, raw: bytes) -> Tree:
        keys: list[bytes] = []
        entries: list[bytes] = []
        position = 0
        end = len(raw)
        while position < end:
            space = raw.index(b" ", position)
            nul = raw.index(b"\0", space)
            name = raw[space + 1 : nul]
            is_tree = raw[position:space] == b"40000"
            keys.append(name + b"/" if is_tree else name)
            entries.append(raw[position : nul + 21])
            position = nul + 21
        return cls(keys, entries, end)

    def __len__(self) -> int:
        return len(self.keys)

    def raw(self) -> bytes:
        return b"".join(self.entries)

    def lookup(self, name: bytes) -> tuple[int, bytes] | None:
        """(mode, 20-byte ID) of the entry called ``name``, file or folder, or None."""
        for key in (name, name + b"/"):
            index = bisect.bisect_left(self.keys, key)
            if index < len(self.keys) and self.keys[index] == key:
                entry = self.entries[index]
                return int(entry[: entry.index(b" ")], 8), entry[-20:]
        return None

    def edited(self, edits: Mapping[bytes, tuple[int, bytes] | None]) -> tuple[Tree, int, int]:
        """This tree with ``edits`` (name -> (mode, ID), or None to remove) applied.

        Returns the new tree and the span ``[first, end)`` of old entries that changed: entries
        before ``first`` and from ``end`` on are the same objects in both trees.
        """
        first = len(self.keys)
        end = 0
        for name in edits:
            for key in (name, name + b"/"):
                index = bisect.bisect_left(self.keys, key)
                found = index < len(self.keys) and self.keys[index] == key
                first = min(first, index)
                end = max(end, index + 1 if found else index)
        end = max(end, first)
        region = dict(zip(self.keys[first:end], self.entries[first:end], strict=True))
        for name, change in edits.items():
            region.pop(name, None)
            region.pop(name + b"/", None)
            if change is not None:
                mode, oid = change
                key = name + b"/" if mode == _TREE_MODE else name
                region[key] = b"%o %s\0%s" % (mode, name, oid)
        keys = sorted(region)
        middle = [region[key] for key in keys]
        removed = sum(map(len, self.entries[first:end]))
        added = sum(map(len, middle))
        tree = Tree(
            self.keys[:first] + keys + self.keys[end:],
            self.entries[:first] + middle + self.entries[end:],
            self.size - removed + added,
        )
        return tree, first, end


EMPTY_TREE = Tree([], [], 0)


class ObjectStore:
    """Pending objects of one clone; see the module docstring."""

    def __init__(self, repo: pygit2.Repository, objects_dir: Path) -> None:
        self._pack_dir = objects_dir / "pack"
        self._pending: dict[bytes, _Pending] = {}
        self._trees: collections.OrderedDict[bytes, Tree] = collections.OrderedDict()
        self._cached_entries = 0
        self._packed_bytes = 0
        self._unsent: list[BinaryIO] | None = None
        # IDs of the objects in self._unsent: never written a second time before a push, so
        # a joined pack holds each object once (``git index-pack --strict`` refuses twins).
        self._unsent_ids: set[bytes] = set()
        self.attach(repo)

    def attach(self, repo: pygit2.Repository) -> None:
        """Serve ``repo`` (again): after ``Repository.free()`` its object database is new,
        and libgit2 lets a backend belong to one object database only."""
        self._repo = repo
        repo.odb.add_backend(_Backend(self), _BACKEND_PRIORITY)

    # -- writing ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._pending)

    def add_blob(self, content: bytes) -> bytes:
        """Add a file's content; it is kept compressed, as the pack will hold it.

        Compressing here instead of in :meth:`flush` costs the same once, and a reconcile
        commit of 100,000 files then waits for its push in about a third of the memory.
        """
        oid = _hash(ObjectType.BLOB, content)
        if oid not in self._pending and oid not in self._unsent_ids:
            packed = zlib.compress(content, PACK_COMPRESSION)
            self._pending[oid] = _Pending(ObjectType.BLOB, len(content), None, packed=packed)
            self._packed_bytes += len(packed)
            if self._packed_bytes > SPILL_BYTES:
                self.flush()
        return oid

    def add_tree(self, tree: Tree, previous: bytes | None, span: tuple[int, int]) -> bytes:
        """Add ``tree``, an edit of the tree ``previous`` whose entries ``span`` changed."""
        raw = tree.raw()
        oid = _hash(ObjectType.TREE, raw)
        # Superseded: the next change edits the new version, and the delta below is the last
        # use of this one. Kept, it would push current versions of other folders out.
        old = self._trees.pop(previous, None) if previous is not None else None
        if old is not None:
            self._cached_entries -= len(old)
        self._remember(oid, tree)
        if oid in self._pending or oid in self._unsent_ids:
            return oid
        base = self._pending.get(previous) if previous is not None else None
        if base is not None and old is not None and base.depth < DELTA_DEPTH:
            delta = _delta(old, tree, raw, span)
            self._pending[oid] = _Pending(
                ObjectType.TREE, len(raw), None, previous, delta, base.depth + 1
            )
        else:
            self._pending[oid] = _Pending(ObjectType.TREE, len(raw), raw)
        return oid

    def add_commit(
        self,
        tree: bytes,
        parents: list[bytes],
        author: pygit2.Signature,
        committer: pygit2.Signature,
        message: str,
        signer: CommitSigner | None = None,
    ) -> bytes:
        """Add a commit; with ``signer``, it carries that signer's ``gpgsig`` header."""
        lines = [b"tree " + tree.hex().encode()]
        lines.extend(b"parent " + parent.hex().encode() for parent in parents)
        lines.append(b"author " + _signature(author))
        lines.append(b"committer " + _signature(committer))
        raw = b"\n".join(lines) + b"\n\n" + message.encode()
        if signer is not None:
            # Imported here: reverserd.git.signing imports cryptography, which a clone that
            # signs nothing never needs (the signer's own module has imported it already).
            from reverserd.git.signing import signed_commit

            raw = signed_commit(raw, signer.sign(raw))
        oid = _hash(ObjectType.COMMIT, raw)
        if oid not in self._unsent_ids:
            self._pending[oid] = _Pending(ObjectType.COMMIT, len(raw), raw)
        return oid

    def tree(self, oid: bytes) -> Tree:
        """The parsed tree ``oid`` (pending or on disk)."""
        cached = self._trees.get(oid)
        if cached is not None:
            self._trees.move_to_end(oid)
            return cached
        tree = Tree.parse(self._raw_object(oid, ObjectType.TREE))
        self._remember(oid, tree)
        return tree

    def blob(self, oid: bytes) -> bytes:
        """The content of blob ``oid`` (pending or on disk)."""
        return self._raw_object(oid, ObjectType.BLOB)

    def flush(self) -> None:
        """Write every pending object as one pack with its index, durably; see module doc."""
        if not self._pending:
            return
        self._pack_dir.mkdir(parents=True, exist_ok=True)

        def write(stream: BinaryIO) -> tuple[bytes, bytes | bytearray]:
            entries, checksum = self._write_pack(stream)
            return checksum, _index(entries, checksum)

        name = _publish_pack(self._pack_dir, write)
        if self._unsent is not None:
            kept = len(self._unsent_ids) + len(self._pending)
            if len(self._unsent) < UNSENT_PACK_LIMIT and kept <= UNSENT_OBJECT_LIMIT:
                self._unsent.append((self._pack_dir / f"{name}.pack").open("rb"))
                self._unsent_ids.update(self._pending)
            else:
                self.forget_sent()
        self._pending.clear()
        self._packed_bytes = 0

    def unsent_packs(self) -> list[BinaryIO] | None:
        """The packs written since :meth:`mark_sent`, oldest first, open for reading; None
        when the store does not know them all (see the module docstring)."""
        return list(self._unsent) if self._unsent is not None else None

    def mark_sent(self) -> None:
        """The remote has every object flushed so far: keep the packs written from now on."""
        self._close_unsent()
        self._unsent = []

    def forget_sent(self) -> None:
        """Stop keeping packs until the next :meth:`mark_sent`: which objects the remote lacks
        is no longer known for certain."""
        self._close_unsent()
        self._unsent = None

    def _close_unsent(self) -> None:
        for pack in self._unsent or ():
            pack.close()
        self._unsent_ids = set()

    # -- internals --------------------------------------------------------------------------

    def __contains__(self, key: bytes) -> bool:
        return key in self._pending

    def pending_ids(self) -> list[bytes]:
        return list(self._pending)

    def header(self, key: bytes) -> tuple[int, int]:
        found = self._pending.get(key)
        if found is None:
            raise KeyError(key.hex())
        return found.kind, found.size

    def kind(self, key: bytes) -> int:
        found = self._pending.get(key)
        if found is None:
            raise KeyError(key.hex())
        return found.kind

    def match_prefix(self, prefix: str) -> bytes:
        text = prefix.lower()
        if len(text) == 40:
            key = bytes.fromhex(text)
            if key in self._pending:
                return key
            raise KeyError(prefix)
        matches = [key for key in self._pending if key.hex().startswith(text)]
        if len(matches) != 1:
            raise KeyError(prefix)
        return matches[0]

    def content(self, key: bytes) -> bytes:
        found = self._pending[key]
        if found.data is not None:
            return found.data
        if found.packed is not None:
            return zlib.decompress(found.packed)
        cached = self._trees.get(key)
        if cached is not None:
            return cached.raw()
        assert found.base is not None
        return _apply_delta(self.content(found.base), found.delta)

    def _raw_object(self, oid: bytes, kind: int) -> bytes:
        if oid in self._pending:
            return self.content(oid)
        found_kind, data = self._repo.odb.read(pygit2.Oid(raw=oid))
        if found_kind != kind:
            raise ValueError(f"object {oid.hex()} is not of type {kind}")
        return bytes(data)

    def _remember(self, oid: bytes, tree: Tree) -> None:
        if oid in self._trees:
            self._trees.move_to_end(oid)
            return
        self._trees[oid] = tree
        self._cached_entries += len(tree)
        while self._cached_entries > TREE_CACHE_ENTRIES and len(self._trees) > 1:
            _, dropped = self._trees.popitem(last=False)
            self._cached_entries -= len(dropped)

    def _write_pack(self, stream: BinaryIO) -> tuple[list[tuple[bytes, int, int]], bytes]:
        """Write the pack to ``stream`` entry by entry (a 100,000-object pack is never held
        in memory whole); return (ID, CRC-32, offset) of each entry and the pack checksum."""
        digest = hashlib.sha1()
        header = b"PACK" + struct.pack(">II", 2, len(self._pending))
        stream.write(header)
        digest.update(header)
        position = len(header)
        offsets: dict[bytes, int] = {}
        entries: list[tuple[bytes, int, int]] = []
        for oid, found in self._pending.items():
            start = position
            if found.packed is not None:
                piece = _entry_header(found.kind, found.size) + found.packed
            elif found.data is None and found.base in offsets:
                assert found.base is not None
                header = _entry_header(_OFS_DELTA, len(found.delta))
                header += _negative_offset(start - offsets[found.base])
                piece = header + _delta_stream(found.delta)
            else:
                payload = self.content(oid)
                piece = _entry_header(found.kind, len(payload)) + zlib.compress(
                    payload, PACK_COMPRESSION
                )
            stream.write(piece)
            digest.update(piece)
            position += len(piece)
            offsets[oid] = start
            entries.append((oid, zlib.crc32(piece), start))
        checksum = digest.digest()
        stream.write(checksum)
        return entries, checksum


class _Backend(pygit2.OdbBackend):
    """The store as a libgit2 object database backend: pending objects only; a miss
    (``KeyError``) lets libgit2 look on disk."""

    def __init__(self, store: ObjectStore) -> None:
        super().__init__()
        self._store = store

    def read_cb(self, oid: pygit2.Oid) -> tuple[int, bytes]:
        key = oid.raw
        return self._store.kind(key), self._store.content(key)

    def read_prefix_cb(self, prefix: str) -> tuple[int, bytes, pygit2.Oid]:
        key = self._store.match_prefix(prefix)
        return self._store.kind(key), self._store.content(key), pygit2.Oid(raw=key)

    def read_header_cb(self, oid: pygit2.Oid) -> tuple[int, int]:
        return self._store.header(oid.raw)

    def exists_cb(self, oid: pygit2.Oid) -> bool:
        return oid.raw in self._store

    def exists_prefix_cb(self, prefix: str) -> pygit2.Oid:
        return pygit2.Oid(raw=self._store.match_prefix(prefix))

    def refresh_cb(self) -> None:
        return None

    def __iter__(self) -> Iterator[pygit2.Oid]:
        return iter([pygit2.Oid(raw=key) for key in self._store.pending_ids()])


def joined_pack(packs: Sequence[BinaryIO]) -> tuple[int, Iterator[bytes]]:
    """One pack holding the entries of ``packs``, each self-contained: its length in bytes,
    and its bytes in pieces of at most :data:`PACK_CHUNK` (the last piece is the checksum).

    An ``OFS_DELTA`` entry names its base by the distance back to it, which stays the same
    when a whole pack's entries are copied after another's, so the entries are copied as they
    are, under a new header and a new checksum: nothing is decompressed or searched again, and
    at most one piece is in memory at a time. Raises ``ValueError`` for a file that is not a
    version 2 pack.
    """
    spans: list[tuple[BinaryIO, int]] = []
    count = 0
    for pack in packs:
        header = os.pread(pack.fileno(), 12, 0)
        size = os.fstat(pack.fileno()).st_size
        if len(header) != 12 or header[:4] != b"PACK" or size < 32:
            raise ValueError(f"{pack.name} is not a pack")
        version, entries = struct.unpack(">II", header[4:])
        if version != 2:
            raise ValueError(f"{pack.name} is a version {version} pack")
        count += entries
        spans.append((pack, size - 20))
    length = 12 + sum(end - 12 for _, end in spans) + 20

    def pieces() -> Iterator[bytes]:
        header = b"PACK" + struct.pack(">II", 2, count)
        digest = hashlib.sha1(header)
        yield header
        for pack, end in spans:
            position = 12
            while position < end:
                piece = os.pread(pack.fileno(), min(PACK_CHUNK, end - position), position)
                if not piece:
                    raise ValueError(f"{pack.name} was cut short")
                digest.update(piece)
                position += len(piece)
                yield piece
        yield digest.digest()

    return length, pieces()


def merge_small_packs(pack_dir: Path, factor: int) -> bool:
    """Merge the clone's smallest packs into one, as ``git repack -d --geometric=<factor>``
    chooses them, without decompressing or searching anything; False when it cannot, and the
    caller must let ``git repack`` do it.

    The merged pack is :func:`joined_pack` of the chosen ones, its index the union of theirs
    with the offsets moved (``git repack`` costs a ``git pack-objects`` of 24-56 MB and seconds
    of CPU: it rebuilds every tree version to search deltas again). Each object costs one
    32-byte record while the index is built. The pack is written and made durable as
    :meth:`ObjectStore.flush` writes one; only then are the merged packs deleted, index first,
    so a crash leaves at worst the same objects in two packs, which readers accept. Packs are
    left to ``git`` when any index is not version 2, a pack has a ``.keep`` or any other
    companion file (a bitmap, a reverse index), or an object is in two of the packs chosen (an
    index lists an object once).
    """
    packs: list[tuple[int, Path]] = []
    for pack in pack_dir.glob("pack-*.pack"):
        companions = {found.suffix for found in pack_dir.glob(f"{pack.stem}.*")}
        count = _index_count(pack.with_suffix(".idx"))
        if companions != {".pack", ".idx"} or count is None:
            return False
        packs.append((count, pack))
    packs.sort()
    chosen = _geometric_split([count for count, _ in packs], factor)
    if chosen < 2:
        return True
    records: list[bytes] = []
    files: list[BinaryIO] = []
    try:
        shift = 0
        for _, pack in packs[:chosen]:
            stream = pack.open("rb")
            files.append(stream)
            if not _index_records(pack.with_suffix(".idx"), shift, records):
                return False
            shift += os.fstat(stream.fileno()).st_size - 32
        records.sort()
        if any(records[i][:20] == records[i - 1][:20] for i in range(1, len(records))):
            return False
        _, pieces = joined_pack(files)

        def write(out: BinaryIO) -> tuple[bytes, bytes | bytearray]:
            checksum = b""
            for piece in pieces:
                out.write(piece)
                checksum = piece
            return checksum, _index_of_records(records, checksum)

        name = _publish_pack(pack_dir, write)
    finally:
        for opened in files:
            opened.close()
    for _, pack in packs[:chosen]:
        if pack.stem != name:
            pack.with_suffix(".idx").unlink(missing_ok=True)
            pack.unlink(missing_ok=True)
    _fsync_directory(pack_dir)
    return True


def _geometric_split(counts: list[int], factor: int) -> int:
    """How many of the packs with object ``counts`` (ascending) to merge so that the merged
    pack and those left form a progression in which each holds at least ``factor`` times the
    objects of the next smaller one: ``git repack --geometric``'s choice."""
    split = len(counts) - 1
    while split > 0 and counts[split] >= factor * counts[split - 1]:
        split -= 1
    if split == 0:
        return 0
    split += 1
    total = sum(counts[:split])
    while split < len(counts) and counts[split] < factor * total:
        total += counts[split]
        split += 1
    return split


_IDX_HEADER = b"\377tOc" + struct.pack(">I", 2)
_IDX_TABLES = 8 + 256 * 4


def _index_count(path: Path) -> int | None:
    """Objects in a version 2 pack index (its last fan-out entry), or None for any other."""
    try:
        with path.open("rb") as stream:
            head = stream.read(_IDX_TABLES)
    except OSError:
        return None
    if len(head) != _IDX_TABLES or head[:8] != _IDX_HEADER:
        return None
    count: int = struct.unpack_from(">I", head, _IDX_TABLES - 4)[0]
    return count


def _index_records(path: Path, shift: int, records: list[bytes]) -> bool:
    """Append one record per object of a version 2 pack index to ``records``: its ID, CRC-32
    and offset plus ``shift`` (20 + 4 + 8 bytes, so that records sort by ID); False if the
    index cannot be read as one."""
    count = _index_count(path)
    if count is None:
        return False
    try:
        data = path.read_bytes()
    except OSError:
        return False
    crcs = _IDX_TABLES + 20 * count
    offsets = crcs + 4 * count
    large = offsets + 4 * count
    if len(data) < large + 40:
        return False
    for number, (offset,) in enumerate(struct.iter_unpack(">I", data[offsets:large])):
        if offset & _LARGE_OFFSET:
            (offset,) = struct.unpack_from(">Q", data, large + 8 * (offset & ~_LARGE_OFFSET))
        oid = data[_IDX_TABLES + 20 * number : _IDX_TABLES + 20 * number + 20]
        crc = data[crcs + 4 * number : crcs + 4 * number + 4]
        records.append(oid + crc + struct.pack(">Q", offset + shift))
    return True


def _index_of_records(records: list[bytes], pack_checksum: bytes) -> bytearray:
    """A version 2 pack index of ``records`` (see :func:`_index_records`), sorted by ID."""
    fanout = [0] * 256
    for record in records:
        fanout[record[0]] += 1
    total = 0
    for byte in range(256):
        total += fanout[byte]
        fanout[byte] = total
    # Appended piece by piece: a list of every ID first would double what the records cost.
    out = bytearray(_IDX_HEADER)
    out += struct.pack(">256I", *fanout)
    for record in records:
        out += record[:20]
    for record in records:
        out += record[20:24]
    large = bytearray()
    for record in records:
        (offset,) = struct.unpack_from(">Q", record, 24)
        if offset < _LARGE_OFFSET:
            out += struct.pack(">I", offset)
        else:
            out += struct.pack(">I", _LARGE_OFFSET | len(large) // 8)
            large += record[24:]
    out += large
    out += pack_checksum
    out += hashlib.sha1(out).digest()
    return out


def _hash(kind: int, content: bytes) -> bytes:
    name = {ObjectType.BLOB: b"blob", ObjectType.TREE: b"tree", ObjectType.COMMIT: b"commit"}
    digest = hashlib.sha1(b"%s %d\0" % (name[ObjectType(kind)], len(content)))
    digest.update(content)
    return digest.digest()


def _signature(signature: pygit2.Signature) -> bytes:
    offset = signature.offset
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset), 60)
    when = f"{signature.time} {sign}{hours:02d}{minutes:02d}"
    return f"{signature.name} <{signature.email}> {when}".encode()


def _delta_stream(payload: bytes) -> bytes:
    """A tree delta as the zlib stream its pack entry holds; see :data:`STORED_BELOW`."""
    if len(payload) >= STORED_BELOW:
        return zlib.compress(payload, PACK_COMPRESSION)
    size = len(payload)
    # A zlib header (deflate, 32 KiB window, no dictionary), one final stored block, Adler-32.
    return (
        b"\x78\x01\x01"
        + struct.pack("<HH", size, size ^ 0xFFFF)
        + payload
        + struct.pack(">I", zlib.adler32(payload))
    )


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _delta(old: Tree, new: Tree, new_raw: bytes, span: tuple[int, int]) -> bytes:
    """A Git delta turning ``old`` into ``new``: copy the unchanged head and tail, insert the
    middle. ``span`` is the range of old entries that changed (see :meth:`Tree.edited`)."""
    first, end = span
    head = sum(map(len, old.entries[:first]))
    tail = old.size - head - sum(map(len, old.entries[first:end]))
    middle = new_raw[head : len(new_raw) - tail]
    out = bytearray(_varint(old.size) + _varint(len(new_raw)))
    _copy(out, 0, head)
    for start in range(0, len(middle), _MAX_INSERT):
        chunk = middle[start : start + _MAX_INSERT]
        out.append(len(chunk))
        out += chunk
    _copy(out, old.size - tail, tail)
    return bytes(out)


def _copy(out: bytearray, offset: int, size: int) -> None:
    while size > 0:
        step = min(size, _MAX_COPY)
        opcode = 0x80
        arguments = bytearray()
        for shift in range(4):
            byte = (offset >> (8 * shift)) & 0xFF
            if byte:
                opcode |= 1 << shift
                arguments.append(byte)
        for shift in range(3):
            byte = (step >> (8 * shift)) & 0xFF
            if byte:
                opcode |= 0x10 << shift
                arguments.append(byte)
        out.append(opcode)
        out += arguments
        offset += step
        size -= step


def _apply_delta(base: bytes, delta: bytes) -> bytes:
    position = 0
    for _ in range(2):
        while delta[position] & 0x80:
            position += 1
        position += 1
    out = bytearray()
    while position < len(delta):
        opcode = delta[position]
        position += 1
        if opcode & 0x80:
            offset = size = 0
            for shift in range(4):
                if opcode & (1 << shift):
                    offset |= delta[position] << (8 * shift)
                    position += 1
            for shift in range(3):
                if opcode & (0x10 << shift):
                    size |= delta[position] << (8 * shift)
                    position += 1
            out += base[offset : offset + (size or 0x10000)]
        else:
            out += delta[position : position + opcode]
            position += opcode
    return bytes(out)


def _entry_header(kind: int, size: int) -> bytes:
    out = bytearray()
    byte = (kind << 4) | (size & 0x0F)
    size >>= 4
    while size:
        out.append(byte | 0x80)
        byte = size & 0x7F
        size >>= 7
    out.append(byte)
    return bytes(out)


def _negative_offset(distance: int) -> bytes:
    out = [distance & 0x7F]
    distance >>= 7
    while distance:
        distance -= 1
        out.append(0x80 | (distance & 0x7F))
        distance >>= 7
    return bytes(reversed(out))


def _index(entries: list[tuple[bytes, int, int]], pack_checksum: bytes) -> bytearray:
    """A version 2 pack index for ``entries`` (ID, CRC-32, offset)."""
    records = sorted(oid + struct.pack(">IQ", crc, offset) for oid, crc, offset in entries)
    return _index_of_records(records, pack_checksum)


def _publish_pack(
    pack_dir: Path, write: Callable[[BinaryIO], tuple[bytes, bytes | bytearray]]
) -> str:
    """Make a pack and its index durable and visible; returns its name (``pack-<checksum>``).

    ``write`` writes the pack to the stream it is given and returns its checksum and its index.
    Both go to temporary files that are fsynced before either gets its name, the pack first
    (readers find packs by their index), and then the directory is fsynced: only a crash between
    the two renames can leave a pack without its index, which readers skip.
    """
    temporaries: list[Path] = []
    try:
        pack_file = _temporary(pack_dir, temporaries)
        with pack_file.open("wb") as stream:
            checksum, index = write(stream)
            stream.flush()
            os.fsync(stream.fileno())
        index_file = _temporary(pack_dir, temporaries)
        with index_file.open("wb") as stream:
            stream.write(index)
            stream.flush()
            os.fsync(stream.fileno())
        name = f"pack-{checksum.hex()}"
        for temporary, suffix in ((pack_file, ".pack"), (index_file, ".idx")):
            temporary.chmod(0o444)
            os.replace(temporary, pack_dir / f"{name}{suffix}")
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)
    _fsync_directory(pack_dir)
    return name


def _temporary(directory: Path, created: list[Path]) -> Path:
    """A new empty file in ``directory``, recorded in ``created`` for clean-up."""
    descriptor, name = tempfile.mkstemp(dir=directory, prefix="tmp_pack_")
    os.close(descriptor)
    path = Path(name)
    created.append(path)
    return path


def _fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
