"""Outside services, asked on the launching host before any rank starts, in seconds: Weights & Biases and the
Hugging Face Hub. Neither may take a run down.

W&B: a run that would log online first asks the server who the key belongs to (and whether the entity exists), with
a short timeout; no route, a refused key or an unknown entity turn the run offline with one line saying why and how
to upload it later (`wandb sync`). wandb's own start waits up to 90 s and then raises in rank 0 mid-launch.

The Hub: a model or tokenizer named by a hub id must be in the local cache (HF_HOME honoured) or reachable; otherwise
the launch is refused with the ways out, instead of every rank failing after its imports.
"""
from __future__ import annotations

import base64
import json
import netrc
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from launcher.errors import LauncherError

PROBE_TIMEOUT_S = 5.0
WANDB_DEFAULT_URL = "https://api.wandb.ai"
# hub files that say a model or tokenizer is in the cache
MODEL_FILES = ("config.json",)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")
TRUE = ("1", "true", "yes", "on")


def wandb_key(environ: dict[str, str]) -> str:
    """WANDB_API_KEY, or what `wandb login` stored in ~/.netrc for the server."""
    if environ.get("WANDB_API_KEY"):
        return environ["WANDB_API_KEY"]
    host = urllib.parse.urlparse(environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_URL).hostname or ""
    try:
        auth = netrc.netrc(os.path.join(environ.get("HOME", os.path.expanduser("~")), ".netrc")).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return ""
    return auth[2] if auth and auth[2] else ""


def wandb_offline_reason(environ: dict[str, str], entity: str, timeout_s: float = PROBE_TIMEOUT_S) -> str:
    """Why W&B cannot log online from here ("" when it can): no route, a refused key, an unknown entity."""
    base = (environ.get("WANDB_BASE_URL") or WANDB_DEFAULT_URL).rstrip("/")
    key = wandb_key(environ)
    if not key:
        return "no API key (WANDB_API_KEY, or `wandb login` on this host)"
    query = "query Probe($e: String!) { viewer { id entity } entity(name: $e) { id } }"
    body = json.dumps({"query": query, "variables": {"e": entity or "-"}}).encode()
    auth = base64.b64encode(f"api:{key}".encode()).decode()
    request = urllib.request.Request(f"{base}/graphql", data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Basic {auth}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            data = json.loads(response.read() or b"{}").get("data") or {}
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            return f"{base} refused the API key (HTTP {err.code})"
        return f"{base} answered HTTP {err.code}"
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return f"no answer from {base} within {timeout_s:.0f} s ({reason})"
    if not data.get("viewer"):
        return f"{base} does not know the API key"
    if entity and not data.get("entity"):
        return f"{base} has no entity {entity!r} (logging.wandb.entity)"
    return ""


def _cached(repo_id: str, files: tuple[str, ...], cache_dir: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(repo_id, f, cache_dir=cache_dir), str) for f in files)


def hub_missing(repo_id: str, files: tuple[tuple[str, ...], ...], environ: dict[str, str]) -> str:
    """Why repo_id cannot be loaded here ("" when it can): every group of files is in the cache, or the Hub answers."""
    cache_dir = environ.get("HF_HUB_CACHE") or (os.path.join(environ["HF_HOME"], "hub") if environ.get("HF_HOME")
                                                  else None)
    if all(_cached(repo_id, group, cache_dir) for group in files):
        return ""
    where = cache_dir or os.path.join(environ.get("HF_HOME") or "~/.cache/huggingface", "hub")
    if environ.get("HF_HUB_OFFLINE", "").lower() in TRUE:
        return f"it is not in the local cache ({where}) and HF_HUB_OFFLINE is set"
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi(endpoint=environ.get("HF_ENDPOINT") or None, token=environ.get("HF_TOKEN") or None).model_info(
            repo_id, timeout=PROBE_TIMEOUT_S)
    except GatedRepoError:
        return (f"it is not in the local cache ({where}) and the Hub says it is gated: accept its licence on the "
                "Hub and log in (`hf auth login`, or HF_TOKEN)")
    except RepositoryNotFoundError:
        return f"it is not in the local cache ({where}) and the Hub has no such repository (or it is private)"
    except Exception as err:  # requests' connection errors and timeouts, whatever huggingface_hub wraps them in
        first = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
        return f"it is not in the local cache ({where}) and the Hub did not answer within {PROBE_TIMEOUT_S:.0f} s ({first})"
    return ""


def looks_like_hub_id(path: str) -> bool:
    """`org/name` that is not a folder here (inputs.check_model has turned local paths absolute already)."""
    return bool(path) and not path.startswith(("/", ".", "~")) and path.count("/") == 1 and not Path(path).exists()


def check_hub(model_path: str, tokenizer: str, environ: dict[str, str]) -> None:
    """Refuse a hub id for the model or tokenizer that is neither cached nor reachable, before any rank starts."""
    wanted = []
    if looks_like_hub_id(model_path):
        wanted.append(("model.path", model_path, (MODEL_FILES, WEIGHT_FILES)))
        if not tokenizer:
            wanted.append(("model.path", model_path, (TOKENIZER_FILES,)))
    if looks_like_hub_id(tokenizer):
        wanted.append(("model.tokenizer", tokenizer, (TOKENIZER_FILES,)))
    for field, repo_id, files in wanted:
        why = hub_missing(repo_id, files, environ)
        if why:
            raise LauncherError(field, repo_id, "give a local copy with model.path=/path/to/model (a folder with "
                                "config.json and the weights), or fill the cache on a machine with network "
                                f"(`hf download {repo_id}`), copy it here and set HF_HUB_OFFLINE=1 (HF_HOME points at "
                                "the cache); on several hosts each needs the cache, or a shared HF_HOME",
                                problem=f"{repo_id} cannot be loaded: {why}")
