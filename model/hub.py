"""The Hugging Face hub, in one place: a repo's files, from the hub or from the local cache.

huggingface_hub honours HF_HOME, HF_HUB_CACHE, HF_TOKEN and HF_HUB_OFFLINE like every other
Hugging Face tool. It reads the last two folders and the offline switch once, at import; they
are read again here at every call, so a value set later in the same process (a notebook cell,
a test) still counts. Every failure is one UserError that names the repo and what to do.
"""

import os
from pathlib import Path

from model.errors import UserError

OFFLINE_VALUES = ("1", "ON", "YES", "TRUE")


def offline() -> bool:
    """HF_HUB_OFFLINE as it is set now."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in OFFLINE_VALUES


def cache_dir() -> str | None:
    """HF_HUB_CACHE, else HF_HOME/hub, else None (huggingface_hub's own default)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


def download(repo_id: str, patterns: list[str], *, repo_type: str = "model",
             instead: str = "pass a local folder instead") -> Path:
    """The folder holding repo_id's files that match `patterns` (downloaded once, then cached).
    `instead` ends every error message: what the user can pass in place of the repo."""
    what = f"dataset {repo_id!r}" if repo_type == "dataset" else repr(repo_id)
    try:
        import huggingface_hub
        from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                            OfflineModeIsEnabled, RepositoryNotFoundError)
    except ImportError:
        raise UserError(f"{what}: fetching it needs huggingface_hub (pip install huggingface_hub); "
                        f"{instead}") from None
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id, repo_type=repo_type, allow_patterns=patterns, cache_dir=cache_dir(),
            local_files_only=offline())
    except GatedRepoError:
        raise UserError(f"{what}: this repo is gated; accept its licence on the hub and log in "
                        f"(`hf auth login` or HF_TOKEN), or {instead}") from None
    except RepositoryNotFoundError:
        raise UserError(f"{what}: no such repo on the hub (or it is private: set HF_TOKEN); "
                        f"check the name or {instead}") from None
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE is set" if offline() else "the hub cannot be reached"
        raise UserError(f"{what}: not available offline ({why} and it is not in the cache under "
                        f"HF_HOME); download it once while online, or {instead}") from None
    except HfHubHTTPError as e:
        raise UserError(f"{what}: the hub refused it ({e}); {instead}") from None
    except (ValueError, OSError) as e:          # a malformed id, a full disk, ...
        raise UserError(f"{what}: cannot fetch it from the hub ({type(e).__name__}: {e}); "
                        f"{instead}") from None
    return Path(folder)
