"""Load the model of any private-inference run folder, whatever produced it.

Run kinds chain: ``pi-train`` (all-ReLU) → ``pi-shallow`` (merged blocks) → ``pi-senet`` /
``pi-snl`` / ``pi-layerdrop`` (partial ReLUs), each naming its teacher run; a model is rebuilt
by replaying that chain (architecture, merges, masks) and loading the run's own weights.
"""

from __future__ import annotations

from pathlib import Path

import torch.nn as nn

from trustlab.pi.training import DataConfig
from trustlab.runs import RunDir, config_from_dict, load_checkpoint_file
from trustlab.train import load_state_tensors

REDUCTION_KINDS = ("pi-senet", "pi-snl", "pi-layerdrop")
KINDS = ("pi-train", "pi-shallow", *REDUCTION_KINDS)


def load_pi_model(run_dir: str | Path) -> tuple[nn.Module, tuple[int, int, int], DataConfig]:
    """(model in eval mode, input shape, the data configuration of the root training run)."""
    import copy

    run = RunDir.open(run_dir, kind=KINDS)
    if run.kind == "pi-train":
        from trustlab.pi.training import load_classifier

        model, cfg, shape = load_classifier(run.path)
        return model, shape, cfg.data
    base, shape, data = load_pi_model(run.config["teacher"])
    if run.kind == "pi-shallow":
        from trustlab.pi.shallow import apply_merges

        model = apply_merges(base, run.summary()["merged_blocks"], run.config["kernel"] or None)
    else:
        from trustlab.pi.masks import install_partial_relus
        from trustlab.pi.reduce import ReductionConfig

        cfg = config_from_dict(ReductionConfig, run.config)
        model = copy.deepcopy(base)
        install_partial_relus(model, shape, cfg.granularity)
    tensors, _ = load_checkpoint_file(run.checkpoint_path("finetune"))
    load_state_tensors(model, tensors)
    return model.eval(), shape, data
