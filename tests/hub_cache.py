"""A huggingface_hub cache laid out by hand, so hub specs resolve with nothing downloaded."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_repo(cache: Path, repo_id: str, folder: Path, revision: str = "main") -> Path:
    """Put ``folder``'s files into ``cache`` as huggingface_hub keeps a downloaded repo:

        models--ORG--NAME/blobs/<sha256>                      the file contents
        models--ORG--NAME/snapshots/<commit>/<file> -> blob   one folder per commit
        models--ORG--NAME/refs/<revision>                      the commit a branch or tag points to

    Returns the snapshot folder.
    """
    root = Path(cache) / f"models--{repo_id.replace('/', '--')}"
    files = sorted(p for p in Path(folder).rglob("*") if p.is_file())
    digest = hashlib.sha1(repo_id.encode() + revision.encode())
    for path in files:
        digest.update(path.read_bytes())
    commit = digest.hexdigest()  # 40 hex digits, like a git commit
    snapshot = root / "snapshots" / commit
    for path in files:
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / revision).write_text(commit)  # no newline, as huggingface_hub writes it
    return snapshot
