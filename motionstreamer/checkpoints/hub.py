"""The released files on the Hugging Face Hub: which repository and folders hold each component, and
their download into the layout official.convert_official reads."""
from __future__ import annotations

import os
from pathlib import Path

HUB_REPO = "lxxiao/MotionStreamer"
# component -> (hub repo, repo type, allow_patterns, sub-folder of dest); layout as the original's
# humanml3d_272/prepare/download_*.py scripts and README (Mean/Std come with the dataset repo)
HUB_COMPONENTS = {
    "tae": (HUB_REPO, "model", ["Causal_TAE/*"], ""),
    "tae_babel": (HUB_REPO, "model", ["Causal_TAE_t2m_babel/*"], ""),
    "t2m": (HUB_REPO, "model", ["Experiments/t2m_model/*"], ""),
    "evaluator": (HUB_REPO, "model", ["Evaluator_272/*"], ""),
    "stats": ("lxxiao/272-dim-HumanML3D", "dataset", ["mean_std/*"], "humanml3d_272"),
}
DEFAULT_COMPONENTS = ("tae", "t2m", "evaluator", "stats")


def hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import constants
        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def download_official(dest: str | os.PathLike, components=DEFAULT_COMPONENTS, timeout: float = 10.0) -> Path:
    """Fetch released files into `dest` in the hub layout (what convert_official reads), with
    huggingface_hub.snapshot_download and per-component allow_patterns (HUB_COMPONENTS).

    Fails fast with ConnectionError when offline (HF_HUB_OFFLINE) or when the hub does not answer
    within `timeout` seconds. The end latent (reference_end_latent_t2m_272.npy) is not on the hub:
    it is in the root of the MotionStreamer GitHub repository."""
    components = list(components)
    unknown = [c for c in components if c not in HUB_COMPONENTS]
    if unknown or not components:
        raise ValueError(f"unknown component(s) {unknown}; choose from {sorted(HUB_COMPONENTS)}")
    if hub_offline():
        raise ConnectionError("cannot download: Hugging Face Hub offline mode is on (HF_HUB_OFFLINE); "
                              "unset it, or copy the files into the folder by hand")
    from huggingface_hub import HfApi, snapshot_download

    dest = Path(dest)
    by_repo: dict[tuple, list[str]] = {}
    for c in components:
        repo, rtype, patterns, sub = HUB_COMPONENTS[c]
        by_repo.setdefault((repo, rtype, sub), []).extend(patterns)
    for (repo, rtype, sub), patterns in by_repo.items():
        try:   # one short request first: offline machines fail here in `timeout` s, not after retries
            sha = HfApi().repo_info(repo, repo_type=rtype, timeout=timeout).sha
            snapshot_download(repo_id=repo, repo_type=rtype, revision=sha,
                              local_dir=str(dest / sub) if sub else str(dest),
                              allow_patterns=patterns, etag_timeout=timeout)
        except Exception as e:
            raise ConnectionError(f"cannot download {patterns} from the hub {rtype} repository {repo} "
                                  f"(offline or unreachable?): {type(e).__name__}: {e}") from e
    return dest
