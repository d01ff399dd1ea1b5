"""Actor constructor arguments kept where a restarted actor can read them again.

Ray puts a task argument over 100 KiB into the object store, owned by the caller; a detached,
restartable actor built from such an argument cannot restart once its caller is gone (here the
`fabric up` process, which exits). A spec of a few hundred sites passes that size. So the
scheduler and the Sites actor get a key, and read the spec behind it from the GCS key-value
store, which lives as long as the cluster.
"""

from __future__ import annotations

import hashlib

from fabric import internals

NAMESPACE = "fabric"
PREFIX = "blob:"


def put(text: str) -> str:
    """Store ``text``; returns its key (content-addressed: the same text, the same key)."""
    key = PREFIX + hashlib.sha256(text.encode()).hexdigest()[:32]
    internals.kv_put(key, text.encode(), NAMESPACE)
    return key


def get(key: str) -> str:
    """The text stored under ``key``; LookupError if the cluster has none (fabric stopped)."""
    value = internals.kv_get(key, NAMESPACE)
    if value is None:
        raise LookupError(f"{key!r} is not in the cluster's key-value store: the fabric that "
                          "stored it was stopped (run `fabric up` again)")
    return value.decode()


def clear(prefix: str = PREFIX) -> int:
    """Delete every stored blob (the fabric is stopping), or those whose key starts with
    ``prefix``; returns how many."""
    return internals.kv_del_prefix(prefix, NAMESPACE)
