"""The one training loop every sparse3d pipeline reuses (segmentation, detection, meshes, splatting).

Model protocol
--------------
* ``model.training_step(batch) -> dict[str, Tensor]`` with a scalar ``"loss"``; every other scalar entry
  is logged (averaged over ranks). Returning a bare tensor means ``{"loss": tensor}``. All ranks must
  return the same keys.
* optional ``model.validation_step(batch) -> dict`` and ``model.aggregate_validation(list[dict]) ->
  dict[str, float]`` (see :mod:`sparse3d.train.validation`).
* optional ``model.validation_images() -> dict[str, ndarray]``: called after each validation; every (H, W, 3)
  float image in [0, 1] is written to TensorBoard as ``val/<key>``.
* optional ``model.param_groups() -> list[dict]`` to give parameter groups (per-group lr etc.) to the
  optimizer; default: all parameters with ``requires_grad``.
* ``forward`` is not used by the trainer, so models keep it for inference. Under DDP the trainer wraps a
  :class:`~sparse3d.train.distributed.TrainingStepAdapter` (whose ``forward`` calls ``training_step``)
  so gradient synchronisation hooks fire.

Batches are moved to the device recursively (dicts, lists, tuples, dataclasses, objects with ``.to``).

Datasets
--------
The sample order of an epoch derives from ``(seed, epoch)`` (:mod:`sparse3d.train.data`). A training dataset with
a ``set_epoch(epoch)`` method gets it called before each epoch's loader is built, so per-sample randomness
(augmentation) can derive from ``(seed, epoch, index)`` too; together with the checkpointed model, optimizer,
scheduler and RNG states this makes a resumed run repeat the uninterrupted run's steps exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

import sparse3d
from sparse3d.config_schema import TrainerConfig, check_trainer_config
from sparse3d.train import distributed as D
from sparse3d.train.checkpoint import (
    RunDirectory,
    capture_rng_state,
    load_checkpoint,
    resolve_resume,
    restore_rng_state,
    save_weights,
    step_checkpoint_name,
    write_run_checkpoint,
)
from sparse3d.train.data import batches_per_epoch, build_epoch_loader, build_eval_loader
from sparse3d.train.monitor import ProgressReporter, ScalarWriter
from sparse3d.train.session import process_session
from sparse3d.train.validation import is_scalar, run_validation
from sparse3d.utils.device import move_to_device
from sparse3d.utils.errors import UserError
from sparse3d.utils.seed import configure_determinism, seed_everything

log = logging.getLogger("sparse3d.train")

WEIGHTS_NAME = "model.safetensors"
HISTORY_LIMIT = 100_000

OptimizerFactory = Callable[[Any], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]


def as_trainer_config(cfg: Any) -> DictConfig:
    """Validate any trainer config (DictConfig, dict, :class:`TrainerConfig`) against the schema.

    Unknown keys, wrong types and values out of range (:data:`sparse3d.config_schema.TRAINER_RULES`) raise
    :class:`~sparse3d.utils.errors.UserError` here, before any model is built.
    """
    schema = OmegaConf.structured(TrainerConfig)
    if cfg is None:
        return schema
    if is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = asdict(cfg)
    elif isinstance(cfg, DictConfig):
        # resolve against the full app config first: a detached node would resolve ${seed} against itself
        cfg = OmegaConf.to_container(cfg, resolve=True)
    try:
        merged = OmegaConf.merge(schema, cfg)
    except Exception as exc:  # omegaconf raises ValidationError / ConfigKeyError with the key in the text
        raise UserError(f"invalid trainer config: {exc}") from exc
    check_trainer_config(merged, "trainer")
    return merged  # type: ignore[return-value]


class Trainer(RunDirectory):
    """Generic trainer: device, seeding, DDP, AMP, clipping, logging, checkpoints, resume.

    Args:
        cfg: trainer options (see :class:`sparse3d.config_schema.TrainerConfig`).
        output_dir: the run directory; checkpoints go to ``output_dir/checkpoints``, TensorBoard to
            ``output_dir/tb``. Only rank 0 writes.
        full_config: the whole resolved app config, stored in checkpoints so ``sparse3d-eval`` can
            rebuild the model.
        runs_root: where ``resume=true`` looks for earlier runs (default: ``output_dir.parent``, i.e.
            the ``<output_root>/<task>/<experiment>`` folder of the standard layout).
    """

    def __init__(
        self,
        cfg: Any,
        output_dir: str | Path,
        *,
        full_config: DictConfig | Mapping[str, Any] | None = None,
        runs_root: str | Path | None = None,
    ) -> None:
        super().__init__(output_dir, full_config, runs_root)
        self.cfg = as_trainer_config(cfg)
        self.history: deque[dict[str, float]] = deque(maxlen=HISTORY_LIMIT)
        self.resumed_from: Path | None = None
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.model: torch.nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self.scaler: torch.amp.GradScaler | None = None
        self.device = torch.device("cpu")
        self.dist = D.DistInfo()
        self.val_metrics: dict[str, float] = {}
        self._step_fn: Callable[[Any], Any] | None = None
        self._use_amp = False
        self._amp_dtype = torch.float16
        self._writer = ScalarWriter(None)

    # ------------------------------------------------------------------------------------ public API

    def fit(
        self,
        model: torch.nn.Module,
        train_dataset: Dataset,
        val_dataset: Dataset | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        optimizer: OptimizerFactory | torch.optim.Optimizer | None = None,
        scheduler: SchedulerFactory | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        resume: bool | str | Path | None = False,
    ) -> dict[str, float]:
        """Train ``model`` until ``max_steps`` (or ``max_epochs``) and return the final metrics.

        ``optimizer`` is a factory called with the parameters (a Hydra ``_partial_``), or an optimizer
        already built on ``model``'s parameters (default: AdamW, lr 1e-3). ``scheduler`` is a factory
        called with the optimizer and stepped after every optimizer step. ``resume``: ``False``, ``True``
        (newest earlier run under ``runs_root``), or a checkpoint file / run directory.
        """
        with process_session(self.cfg.device) as session:
            self.device, self.dist = session.device, session.dist
            try:
                return self._fit(model, train_dataset, val_dataset, collate_fn, optimizer, scheduler,
                                 int(batch_size), int(num_workers), resume)
            finally:
                self._writer.close()

    # ------------------------------------------------------------------------------------- internals

    def _fit(
        self,
        model: torch.nn.Module,
        train_dataset: Dataset,
        val_dataset: Dataset | None,
        collate_fn: Callable[[list[Any]], Any] | None,
        optimizer: OptimizerFactory | torch.optim.Optimizer | None,
        scheduler: SchedulerFactory | None,
        batch_size: int,
        num_workers: int,
        resume: Any,
    ) -> dict[str, float]:
        cfg = self.cfg
        if batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {batch_size}")
        if not hasattr(model, "training_step"):
            raise TypeError(f"{type(model).__name__} has no training_step(batch) method (see sparse3d.train.trainer)")
        dataset_len = len(train_dataset)  # type: ignore[arg-type]
        if dataset_len == 0:
            raise UserError("the training dataset is empty")
        per_epoch = batches_per_epoch(dataset_len, batch_size, self.dist.world_size, cfg.drop_last)
        if per_epoch == 0:
            raise UserError(
                f"no full batch per epoch: {dataset_len} samples over {self.dist.world_size} rank(s) with "
                f"batch_size={batch_size} and drop_last=true"
            )
        max_steps = cfg.max_steps if cfg.max_steps and cfg.max_steps > 0 else None
        if max_steps is None and cfg.max_epochs is None:
            raise UserError("set trainer.max_steps > 0 or trainer.max_epochs")
        planned = max_steps
        if cfg.max_epochs is not None:
            epoch_bound = cfg.max_epochs * per_epoch
            planned = epoch_bound if planned is None else min(planned, epoch_bound)

        if cfg.num_threads:
            torch.set_num_threads(int(cfg.num_threads))
        configure_determinism(cfg.deterministic)
        # Per-rank stream for augmentation / dropout; the model was initialised by the caller and DDP
        # broadcasts rank 0's weights, so this does not make replicas differ.
        seed_everything(cfg.seed + self.dist.rank)

        self._setup_amp()
        self.model = model.to(self.device)
        self.optimizer = self._build_optimizer(model, optimizer)
        self.scheduler = scheduler(self.optimizer) if scheduler is not None else None
        self.scaler = torch.amp.GradScaler("cuda") if self._use_amp and self._amp_dtype == torch.float16 else None

        ckpt_path = resolve_resume(resume, self.runs_root, self.output_dir)
        if ckpt_path is not None:
            self._load_training_state(ckpt_path)
            if planned is not None and self.step >= planned and self.dist.is_main:
                log.warning("the checkpoint is at step %d and the run plans %d steps: nothing left to train (raise "
                            "trainer.max_steps / trainer.max_epochs to continue); only validating and writing the "
                            "final files", self.step, planned)

        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            adapter = D.TrainingStepAdapter(model)
            ddp_kwargs: dict[str, Any] = {"find_unused_parameters": cfg.find_unused_parameters}
            if self.device.type == "cuda":
                ddp_kwargs["device_ids"] = [self.device.index]
            self._step_fn = DistributedDataParallel(adapter, **ddp_kwargs)
        else:
            self._step_fn = model.training_step

        if self.dist.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            self._writer = ScalarWriter(self.output_dir / "tb")
        log.info(
            "rank %d/%d on %s: %d train samples, batch %d/rank, %d batches/epoch, %s steps planned%s",
            self.dist.rank, self.dist.world_size, self.device, dataset_len, batch_size, per_epoch,
            planned if planned is not None else "?", f", resumed at step {self.step}" if self.resumed_from else "",
        )

        pin = self.device.type == "cuda"
        val_loader = None
        if val_dataset is not None and self.dist.is_main:
            val_loader = build_eval_loader(
                val_dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
                pin_memory=pin, seed=cfg.seed,
            )

        reporter = ProgressReporter(planned, self.step, enabled=self.dist.is_main, show_bar=bool(cfg.progress))
        window: deque[dict[str, float]] = deque(maxlen=max(1, cfg.log_every))
        log_sums: dict[str, float] = {}
        log_count = 0
        last_val_step = -1
        last_ckpt_step = -1  # the current run dir always gets its own last.ckpt
        start_time = time.perf_counter()
        model.train()

        def done() -> bool:
            if max_steps is not None and self.step >= max_steps:
                return True
            return cfg.max_epochs is not None and self.epoch >= cfg.max_epochs

        try:
            with reporter.logging_redirect():
                while not done():
                    set_epoch = getattr(train_dataset, "set_epoch", None)
                    if callable(set_epoch):
                        set_epoch(self.epoch)
                    loader = build_epoch_loader(
                        train_dataset, batch_size=batch_size, epoch=self.epoch, start_batch=self.batch_in_epoch,
                        seed=cfg.seed, rank=self.dist.rank, world_size=self.dist.world_size, shuffle=cfg.shuffle,
                        drop_last=cfg.drop_last, num_workers=num_workers, collate_fn=collate_fn, pin_memory=pin,
                    )
                    for batch in loader:
                        scalars = self._train_step(batch)
                        self.step += 1
                        self.batch_in_epoch += 1
                        self.history.append({"step": float(self.step), **scalars})
                        window.append(scalars)
                        for key, value in scalars.items():
                            log_sums[key] = log_sums.get(key, 0.0) + value
                        log_count += 1
                        reporter.update(self.step, scalars["loss"])
                        if cfg.log_every > 0 and self.step % cfg.log_every == 0:
                            self._log(reporter, {k: v / log_count for k, v in log_sums.items()})
                            log_sums, log_count = {}, 0
                        finished = done()
                        # validate before checkpointing so last.ckpt carries the final metrics
                        if (cfg.val_every > 0 and self.step % cfg.val_every == 0) or (finished and cfg.val_at_end):
                            self._validate(model, val_loader)
                            last_val_step = self.step
                        periodic = cfg.ckpt_every > 0 and self.step % cfg.ckpt_every == 0
                        if periodic or finished:
                            self._save_checkpoint(periodic=periodic)
                            last_ckpt_step = self.step
                        if finished:
                            break
                    else:
                        self.epoch += 1
                        self.batch_in_epoch = 0
                if log_count:
                    self._log(reporter, {k: v / log_count for k, v in log_sums.items()})
                if cfg.val_at_end and last_val_step != self.step:
                    self._validate(model, val_loader)
                if last_ckpt_step != self.step:
                    self._save_checkpoint(periodic=False)
        finally:
            reporter.close()

        train_time = time.perf_counter() - start_time
        metrics: dict[str, float] = {"step": float(self.step), "epoch": float(self.epoch)}
        if window:
            for key in window[-1]:
                values = [entry[key] for entry in window if key in entry]
                metrics[f"train/{key}"] = sum(values) / len(values)
            metrics["train/loss_last"] = window[-1]["loss"]
        metrics.update({f"val/{k}": v for k, v in self.val_metrics.items()})
        metrics["time/train_s"] = train_time
        # speed from the end of the first step to the end of the last: the first step pays one-time costs (Warp
        # kernel compilation on a machine's first run) and would otherwise dominate short runs
        steady = reporter.steady_rate()
        if steady is not None:
            metrics["time/steps_per_s"] = steady
        first_step = reporter.first_step_s()
        if first_step is not None:
            metrics["time/first_step_s"] = first_step

        if self.dist.is_main:
            self._writer.flush()
            if cfg.export_weights:
                save_weights(model, self.output_dir / WEIGHTS_NAME, metadata={"step": str(self.step)})
        D.barrier()
        return metrics

    def _setup_amp(self) -> None:
        cfg = self.cfg
        dtypes = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
        if str(cfg.amp_dtype) not in dtypes:
            raise UserError(f"trainer.amp_dtype must be float16 or bfloat16, got {cfg.amp_dtype!r}")
        self._amp_dtype = dtypes[str(cfg.amp_dtype)]
        self._use_amp = bool(cfg.amp) and self.device.type == "cuda"
        if cfg.amp and not self._use_amp:
            log.warning("trainer.amp=true ignored: mixed precision is only used on CUDA (device is %s)", self.device)

    def _autocast(self) -> contextlib.AbstractContextManager:
        if not self._use_amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self._amp_dtype)

    def _build_optimizer(
        self, model: torch.nn.Module, optimizer: OptimizerFactory | torch.optim.Optimizer | None
    ) -> torch.optim.Optimizer:
        if isinstance(optimizer, torch.optim.Optimizer):
            return optimizer
        groups_fn = getattr(model, "param_groups", None)
        params: Any = groups_fn() if callable(groups_fn) else [p for p in model.parameters() if p.requires_grad]
        if isinstance(params, list) and not params:
            raise UserError(f"{type(model).__name__} has no trainable parameters")
        if optimizer is None:
            return torch.optim.AdamW(params, lr=1e-3)
        return optimizer(params)

    def _train_step(self, batch: Any) -> dict[str, float]:
        """One optimizer step; returns the rank-averaged scalars. Raises on a non-finite loss."""
        assert self.optimizer is not None and self._step_fn is not None and self.model is not None
        batch = move_to_device(batch, self.device, non_blocking=self.device.type == "cuda")
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            out = self._step_fn(batch)
        if isinstance(out, torch.Tensor):
            out = {"loss": out}
        if not isinstance(out, Mapping) or "loss" not in out:
            raise TypeError(
                f"{type(self.model).__name__}.training_step must return a dict with a 'loss' entry, "
                f"got {type(out).__name__}{' with keys ' + str(list(out)) if isinstance(out, Mapping) else ''}"
            )
        loss = out["loss"]
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"training_step's 'loss' must be a scalar tensor, got {getattr(loss, 'shape', type(loss))}")
        keys = sorted(key for key, value in out.items() if is_scalar(value))
        values = [
            out[key].detach().float().reshape(()) if isinstance(out[key], torch.Tensor)
            else torch.tensor(float(out[key]), device=self.device)
            for key in keys
        ]
        nonfinite = (~torch.isfinite(loss.detach().float())).float().reshape(())
        packed = torch.stack([v.to(self.device) for v in values] + [nonfinite.to(self.device)])
        D.all_reduce_sum(packed)
        packed = packed.cpu()
        if packed[-1].item() > 0:
            local = float(loss.detach().float())
            where = f" on {int(packed[-1].item())} rank(s); this rank ({self.dist.rank}) has" if self.dist.enabled else ":"
            raise RuntimeError(
                f"non-finite training loss at step {self.step + 1} (epoch {self.epoch}){where} loss={local}. "
                "Lower the learning rate, enable trainer.grad_clip, or check the data of this batch."
            )
        scalars = {key: packed[i].item() / self.dist.world_size for i, key in enumerate(keys)}
        if not loss.requires_grad:
            raise RuntimeError(
                "the training loss does not require grad: training_step must compute it from trainable parameters"
            )

        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        if self.cfg.grad_clip is not None and self.cfg.grad_clip > 0:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            norm = torch.nn.utils.clip_grad_norm_(params, float(self.cfg.grad_clip))
            scalars["grad_norm"] = float(norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return scalars

    def _current_lr(self) -> float | None:
        if self.optimizer is None or not self.optimizer.param_groups:
            return None
        return float(self.optimizer.param_groups[0]["lr"])

    def _log(self, reporter: ProgressReporter, means: dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        lr = self._current_lr()
        reporter.log_line(self.step, self.epoch, means, lr)
        scalars = dict(means)
        if lr is not None:
            scalars["lr"] = lr
        self._writer.add_scalars("train", scalars, self.step)

    def _validate(self, model: torch.nn.Module, loader: Any) -> None:
        """Validate on rank 0 (full validation set) and share the metrics with every rank."""
        metrics: dict[str, float] = {}
        if self.dist.is_main and loader is not None:
            metrics = run_validation(model, loader, self.device, autocast=self._autocast)
            if metrics:
                log.info("validation @ step %d: %s", self.step,
                         " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
                self._writer.add_scalars("val", metrics, self.step)
            images = getattr(model, "validation_images", None)
            if callable(images):  # optional: pictures of the last validation batch
                for tag, image in images().items():
                    self._writer.add_image(f"val/{tag}", image, self.step)
        metrics = D.broadcast_object(metrics)
        if metrics:
            self.val_metrics = metrics

    # ------------------------------------------------------------------------------------ checkpoints

    def _training_state(self) -> dict[str, Any]:
        assert self.model is not None and self.optimizer is not None
        return {
            "model": D.unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "step": self.step,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "world_size": self.dist.world_size,
            "val_metrics": dict(self.val_metrics),
            "config": self.full_config,
            "trainer_config": OmegaConf.to_container(self.cfg, resolve=True),
            "versions": {"torch": str(torch.__version__), "sparse3d": str(sparse3d.__version__)},
        }

    def _save_checkpoint(self, periodic: bool) -> None:
        """Write ``step_XXXXXXX.ckpt`` (periodic) and refresh ``last.ckpt``, atomically, on rank 0.

        Every rank contributes its RNG state (a collective), so a resumed DDP run continues each rank's
        random stream where it stopped.
        """
        rng_states = D.gather_objects(capture_rng_state())
        if self.dist.is_main:
            state = self._training_state()
            state["rng"] = rng_states
            last = write_run_checkpoint(state, self.ckpt_dir, self.step, periodic, int(self.cfg.ckpt_keep))
            log.info("saved checkpoint %s", last if not periodic else step_checkpoint_name(self.step))
        D.barrier()

    def _load_training_state(self, path: Path) -> None:
        assert self.model is not None and self.optimizer is not None
        state = load_checkpoint(path, map_location="cpu")
        try:
            D.unwrap_model(self.model).load_state_dict(state["model"])
        except RuntimeError as exc:
            raise UserError(f"checkpoint {path} does not match the model: {exc}") from exc
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            saved_total = state["scheduler"].get("total_steps")
            current_total = getattr(self.scheduler, "total_steps", saved_total)
            if saved_total is not None and saved_total != current_total:
                raise UserError(
                    f"checkpoint {path} was trained with a {type(self.scheduler).__name__} schedule of {saved_total} "
                    f"steps but this run plans {current_total}: a one-cycle schedule cannot be stretched. Resume with "
                    f"trainer.max_steps={saved_total}, or start a new run from the weights (resume=false)"
                )
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.epoch = int(state["epoch"])
        self.batch_in_epoch = int(state.get("batch_in_epoch", 0))
        self.val_metrics = dict(state.get("val_metrics") or {})
        saved_world = int(state.get("world_size", 1))
        rng = state.get("rng") or []
        if saved_world != self.dist.world_size:
            log.warning(
                "resuming a %d-process checkpoint with %d process(es): data order and RNG streams will "
                "differ from an uninterrupted run", saved_world, self.dist.world_size,
            )
            self.batch_in_epoch = self.batch_in_epoch * saved_world // self.dist.world_size
        elif self.dist.rank < len(rng):
            restore_rng_state(rng[self.dist.rank])
        self.resumed_from = path
        log.info("resumed from %s at step %d (epoch %d)", path, self.step, self.epoch)


def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 1,
    num_workers: int = 0,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    device: str | torch.device = "auto",
    amp: bool = False,
    amp_dtype: str = "float16",
    seed: int = 0,
) -> dict[str, float]:
    """Run the validation protocol over ``dataset`` outside training (``sparse3d-eval``)."""
    with process_session(device) as session:
        dev = session.device
        use_amp = bool(amp) and dev.type == "cuda"
        if amp and not use_amp:
            log.warning("amp=true ignored: mixed precision is only used on CUDA (device is %s)", dev)
        dtype = torch.bfloat16 if str(amp_dtype) in {"bfloat16", "bf16"} else torch.float16
        model.to(dev)
        loader = build_eval_loader(
            dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_fn,
            pin_memory=dev.type == "cuda", seed=seed,
        )

        def autocast() -> contextlib.AbstractContextManager:
            return torch.autocast(device_type=dev.type, dtype=dtype) if use_amp else contextlib.nullcontext()

        metrics = run_validation(model, loader, dev, autocast=autocast)
    for key, value in metrics.items():
        if math.isnan(value):
            log.warning("metric %s is NaN", key)
    return metrics
