"""The one supervised training loop every area shares.

Read top to bottom it is the whole run: batches, loss, optimizer step, learning-rate schedule,
evaluation, checkpoints and resume. Design choices that make resume and distributed training
exact rather than approximate:

* All randomness is a function of ``(seed, epoch)`` (the data order) or ``(seed, step)`` (the
  augmentation), so a run resumed from a checkpoint draws exactly what the uninterrupted run
  would have drawn, with no RNG state to save.
* The learning rate is a pure function of the step (no scheduler object to restore).
* Under ``torchrun --nproc_per_node N`` (DistributedDataParallel; gloo on CPU, nccl on GPU),
  each process takes its ``1/N`` slice of the same global batch; DDP averages gradients, which
  equals the gradient of the global batch's mean loss. Only rank 0 writes to the run folder.
  BatchNorm statistics stay per process, as usual with DDP.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from trustlab.errors import ConfigError, RunError
from trustlab.progress import progress_bar
from trustlab.runs import RunDir
from trustlab.train_config import TrainConfig

LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


# -- distributed helpers ------------------------------------------------------------------
def world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group under torchrun (gloo on CPU, nccl on GPU); (rank, world size). Each
    process then takes its ``1/N`` slice of the same global batch (:func:`local_share`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world()


def wrap_distributed(model: nn.Module, device: torch.device, world_size: int) -> nn.Module:
    """``model`` under DistributedDataParallel when there are several processes (DDP averages the
    gradients, which equals the gradient of the global batch's mean loss), else ``model`` itself."""
    if world_size == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def broadcast_state(model: nn.Module) -> None:
    """Every process starts from rank 0's weights and buffers (under torchrun; nothing otherwise)."""
    if world()[1] > 1:
        for tensor in model.state_dict().values():
            torch.distributed.broadcast(tensor, 0)


def average_gradients(params: list[nn.Parameter]) -> None:
    """Average the gradients over the processes of a torchrun job, as DDP does, in one flat all-reduce.

    For models whose graph changes from step to step (LoyalDiffusion's router sends each sample to
    one of two U-Nets), where DDP's bucketed hooks do not apply. A parameter that some process left
    out of its step counts with a zero gradient there; one that every process left out keeps no
    gradient, so the optimizer skips it exactly as a single process would."""
    world_size = world()[1]
    if world_size == 1:
        return
    used = [p.grad is not None for p in params]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads] + [torch.tensor(used, dtype=grads[0].dtype, device=grads[0].device)])
    torch.distributed.all_reduce(flat)
    offset = 0
    for p, g, anywhere in zip(params, grads, flat[-len(params):].tolist()):
        p.grad = (flat[offset : offset + g.numel()].view_as(p) / world_size).clone() if anywhere else None
        offset += g.numel()


def mean_over_processes(value: torch.Tensor) -> torch.Tensor:
    """The mean of ``value`` over the processes of a torchrun job (itself in a single process)."""
    world_size = world()[1]
    if world_size == 1:
        return value
    value = value.clone()
    torch.distributed.all_reduce(value)
    return value / world_size


def local_share(batch_size: int, world_size: int) -> int:
    """Each process's share of a global batch; a batch that does not split evenly is a one-line error."""
    if batch_size % world_size:
        raise ConfigError(f"batch size {batch_size} does not split over {world_size} processes: use a multiple")
    return batch_size // world_size


def finish_distributed() -> None:
    """Wait for every rank, then tear the process group down.

    A rank that simply exits while others still hold gloo connections can be aborted by
    gloo's I/O thread, so a torchrun job ends with a barrier and an orderly shutdown.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda asked for, but no CUDA device is available: use --device cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(name)


# -- pieces of a step ---------------------------------------------------------------------
def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def random_shift(x: torch.Tensor, seed: int, step: int, pad: int = 2) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (the usual pad-and-crop), seeded by step."""
    g = torch.Generator().manual_seed(seed * 7_919 + step)
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None]).to(x.device)
    cols = (dx[:, None] + torch.arange(w)[None]).to(x.device)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return standard_strides(padded.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2))


def standard_strides(x: torch.Tensor) -> torch.Tensor:
    """``x`` laid out with the plain row-major strides of its shape (a copy only when needed).

    ``.contiguous()`` is not enough: a 1-channel batch with strides ``(H*W, 1, W, 1)`` counts
    as contiguous *and* channels-last, so torch silently runs the network in channels-last.
    """
    expected, stride = [], 1
    for size in reversed(x.shape):
        expected.insert(0, stride)
        stride *= size
    if list(x.stride()) == expected:
        return x
    return x.clone(memory_format=torch.contiguous_format)


def training_layout(model: nn.Module, device: torch.device) -> torch.memory_format:
    """The memory format a model trains in: channels-last on the CPU, where it can be trusted.

    oneDNN's NHWC convolutions train the ResNet18s here about 1.25x faster than NCHW on the
    CPU. But oneDNN's 1x1 stride-2 convolution backward (``jit_1x1``) writes past its workspace
    in NHWC when a layer has fewer input channels than its block (8 on AVX2, 16 on AVX-512):
    heap corruption and SIGABRT/SIGSEGV on AVX2-only CPUs, wrong weight gradients on others
    (oneDNN issue #6035; in trustlab, the shortcut of ResNet18 below width 1/4). A model with
    such a layer, and every model on a GPU, trains in the standard layout.
    """
    if device.type != "cpu" or not any(isinstance(m, nn.Conv2d) for m in model.modules()):
        return torch.contiguous_format
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) and m.in_channels < 16:
            return torch.contiguous_format
    return torch.channels_last


def in_layout(x: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    """A batch in ``layout``; in the standard layout, with standard strides even for one channel."""
    if layout == torch.channels_last and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return standard_strides(x)


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """SGD or AdamW; ``foreach`` (one kernel per step over all tensors) is torch's default on GPUs
    only, and also 20-40% faster on the CPU for the few hundred tensors of trustlab's models."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                               nesterov=cfg.momentum > 0, foreach=True)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             device: torch.device | None = None) -> dict[str, float]:
    """Mean cross-entropy and top-1 accuracy (x float in [0,1], y int64)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    loss_sum, correct = 0.0, 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        logits = model(xb)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    return {"loss": loss_sum / max(1, len(x)), "acc": correct / max(1, len(x))}


# -- checkpoint (de)serialisation ---------------------------------------------------------
def state_tensors(model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> tuple[dict, dict]:
    """Flatten model and optimizer state into safetensors-ready tensors plus JSON metadata."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    meta: dict = {}
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars: dict = {}
        for pid, st in sd["state"].items():
            for name, val in st.items():
                if torch.is_tensor(val):
                    tensors[f"optim.{pid}.{name}"] = val
                else:
                    scalars[f"{pid}.{name}"] = val
        meta["optim_groups"] = sd["param_groups"]
        meta["optim_scalars"] = scalars
    return tensors, meta


def load_state_tensors(model: nn.Module, tensors: dict, optimizer: torch.optim.Optimizer | None = None,
                       meta: dict | None = None, strict: bool = True) -> None:
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(model_sd)), sorted(set(model_sd) - expected)
    if strict and (missing or extra):
        raise RunError(f"checkpoint does not fit this model ({len(missing)} weights missing, e.g. {missing[:1]}; "
                       f"{len(extra)} unexpected, e.g. {extra[:1]}): was it trained with another architecture or configuration?")
    try:
        model.load_state_dict(model_sd, strict=strict)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e).splitlines()[0])
        raise RunError(f"checkpoint does not fit this model ({detail[:200]}): was it trained with another architecture or configuration?") from None
    if optimizer is not None and meta is not None and "optim_groups" in meta:
        state: dict = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, name = k.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        for k, v in meta.get("optim_scalars", {}).items():
            pid, name = k.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        optimizer.load_state_dict({"state": state, "param_groups": meta["optim_groups"]})


def load_weights(model: nn.Module, run: RunDir, tag: str = "last") -> nn.Module:
    """``model`` with the weights of ``run``'s checkpoint ``tag``, in eval mode: how a finished run's model is
    rebuilt (the caller builds the architecture from the run's config and summary)."""
    tensors, _ = run.load_checkpoint(tag)
    load_state_tensors(model, tensors)
    return model.eval()


# -- the loop -----------------------------------------------------------------------------
def fit(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, cfg: TrainConfig, run: RunDir | None = None,
        *, x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None, loss_fn: LossFn = cross_entropy,
        resume: bool = False, quiet: bool = False, params=None, tag: str = "last",
        max_steps: int | None = None, schedule: Callable[[float], None] | None = None) -> dict:
    """Train ``model`` on ``(x_train, y_train)`` (float images in [0,1], int64 labels).

    Checkpoints go to ``run`` every ``cfg.checkpoint_every`` steps and at each epoch end;
    with ``resume`` the loop continues from the last one. ``params`` restricts the optimised
    parameters (default: all). ``max_steps`` stops early (used to test kill-and-resume).
    ``schedule`` is called before every step with the fraction of training done (0 at the
    first step), for methods that change the model as training goes (a resumed run calls it
    from the resumed step on), and once more at the end (1 when training is complete).
    Returns the final evaluation (``test_acc``, ``test_loss``) and ``steps``. A job of several
    stages gives each its checkpoint ``tag``; its records in ``metrics.jsonl`` carry it as ``stage``.
    """
    cfg.validate()
    stage = None if tag == "last" else tag
    device = resolve_device(cfg.device)
    rank, world_size = init_distributed(device)
    local = local_share(cfg.batch_size, world_size)
    torch.manual_seed(cfg.seed)
    layout = training_layout(model, device)
    model.to(device, memory_format=layout).train()
    params = list(params) if params is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(cfg, params)
    steps_per_epoch = len(x_train) // cfg.batch_size
    if steps_per_epoch == 0:
        raise ConfigError(f"batch size {cfg.batch_size} is larger than the {len(x_train)} training examples")
    total = cfg.epochs * steps_per_epoch
    step, loss_sum, loss_count = 0, 0.0, 0
    if resume and run is not None and run.has_checkpoint(tag):
        tensors, meta = run.load_checkpoint(tag)
        load_state_tensors(model, tensors, optimizer, meta)
        step, loss_sum, loss_count = meta["step"], meta.get("loss_sum", 0.0), meta.get("loss_count", 0)
        if rank == 0:
            run.truncate_metrics(step, stage)
    wrapped = wrap_distributed(model, device, world_size)

    def checkpoint(done: bool) -> None:
        if run is not None and rank == 0:
            tensors, meta = state_tensors(model, optimizer)
            meta.update(step=step, loss_sum=loss_sum, loss_count=loss_count, done=done, config=cfg.__dict__)
            run.save_checkpoint(tensors, meta, tag)

    end = total if max_steps is None else min(total, max_steps)

    with progress_bar(quiet or rank != 0) as bar:
        task = bar.add_task("train", total=total, completed=step)
        while step < end:
            epoch, i = divmod(step, steps_per_epoch)
            order = epoch_order(len(x_train), cfg.seed, epoch)
            idx = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb, yb = x_train[idx], y_train[idx]
            if cfg.augment:  # drawn for the global batch, so any world size sees the same images
                xb = random_shift(xb, cfg.seed, step)
            xb, yb = xb[rank * local : (rank + 1) * local], yb[rank * local : (rank + 1) * local]
            lr = lr_at(cfg, step, total)
            if schedule is not None:
                schedule(step / total)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss = loss_fn(wrapped, in_layout(xb.to(device), layout), yb.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            loss_value = float(loss.detach())
            loss_sum, loss_count = loss_sum + loss_value, loss_count + 1
            bar.update(task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs} loss {loss_value:.3f}")
            epoch_done = step % steps_per_epoch == 0
            if epoch_done and rank == 0:
                record = {"epoch": step // steps_per_epoch, "lr": lr, "train_loss": loss_sum / loss_count,
                          **({"stage": stage} if stage else {})}
                if x_test is not None:
                    ev = evaluate(model, x_test, y_test, cfg.eval_batch_size, device)
                    record.update(test_loss=ev["loss"], test_acc=ev["acc"])
                if run is not None:
                    run.log(step, **record)
                loss_sum, loss_count = 0.0, 0
            if epoch_done or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                checkpoint(done=step == total)
    model.to(memory_format=torch.contiguous_format)  # hand the caller plain weights
    if schedule is not None:
        schedule(step / max(total, 1))  # the model as of its last step, also when a resumed run had none left
    result = {"steps": step}
    if x_test is not None and rank == 0:
        ev = evaluate(model, x_test, y_test, cfg.eval_batch_size, device)
        result.update(test_loss=ev["loss"], test_acc=ev["acc"])
    return result
