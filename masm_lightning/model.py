"""MASMDetector: a timm CLIP/ViT with MASM adapters and a binary head, as a LightningModule."""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys
from typing_extensions import override

from .adapters import (
    MASMConfig,
    SubspaceConstraints,
    apply_constraints,
    constraint_metrics,
    inject_adapters,
)
from .metrics import DetectionMetrics

__all__ = ["MASMDetector", "weights_fingerprint"]

CHECKPOINT_KEY = "masm"
_KEY_PREFIXES = ("module.", "model.")


def effort_adam(params: Any) -> torch.optim.Optimizer:
    """The Effort recipe's optimizer: Adam, lr 2e-4, weight decay 5e-4 (coupled: added to the gradient)."""
    return torch.optim.Adam(params, lr=2e-4, weight_decay=5e-4)


def masm_adam(params: Any) -> torch.optim.Optimizer:
    """MASM's default optimizer: Adam, lr 2e-4, no weight decay. Coupled decay on the factors is normalised by
    Adam with the task gradient, so it stalls small task gradients and erases tail values; the decoupled
    constraint step (:func:`~masm_lightning.adapters.apply_constraints`) bounds the factors instead."""
    return torch.optim.Adam(params, lr=2e-4)


def weights_fingerprint(module: nn.Module, samples: int = 64) -> str:
    """A device-independent hash of a module's weights: names, shapes, dtypes and evenly spaced exact values.

    Reading sampled elements (not sums) keeps it identical on CPU and GPU, and cheap for a ViT-L.
    """
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        flat = tensor.detach().reshape(-1)
        picks = torch.linspace(0, max(flat.numel() - 1, 0), min(samples, flat.numel())).long().to(flat.device)
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(flat[picks].double().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


class MASMDetector(LightningModule):
    """Real/fake face classifier: timm backbone (CLS pre-logits) + MASM adapters + linear head.

    Args:
        backbone: timm model name, e.g. ``vit_large_patch14_clip_quickgelu_224.openai`` (quickgelu matches
            OpenAI's weights; the plain ``_clip_`` name uses the wrong activation).
        backbone_kwargs: passed to ``timm.create_model`` (``depth``, ``img_size``, …).
        pretrained: load timm's pretrained weights (needs the hub or its cache).
        checkpoint_path: load backbone weights from a local file, OpenAI/open_clip ``visual.*`` or timm format.
        adapters: MASM configuration; ``None`` trains no adapters (full fine-tuning or linear probe).
        freeze_backbone: without adapters, train the head only (linear probe) or, if false, everything.
        lambda_orth: strength λ_o of the decoupled orthogonality step (proximal pull of every U, V toward the
            nearest orthonormal matrix after each optimizer step; error ≈ 8/λ_o at worst); 0 switches it off.
        lambda_spec: strength λ_s of the decoupled spectral step (pull of s toward s0; ``|s − s0|/σ_r ≤ κ/λ_s``).
        lambda_semantic: strength of Effort's frozen-basis term (artifact directions out of the semantic basis,
            ``‖[U_r U]ᵀ[U_r U] − I‖``); 0 (default) off. Formulas: :mod:`masm_lightning.adapters.regularizers`.
        spectral_cap: artifact values are clamped to ``[0, spectral_cap·σ_r]``; null for no cap.
        optimizer: built over every trainable parameter.
        lr_scheduler: optional, stepped per epoch.
        threshold: fake-probability threshold for accuracy.
        backbone_seed: seed of a random-init backbone (no weights given), so a checkpoint reloads onto the same base.
    """

    def __init__(
        self,
        backbone: str = "vit_large_patch14_clip_quickgelu_224.openai",
        backbone_kwargs: dict[str, Any] | None = None,
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        adapters: MASMConfig | None = MASMConfig(),  # noqa: B008 - an immutable-by-convention default
        freeze_backbone: bool = True,
        lambda_orth: float = 10.0,
        lambda_spec: float = 1.0,
        lambda_semantic: float = 0.0,
        spectral_cap: float | None = 2.0,
        optimizer: OptimizerCallable = masm_adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        threshold: float = 0.5,
        backbone_seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(adapters, Mapping):  # from a checkpoint's hyper-parameters
            adapters = MASMConfig(**adapters)
        for name, value in (("lambda_orth", lambda_orth), ("lambda_spec", lambda_spec),
                            ("lambda_semantic", lambda_semantic)):
            if not 0 <= value < float("inf"):
                raise ValueError(f"model.{name} must be a finite number >= 0, got {value}")
        if spectral_cap is not None and not spectral_cap > 0:
            raise ValueError(f"model.spectral_cap must be > 0 or null (no cap), got {spectral_cap}")
        self.constraints = SubspaceConstraints(lambda_orth, lambda_spec, lambda_semantic,
                                               float("inf") if spectral_cap is None else spectral_cap)
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold}")
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.adapter_config = adapters
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        # Plain types only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "adapters"])
        self.hparams["adapters"] = None if adapters is None else dataclasses.asdict(adapters)
        self.backbone: nn.Module | None = None
        self.head: nn.Linear | None = None
        self.fingerprint: str | None = None
        self.val_metrics = DetectionMetrics(threshold)
        self.test_metrics = nn.ModuleDict()

    @property
    def data_config(self) -> dict[str, Any]:
        """Input size, mean, std and interpolation the backbone expects; the data module follows it."""
        cfg = timm.models.get_pretrained_cfg(self.backbone_name)
        size = self.backbone_kwargs.get("img_size", cfg.input_size[-1] if cfg else 224)
        return {
            "image_size": size if isinstance(size, int) else size[-1],
            "mean": tuple(cfg.mean) if cfg else timm.data.OPENAI_CLIP_MEAN,
            "std": tuple(cfg.std) if cfg else timm.data.OPENAI_CLIP_STD,
            "interpolation": cfg.interpolation if cfg else "bicubic",
        }

    def _create_backbone(self) -> nn.Module:
        kwargs = {**self.backbone_kwargs, "num_classes": 0}
        path = self.hparams.checkpoint_path
        if path is not None:
            if not Path(path).is_file():
                raise FileNotFoundError(f"model.checkpoint_path {path!r} is not a file")
            # timm reads the file with weights_only=True, converts OpenAI/open_clip `visual.*` keys through the
            # model's checkpoint filter, and drops the file's projection head (its num_classes differs from ours).
            return timm.create_model(self.backbone_name, pretrained=True,
                                     pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        if not self.hparams.pretrained:
            warnings.warn(f"MASMDetector: backbone {self.backbone_name!r} starts from random weights (pretrained "
                          "false, no checkpoint_path): fine for tests and demos, useless for real detection",
                          stacklevel=2)
        if self.hparams.pretrained:
            return timm.create_model(self.backbone_name, pretrained=True, **kwargs)
        # Drawn on the CPU from a forked RNG: the same weights whichever device trains (Lightning may make the
        # GPU the default device here), and the training RNG streams are left untouched.
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())), torch.device("cpu"):
            torch.manual_seed(self.hparams.backbone_seed)
            return timm.create_model(self.backbone_name, pretrained=False, **kwargs)

    @override
    def configure_model(self) -> None:
        if self.backbone is not None:  # Lightning calls this again before loading a checkpoint
            return
        backbone = self._create_backbone()
        self.fingerprint = weights_fingerprint(backbone)
        if self.adapter_config is not None:
            inject_adapters(backbone, self.adapter_config)
        elif self.hparams.freeze_backbone:
            backbone.requires_grad_(False)
        self.backbone = backbone
        self.head = nn.Linear(backbone.num_features, 2)

    @override
    def forward(self, images: Tensor) -> Tensor:
        """Logits (real, fake) for a batch of normalised images."""
        return self.head(self.backbone(images))

    def fake_probability(self, images: Tensor) -> Tensor:
        return self(images).softmax(-1)[:, 1]

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        logits = self(batch["image"])
        weights = self._class_weights()
        terms = {"ce": F.cross_entropy(logits, batch["label"],
                                       weight=None if weights is None else weights.to(logits))}
        loss = terms["ce"]  # the constraints are a separate step (optimizer_step): p.grad is the task's alone
        if self.adapter_config is not None and (self.hparams.lambda_orth or self.hparams.lambda_spec
                                                or self.hparams.lambda_semantic):
            # What the active constraints bound, as of the last step (T×T Grams: cheap): max ‖UᵀU − I‖_F,
            # max |s − s0|/σ_r, max ‖P_f U‖_F over the decomposed matrices.
            found = constraint_metrics(self.backbone, semantic=bool(self.hparams.lambda_semantic))
            names = {"orth": ("lambda_orth", "orth_error"), "spec": ("lambda_spec", "spectral_drift"),
                     "semantic": ("lambda_semantic", "semantic_overlap")}
            terms |= {key: found[metric] for key, (lam, metric) in names.items() if self.hparams[lam]}
        if not torch.isfinite(loss):
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise FloatingPointError(f"non-finite training loss at global step {self.global_step} "
                                     f"(epoch {self.current_epoch}, batch {batch_idx}): {values}; lower the "
                                     "learning rate or check the inputs")
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items()})
        return loss

    def _from_datamodule(self, name: str) -> Any:
        """An attribute the data module may offer (``class_weights``, ``face_crop``); None without one."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        return getattr(datamodule, name, None)

    def _class_weights(self) -> Tensor | None:
        """Cross-entropy class weights the data module asks for (``data.balance: loss``), else None."""
        return self._from_datamodule("class_weights")

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self.val_metrics.update(self.fake_probability(batch["image"]), batch["label"], batch["video"],
                                batch["index"])

    @override
    def on_validation_epoch_end(self) -> None:
        if self.val_metrics.update_count:
            # Already synchronised by the metric; sync_dist averages identical values (and silences Lightning).
            self.log_dict({f"val/{k}": v for k, v in self.val_metrics.compute().items()}, sync_dist=True)
        self.val_metrics.reset()

    def _test_names(self) -> list[str]:
        from .data.datamodule import named_loaders

        return [name for name, _ in named_loaders(self.trainer.test_dataloaders, self.trainer.datamodule)]

    @override
    def on_test_start(self) -> None:
        self.test_metrics = nn.ModuleDict(
            {name: DetectionMetrics(self.hparams.threshold).to(self.device) for name in self._test_names()})

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        metric = list(self.test_metrics.values())[dataloader_idx]
        metric.update(self.fake_probability(batch["image"]), batch["label"], batch["video"], batch["index"])

    @override
    def on_test_epoch_end(self) -> None:
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir)  # every rank: a collective under DDP
        results = {}
        for name, metric in self.test_metrics.items():
            if not metric.update_count:
                continue
            values = metric.compute()
            self.log_dict({f"test/{name}/{k}": v for k, v in values.items()}, add_dataloader_idx=False,
                          sync_dist=True)
            self._save_roc(name, metric, folder)
            results[name] = {k: float(v) for k, v in values.items()}
        if results:
            self._save_results(results, folder)

    @rank_zero_only
    def _save_results(self, results: dict[str, dict[str, float]], folder: Path) -> None:
        from .report import results_markdown

        path = folder / "results.md"
        path.write_text(results_markdown(results, self.hparams.threshold, self.trainer.ckpt_path or ""))
        rank_zero_info(f"test results table: {path}")

    @rank_zero_only
    def _save_roc(self, name: str, metric: DetectionMetrics, folder: Path) -> None:
        from .plots import roc_figure  # matplotlib only when a test actually ends

        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"roc_{name.replace('/', '_')}.png"
        roc_figure(metric.curves, title=name, path=path)
        rank_zero_info(f"ROC curves for test set {name!r}: {path}")
        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key=f"test/{name}/roc", images=[str(path)])

    @override
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        return {"prob": self.fake_probability(batch["image"]), "label": batch["label"], "video": batch["video"],
                "index": batch["index"]}

    @override
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Once per optimizer step (not per accumulated batch), identically on every rank (same factors, same
        # grads-is-None pattern), after the step and before zero_grad: masked subspaces stay untouched.
        if self.adapter_config is not None:
            apply_constraints(self.backbone, optimizer, self.constraints)

    def num_trainable_parameters(self) -> int:
        """Trainable parameters (adapter factors + head, or whatever trains); call after ``configure_model()``."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @override
    def on_fit_start(self) -> None:
        rank_zero_info(f"MASMDetector: {self.num_trainable_parameters():,} trainable parameters "
                       f"({self.backbone_name}, adapters {self.hparams.adapters})")

    @override
    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.scheduler_factory(optimizer)}

    # --- checkpoints: what training changed, plus the identity of the frozen base ---

    def _trained_keys(self) -> set[str]:
        """The trainable parameters; the frozen backbone and the adapters' initial factors are rebuilt from the
        base weights (pinned by the fingerprint) in ``configure_model``."""
        return {name for name, p in self.named_parameters() if p.requires_grad}

    @override
    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        full = super().state_dict(*args, **kwargs)
        if self.backbone is None:
            return full
        prefix = kwargs.get("prefix", "")
        keep = self._trained_keys()
        # Only our own entries: `full` may be a parent's shared destination dict.
        for key in [k for k in full if k.startswith(prefix) and k[len(prefix):] not in keep]:
            del full[key]
        return full

    def _normalise_keys(self, state_dict: Mapping[str, Any]) -> dict[str, Any]:
        """Strip ``module.`` / ``model.`` prefixes (DataParallel, other trainers) where the bare key is ours."""
        known = set(super().state_dict().keys())
        out = {}
        for key, value in state_dict.items():
            bare = key
            while bare not in known and bare.startswith(_KEY_PREFIXES):
                bare = bare.split(".", 1)[1]
            out[bare if bare in known else key] = value
        return out

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if self.backbone is None:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        state_dict = self._normalise_keys(state_dict)
        known = set(super().state_dict().keys())
        missing = sorted(self._trained_keys() - state_dict.keys())
        unexpected = sorted(state_dict.keys() - known)
        if strict and (missing or unexpected):
            raise RuntimeError(
                f"checkpoint does not fit this MASMDetector ({self.backbone_name}, adapters "
                f"{self.hparams.adapters}): missing {len(missing)} trained keys {missing[:3]}, "
                f"unexpected {len(unexpected)} keys {unexpected[:3]}")
        super().load_state_dict({k: v for k, v in state_dict.items() if k in known}, strict=False, assign=assign)
        return _IncompatibleKeys(missing, unexpected)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = {"backbone": self.backbone_name, "backbone_kwargs": self.backbone_kwargs,
                                      "fingerprint": self.fingerprint, "adapters": self.hparams.adapters,
                                      "data_config": self.data_config, "face_crop": self._face_crop()}

    def _face_crop(self) -> dict[str, Any] | None:
        """How the training faces were cropped, so inference crops the same way (None if unknown)."""
        return self._from_datamodule("face_crop")

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get(CHECKPOINT_KEY, {}).get("fingerprint")
        if saved is not None and self.fingerprint is not None and saved != self.fingerprint:
            raise ValueError(
                f"checkpoint was trained on a {checkpoint[CHECKPOINT_KEY]['backbone']!r} backbone with weight "
                f"fingerprint {saved}, but this model's {self.backbone_name!r} backbone has {self.fingerprint}: "
                "load the same base weights as in training (model.pretrained / model.checkpoint_path)")
