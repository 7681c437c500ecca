"""Copying images, split the way containers/image splits its copy package:

    options.py    CopyOptions: what a run asks of each copy, and its encoding as task kwargs
    clients.py    ClientPool, Clients: the registry clients every copy of a process shares
    image.py      copy_image(): the order of one copy, the index walk, the ledger's names
    blobs.py      the blobs of an image: skip, mount, or stream (chunked when large)
    referrers.py  signatures, SBOMs and attestations found and copied after their image

The package knows the order of a copy and nothing about Celery or the executors around it.
"""

from migrator.copy.blobs import ByteCounter
from migrator.copy.clients import ClientPool, Clients
from migrator.copy.image import (
    MAX_INDEX_DEPTH,
    CopyResult,
    copy_image,
    is_immutable,
    synced_immutable,
    target_key,
    unchanged_on_record,
)
from migrator.copy.options import CopyOptions
from migrator.ledger import ReadOnlyLedger  # importable from here before it moved

__all__ = [
    "MAX_INDEX_DEPTH",
    "ByteCounter",
    "ClientPool",
    "Clients",
    "CopyOptions",
    "CopyResult",
    "ReadOnlyLedger",
    "copy_image",
    "is_immutable",
    "synced_immutable",
    "target_key",
    "unchanged_on_record",
]
