"""Token metering: usage records, the durable ledger, and reports over them."""

import os
from pathlib import Path


def default_ledger_path() -> Path:
    """The user's data directory (XDG), overridable with TOKEN_FABRIC_LEDGER."""
    if os.environ.get("TOKEN_FABRIC_LEDGER"):
        return Path(os.environ["TOKEN_FABRIC_LEDGER"])
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "token-fabric" / "ledger"
