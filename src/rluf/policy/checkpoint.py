"""Training checkpoints in safetensors + JSON: model, optimizer, step. No pickles anywhere.

    python -c "from rluf.policy.checkpoint import latest_checkpoint; print(latest_checkpoint('runs/demo/policy/aggressive'))"

A checkpoint is a directory OUT/checkpoints/step-000040/ holding
- `model.safetensors`: the policy's parameters (state dict);
- `optimizer.safetensors`: every tensor of the optimizer state, keyed "state.<param index>.<name>";
- `trainer_state.json`: the step, the optimizer's param groups (lr, betas, ...), scalar state entries,
  the logged metrics so far, and a format version.

It is written to a temporary directory and renamed into place, so a run killed at any moment (SIGKILL
included) leaves either the whole checkpoint or none: `latest_checkpoint` only ever sees complete ones.
The trainer derives every random draw from (seed, step), so model + optimizer + step is all a resumed
run needs to continue exactly where the killed one stopped.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FORMAT = 1
STEP_DIR = re.compile(r"^step-(\d{6})$")


class CheckpointError(RuntimeError):
    pass


def optimizer_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able scalars."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for name, value in meta["scalars"].items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_checkpoint(out_dir: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    history: list[dict], keep: int = 2) -> Path:  # fmt: skip
    """Write OUT/checkpoints/step-NNNNNN atomically; keep the newest `keep` checkpoints."""
    root = Path(out_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    _save_shared_safe(state, tmp / "model.safetensors")
    opt_tensors, opt_meta = optimizer_to_flat(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "trainer_state.json").write_text(json.dumps({"format": FORMAT, "step": step, "optimizer": opt_meta,
                                                        "history": history}, default=float))  # fmt: skip
    for f in tmp.iterdir():  # make the files durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in root.iterdir() if STEP_DIR.match(p.name))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    root = Path(out_dir) / "checkpoints"
    if not root.is_dir():
        return None
    steps = sorted(p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "trainer_state.json").is_file())
    return steps[-1] if steps else None


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model and optimizer in place; returns the trainer state (step, history)."""
    path = Path(path)
    for name in ("model.safetensors", "optimizer.safetensors", "trainer_state.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"{path}: incomplete checkpoint, {name} is missing; delete the directory to resume "
                                  f"from the one before")  # fmt: skip
    meta = json.loads((path / "trainer_state.json").read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')} is not {FORMAT}")
    state = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not _is_tied(model, k)]
    if missing or unexpected:
        raise CheckpointError(f"{path}: the checkpoint does not fit this model (missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}); resume with the same model the run started from")  # fmt: skip
    optimizer_from_flat(optimizer, load_file(str(path / "optimizer.safetensors")), meta["optimizer"])
    return meta


def _save_shared_safe(state: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors refuses tensors that share memory (tied embeddings): store each storage once."""
    seen, out = {}, {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:
            continue
        seen[key] = k
        out[k] = v.clone() if v.untyped_storage().nbytes() != v.numel() * v.element_size() else v
    save_file(out, str(path))


def _is_tied(model: torch.nn.Module, key: str) -> bool:
    """True when `key` is a parameter tied to another one (e.g. lm_head.weight tied to the input embeddings)."""
    tied = getattr(model, "_tied_weights_keys", None) or {}
    keys = tied.keys() if isinstance(tied, dict) else tied
    return any(key == k or key.endswith(k) for k in keys)
