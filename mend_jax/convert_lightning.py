"""Convert a PyTorch Lightning checkpoint (.ckpt) into a safetensors model directory.

  python -m mend_jax.convert_lightning QA_model.ckpt models/bart-base-zsre --model-type bart --base facebook/bart-base
  python -m mend_jax.convert_lightning FC_model.ckpt models/bert-base-fever --model-type bert --base bert-base-uncased

The reference starts qa and fc from De Cao et al.'s fine-tuned checkpoints,
which are pickled Lightning files. The trainer never unpickles anything, so
this explicit, one-off step turns such a file into config.json +
model.safetensors (+ the base's tokenizer), which `--config.model.name=OUT_DIR`
then loads.

Unpickling is done with `torch.load(weights_only=True)`, which only rebuilds
tensors and plain containers. Lightning files usually also pickle their
hyper-parameters (argparse.Namespace, the training script's own classes);
those globals are replaced by inert stand-ins (classes defined here, so no code
from the file runs) and then dropped, since only the weights are kept.
`--strict` refuses them instead. A file that even so cannot be read with
weights_only=True can only be read by running its pickle code:
`--unsafe-trust-pickle` does that, for files whose source you trust.
"""
import argparse
import os
import pickle
import sys
from typing import Dict, List, Tuple

import numpy as np

from mend_jax.models import convert
from mend_jax.models.api import build_module, param_shapes, save_pretrained
from mend_jax.models.registry import get_family

MODEL_TYPES = ("bert", "t5", "bart")
# Prefixes wrappers put before the Hugging Face names: Lightning's module attribute
# ("model.") and, for the reference's BertClassifier, its BertModel ("model.").
_WRAPPER_PREFIX = "model."
_MAX_WRAPPERS = 3


class ConversionError(RuntimeError):
    pass


def _stand_in(name: str):
    """An inert class that takes the place of the pickled global `name`."""
    module, _, qualname = name.rpartition(".")

    class StandIn:
        def __init__(self, *args, **kwargs):
            self.args, self.kwargs = args, kwargs

        def __setstate__(self, state):
            self.state = state

        def __repr__(self):
            return f"<stand-in for {name}>"

    StandIn.__module__, StandIn.__qualname__, StandIn.__name__ = module, qualname, qualname.rsplit(".", 1)[-1]
    return StandIn


def load_checkpoint(path: str, strict: bool = False, trust_pickle: bool = False) -> Tuple[Dict, List[str]]:
    """(the unpickled object, the globals replaced by stand-ins)."""
    import torch

    if not os.path.isfile(path):
        raise ConversionError(f"{path} does not exist")
    if trust_pickle:
        print(f"warning: unpickling {path} with weights_only=False runs code stored in the file", file=sys.stderr)
        return torch.load(path, map_location="cpu", weights_only=False), []
    try:
        return torch.load(path, map_location="cpu", weights_only=True), []
    except pickle.UnpicklingError as first_error:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception as e:  # noqa: BLE001 - legacy (non-zip) files cannot be scanned
            raise ConversionError(_explain(path, f"it could not be scanned for globals ({e})", first_error)) from e
        if strict or not unsafe:
            reason = f"it pickles these globals: {', '.join(unsafe)}" if unsafe else "weights_only=True failed"
            raise ConversionError(_explain(path, reason, first_error)) from first_error
        try:
            with torch.serialization.safe_globals([(_stand_in(n), n) for n in unsafe]):
                return torch.load(path, map_location="cpu", weights_only=True), unsafe
        except pickle.UnpicklingError as e:
            raise ConversionError(_explain(path, f"even with stand-ins for {', '.join(unsafe)}", e)) from e


def _explain(path: str, reason: str, error: Exception) -> str:
    detail = str(error).strip().splitlines()[-1][:300]
    return (
        f"cannot read {path} with torch.load(weights_only=True): {reason}. Loading it any other way runs code "
        f"stored in the file. If you trust its source, rerun with --unsafe-trust-pickle. (torch said: {detail})"
    )


def extract_state_dict(obj, path: str) -> Dict[str, np.ndarray]:
    """The tensors of a Lightning checkpoint ("state_dict") or of a bare state dict, as numpy."""
    import torch

    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state:
        keys = sorted(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(f"{path} holds no 'state_dict' and is not a state dict itself (it holds {keys})")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ConversionError(f"{path}: the state dict has non-tensor entries, e.g. {not_tensors[:5]}")
    return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def rename_keys(state: Dict[str, np.ndarray], known: set) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """Strips wrapper prefixes until each key is a name the model knows; (renamed, unmatched keys)."""
    renamed, unmatched = {}, []
    for key, value in state.items():
        name = key
        for _ in range(_MAX_WRAPPERS + 1):
            if name in known or not name.startswith(_WRAPPER_PREFIX):
                break
            name = name[len(_WRAPPER_PREFIX):]
        if name in known:
            renamed[name] = value
        else:
            unmatched.append(key)
    return renamed, unmatched


def base_config(model_type: str, base: str):
    """The architecture: the base model's config.json, set up as the task model MEND edits."""
    import transformers

    from mend_jax.models import hub

    cfg = transformers.AutoConfig.from_pretrained(hub.resolve(base))
    if cfg.model_type != model_type:
        raise ConversionError(f"--base {base} is a {cfg.model_type!r} model, but --model-type is {model_type!r}")
    if model_type == "bert":  # the reference's BertClassifier: one logit on the pooled output
        cfg.num_labels = 1
        cfg.architectures = ["BertForSequenceClassification"]
    return cfg


def convert_checkpoint(ckpt: str, out_dir: str, model_type: str, base: str, strict: bool = False,
                       trust_pickle: bool = False) -> Dict:
    """Writes out_dir/{config.json, model.safetensors, tokenizer files}; returns a summary."""
    if model_type not in MODEL_TYPES:
        raise ConversionError(f"--model-type must be one of {MODEL_TYPES}, got {model_type!r}")
    obj, stand_ins = load_checkpoint(ckpt, strict=strict, trust_pickle=trust_pickle)
    state = extract_state_dict(obj, ckpt)

    module = build_module(base_config(model_type, base))
    family = get_family(model_type)
    shapes = param_shapes(module)
    known = {c for name in convert.torch_names(shapes) for c in convert._candidates(family, name)}
    renamed, unmatched = rename_keys(state, known)
    try:
        params = convert.state_dict_to_params(family, renamed, shapes, None)
    except Exception as e:  # noqa: BLE001 - missing names, wrong shapes
        raise ConversionError(f"{ckpt} does not fit the {model_type} model of {base}: {e}") from e
    save_pretrained(module, params, out_dir)
    tokenizer_saved = _copy_tokenizer(base, out_dir)
    return {"n_tensors": len(renamed), "unmatched": unmatched, "stand_ins": stand_ins, "tokenizer": tokenizer_saved}


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model")


def _copy_tokenizer(base: str, out_dir: str) -> bool:
    import transformers

    from mend_jax.models import hub

    directory = hub.resolve(base)
    # Checked first: transformers would otherwise build an empty tokenizer from config.json alone.
    if not any(os.path.exists(os.path.join(directory, f)) for f in TOKENIZER_FILES):
        print(f"warning: {base} has no tokenizer files, none copied; set --config.model.tokenizer", file=sys.stderr)
        return False
    transformers.AutoTokenizer.from_pretrained(directory).save_pretrained(out_dir)
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mend_jax.convert_lightning", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("checkpoint", help="the .ckpt file (PyTorch Lightning) or a torch state-dict file")
    parser.add_argument("out_dir", help="directory to write config.json, model.safetensors and the tokenizer to")
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES)
    parser.add_argument("--base", required=True,
                        help="Hugging Face name or local directory of the architecture (e.g. facebook/bart-base)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse pickled globals instead of replacing them with inert stand-ins")
    parser.add_argument("--unsafe-trust-pickle", action="store_true",
                        help="load with weights_only=False, running code from the file; only for trusted files")
    args = parser.parse_args(argv)
    try:
        summary = convert_checkpoint(args.checkpoint, args.out_dir, args.model_type, args.base,
                                     strict=args.strict, trust_pickle=args.unsafe_trust_pickle)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if summary["stand_ins"]:
        print(f"replaced pickled globals by inert stand-ins (not part of the weights): {', '.join(summary['stand_ins'])}")
    if summary["unmatched"]:
        print(f"ignored {len(summary['unmatched'])} tensors the model has no place for, e.g. {summary['unmatched'][:5]}")
    print(f"wrote {summary['n_tensors']} tensors to {args.out_dir}; train with --config.model.name={args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
