"""Where detcrop keeps what it can recompute: `$XDG_CACHE_HOME/detcrop/...`, else `~/.cache/detcrop/...`."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """`$XDG_CACHE_HOME/detcrop/<parts>`, else `~/.cache/detcrop/<parts>` (not created here)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base, "detcrop", *parts)
