"""`--push-to-hub REPO` of `peftkit export` and `peftkit merge`: publish the folder they wrote.

    check_push(repo)           before any work: a repo id, a token, not offline (exit 2 otherwise)
    push_folder(folder, repo)  after the folder is written: its weights checked against SHA256SUMS,
                               then huggingface_hub's create_repo(exist_ok) + upload_folder

Everything about the Hub is huggingface_hub's: the token (HF_TOKEN, else `hf auth login`), the
endpoint (HF_ENDPOINT), Xet or LFS for the weight files. A failed upload never touches the local
folder; the error says how to push it again. Imports huggingface_hub only inside functions.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from peftkit import __version__, weight_files
from peftkit.errors import PeftkitError, UsageError
from peftkit.export.folder import MERGED, ONNX, read_meta
from peftkit.rundir import CHECKSUMS

LOGIN = "set HF_TOKEN to a token with write access, or run `hf auth login`"


def check_push(repo_id: str) -> None:
    """Refuse what cannot work before a merge spends minutes: checks that need no network."""
    from huggingface_hub import constants, get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        raise UsageError(f"--push-to-hub {repo_id!r}: not a repo id ({exc}); write it as "
                         "user/name or org/name") from None
    if constants.HF_HUB_OFFLINE:
        raise UsageError("--push-to-hub: HF_HUB_OFFLINE=1 forbids uploads; unset it to push")
    if get_token() is None:
        raise UsageError(f"--push-to-hub: no Hugging Face token found; {LOGIN}")


def push_folder(folder, repo_id: str, private: bool = False) -> str:
    """Upload `folder` as one commit to the model repo `repo_id` (created if missing); its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    weight_files.verify(folder, CHECKSUMS)  # never publish a weight file changed since it was written
    api = HfApi()
    kept = f"the folder is kept at {folder}; push it later with: hf upload {repo_id} {folder}"
    try:
        repo = api.create_repo(repo_id, private=private or None, exist_ok=True)
        message, description = commit_text(folder)
        info = api.upload_folder(repo_id=repo.repo_id, folder_path=folder,
                                 commit_message=message, commit_description=description)
    except HfHubHTTPError as exc:
        raise http_error(exc, repo_id, api.endpoint, kept) from None
    except transport_errors() as exc:
        raise PeftkitError(f"--push-to-hub: cannot reach {api.endpoint} ({type(exc).__name__}: "
                           f"{exc}); check the network or HF_ENDPOINT; {kept}") from None
    return info.commit_url


def http_error(exc, repo_id: str, endpoint: str, kept: str) -> PeftkitError:
    """Refused credentials are the user's to fix (exit 2); anything else the server's (exit 1)."""
    status = exc.response.status_code
    said = exc.server_message or str(exc).splitlines()[0]
    if status == 401:
        return UsageError(f"--push-to-hub: {endpoint} refused the token (401 Unauthorized: {said}); "
                          f"{LOGIN}; {kept}")
    if status == 403:
        return UsageError(f"--push-to-hub: the token may not write to {repo_id} (403 Forbidden: "
                          f"{said}); use a token with write access to that namespace; {kept}")
    return PeftkitError(f"--push-to-hub: {endpoint} answered {status} for {repo_id} ({said}); {kept}")


def transport_errors() -> tuple[type[Exception], ...]:
    """The HTTP client's own errors (connection refused, timeouts): huggingface_hub lets them
    through, and they are not OSErrors. httpx2 under huggingface_hub 2.x, httpx under 1.x."""
    for name in ("httpx2", "httpx"):
        try:
            return (importlib.import_module(name).TransportError,)
        except ImportError:
            continue
    return (OSError,)


def commit_text(folder: Path) -> tuple[str, str]:
    """Commit title and body naming the run(s) by folder name, as peftkit.json records them."""
    meta = read_meta(folder) or {}
    runs = [Path(s["run"]).name for s in meta.get("sources") or [] if s.get("run")] or [folder.name]
    what = {MERGED: "merged model", ONNX: "merged model (ONNX)"}.get(meta.get("kind"), "adapter")
    noun = "run" if len(runs) == 1 else "runs"
    title = f"peftkit {what} of {noun} {', '.join(runs)}"
    if meta.get("strategy"):
        title += f" ({meta['strategy']}, {meta.get('task')})"
    body = f"Uploaded by peftkit {__version__} from the folder {folder.name}."
    return title, body
