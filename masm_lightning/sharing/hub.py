"""The Hugging Face hub: upload an export folder, and resolve ``hf-hub:ORG/NAME`` to a local folder.

Both go through ``huggingface_hub`` (a timm dependency). Loading reads the hub's local cache first when
``HF_HUB_OFFLINE=1`` (the layout ``$HF_HUB_CACHE/models--ORG--NAME/snapshots/<sha>/`` with ``refs/main``), so a
model downloaded once keeps working without network. Without network, or without a cached copy, or without a
token for an upload, each fails at once with one line that says what to do (:class:`HubError`).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import first_line

__all__ = ["HUB_PREFIX", "HubError", "is_hub_id", "push_to_hub", "resolve"]

HUB_PREFIX = "hf-hub:"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_ETAG_TIMEOUT_S = 5.0  # a missing network is reported after seconds, not the client's default retries


class HubError(ValueError):
    """The hub could not be reached or holds no such model; the message is one line naming the repository."""


def is_hub_id(path: str | Path) -> bool:
    """Whether ``path`` is a hub reference (``hf-hub:ORG/NAME``)."""
    return str(path).startswith(HUB_PREFIX)


def _repo_id(repo: str) -> str:
    repo = repo.removeprefix(HUB_PREFIX)
    if not _REPO_ID.match(repo):
        raise HubError(f"hub repository {repo!r} is not of the form ORG/NAME (e.g. my-lab/masm-vitl14-ffpp)")
    return repo


def push_to_hub(folder: str | Path, repo: str, private: bool = False, token: str | None = None) -> str:
    """Upload an export folder (plain or adapter) to the hub model repository ``repo`` (created if absent).

    Returns:
        The repository's URL.

    Raises:
        HubError: a bad repository name, no token, or no connection (one line).
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, LocalTokenNotFoundError, OfflineModeIsEnabled

    repo_id = _repo_id(repo)
    folder = Path(folder)
    if not folder.is_dir():
        raise HubError(f"--push_to_hub: {str(folder)!r} is not a folder")
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            commit_message=f"masm_lightning export of {folder.name}",
        )
    except OfflineModeIsEnabled:
        raise HubError(f"cannot upload to {repo_id!r}: HF_HUB_OFFLINE=1 is set; unset it to upload") from None
    except LocalTokenNotFoundError:
        raise HubError(f"cannot upload to {repo_id!r}: not logged in (run `hf auth login` or set HF_TOKEN)") from None
    except (HfHubHTTPError, OSError) as error:  # HTTP refusals, no connection, DNS failures
        raise HubError(f"cannot upload to {repo_id!r}: {first_line(error, with_type=True)}") from None
    return str(url)


def resolve(reference: str) -> Path:
    """The local folder of ``hf-hub:ORG/NAME``: downloaded (or brought up to date), or read from the cache when
    ``HF_HUB_OFFLINE=1``.

    Raises:
        HubError: a bad name, no such repository, or no network and no cached copy (one line).
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    repo_id = _repo_id(reference)
    try:
        return Path(snapshot_download(repo_id, repo_type="model", etag_timeout=_ETAG_TIMEOUT_S))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled):
        raise HubError(
            f"{HUB_PREFIX}{repo_id}: no network access to the hub and no copy in the local cache "
            "(download it once with network, or point at a local folder)"
        ) from None
    except (HfHubHTTPError, OSError) as error:
        raise HubError(f"{HUB_PREFIX}{repo_id}: cannot download: {first_line(error, with_type=True)}") from None
