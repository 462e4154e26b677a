"""MASMDetector: a timm CLIP/ViT with MASM adapters and a binary head, as a LightningModule."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar, overload

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn
from torch.nn.modules.module import _IncompatibleKeys
from typing_extensions import override

from ..adapters import (
    MASMConfig,
    apply_constraints,
    constraint_metrics,
    route_subspaces,
)
from ..data.batch import has_images
from ..data.forgery_types import FORGERY_TYPES, routing_mask, shared_subspaces, subspace_assignment
from ..evaluation.loaders import named_loaders
from ..evaluation.metrics import DetectionMetrics
from ..performance import compile_module
from .backbone import create_backbone, create_head, data_config, freeze_norm_statistics, weights_fingerprint
from .checkpointing import run_checkpoints
from .hparams import check_hparams
from .lean_state import (
    CHECKPOINT_KEY,
    base_record,
    check_fingerprint,
    check_trained_keys,
    drop_untrained,
    normalise_keys,
    saved_base,
    trained_keys,
)
from .optim import MASMAdam, build_optimizers, trainable_parameters
from .placement import candidate_layers, inject_on_targets, place_adapters, selection_tails
from .selection import LayerSelection, select_layers

# MASMAdam, run_checkpoints and weights_fingerprint are named here too: configs and code of the previous layout
# import them from this module (it was the `model` module).
__all__ = ["CHECKPOINT_KEY", "MASMAdam", "MASMDetector", "run_checkpoints", "weights_fingerprint"]

_Destination = TypeVar("_Destination", bound=dict[str, Any])  # as nn.Module.state_dict's T_destination


class MASMDetector(LightningModule):
    """Real/fake face classifier: timm backbone (CLS pre-logits) + MASM adapters + linear head.

    Args:
        backbone: timm model name, e.g. ``vit_large_patch14_clip_quickgelu_224.openai`` (quickgelu matches
            OpenAI's weights; the plain ``_clip_`` name uses the wrong activation).
        backbone_kwargs: passed to ``timm.create_model`` (``depth``, ``img_size``, …).
        pretrained: load timm's pretrained weights (needs the hub or its cache); ``false`` says a random-init
            backbone is intended (tests, the demo); unset with no ``checkpoint_path`` warns that it is random.
        checkpoint_path: load backbone weights from a local file, OpenAI/open_clip ``visual.*`` or timm format, or a
            torchvision MobileNetV2 / lukemelas EfficientNet file (mapped by :mod:`masm_lightning.training.weights`);
            ``package://<module>/<file>`` names a file inside an installed Python package.
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
        freeze_norm_stats: a frozen backbone (adapters or linear probe) keeps its BatchNorm layers in eval mode while
            training: the pretrained running mean/var normalise every batch and are never updated, so the frozen
            weights compute what they were trained to (and injection stays exact). False updates the statistics
            from the training batches (they are then saved in checkpoints). Full fine-tuning always updates them.
        selection: FMSD (the paper's v3 reading): choose the layers to decompose among ``adapters``' targets from
            full-weight gradient GSNR at the start of ``fit``, before injection
            (:mod:`masm_lightning.training.selection`); None decomposes every target (v1). The chosen layers are kept in
            the checkpoint.
        image_size: side of the square input the data module resizes faces to; null takes the backbone's own
            (``img_size`` in ``backbone_kwargs``, else its pretrained configuration). A CNN runs at any size; a ViT's
            size is fixed by its position embeddings, so set ``backbone_kwargs.img_size`` there instead.
        compile: compile the backbone's forward (adapters included) with ``torch.compile`` in ``configure_model``,
            in place so checkpoint keys do not change (:func:`~masm_lightning.performance.compile_module`; when it
            pays: ``docs/benchmarks.md``).

    Model selection: ``monitor`` (``val/video_auc``, the validation split of the training data, never a test set)
    is maximised; every ``fit`` saves ``best.ckpt`` and ``last.ckpt`` in its run folder (:func:`run_checkpoints`).
    """

    monitor = "val/video_auc"
    mode = "max"

    def __init__(
        self,
        backbone: str = "vit_large_patch14_clip_quickgelu_224.openai",
        backbone_kwargs: dict[str, Any] | None = None,
        pretrained: bool | None = None,
        checkpoint_path: str | None = None,
        adapters: MASMConfig | None = MASMConfig(),  # noqa: B008 - an immutable-by-convention default
        freeze_backbone: bool = True,
        lambda_orth: float = 10.0,
        lambda_spec: float = 1.0,
        lambda_semantic: float = 0.0,
        spectral_cap: float | None = 2.0,
        optimizer: OptimizerCallable = MASMAdam,
        lr_scheduler: LRSchedulerCallable | None = None,
        threshold: float = 0.5,
        backbone_seed: int = 0,
        selection: LayerSelection | None = None,
        freeze_norm_stats: bool = True,
        image_size: int | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(adapters, Mapping):  # from a checkpoint's hyper-parameters
            adapters = MASMConfig(**adapters)
        if isinstance(selection, Mapping):
            selection = LayerSelection(**selection)
        self.constraints = check_hparams(
            backbone,
            dict(backbone_kwargs or {}),
            adapters,
            selection,
            lambda_orth,
            lambda_spec,
            lambda_semantic,
            spectral_cap,
            threshold,
            image_size,
        )
        self.backbone_name = backbone
        self.backbone_kwargs = dict(backbone_kwargs or {})
        self.image_size = image_size
        self.adapter_config = adapters
        self.optimizer_factory = optimizer
        self.scheduler_factory = lr_scheduler
        # Plain types only: checkpoints must load with torch.load(weights_only=True).
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "adapters", "selection"])
        self.hparams["adapters"] = None if adapters is None else dataclasses.asdict(adapters)
        self.selection = selection
        self.selection_scores: dict[str, float] | None = None
        self._record_selection()
        self.backbone: nn.Module | None = None
        self.head: nn.Linear | None = None
        self.fingerprint: str | None = None
        self.val_metrics = DetectionMetrics(threshold)
        self.test_metrics = nn.ModuleDict()
        self.test_results: dict[str, dict[str, float]] = {}  # per test set, after `test` (read by the reports)
        self._forgery_types = FORGERY_TYPES
        # The fake types routing assigns subspaces over (the training split's, set when a fit starts or restored
        # from its checkpoint); None: every type of the vocabulary.
        self.routed_types: list[str] | None = None
        self._assignment: Tensor | None = None
        self._shared: Tensor | None = None

    @property
    def forgery_types(self) -> tuple[str, ...]:
        """The forgery-type vocabulary: ``batch["forgery_type"]`` indexes it (0 ``real``, 1 ``unknown``, then the
        fake types; :mod:`masm_lightning.data.forgery_types`). Saved in checkpoints; a checkpoint from before the
        vocabulary existed loads with the current one."""
        return self._forgery_types

    @property
    def data_config(self) -> dict[str, Any]:
        """Input size, mean, std and interpolation the backbone expects; the data module follows it."""
        return data_config(self.backbone_name, self.backbone_kwargs, self.image_size)

    @override
    def configure_model(self) -> None:
        if self.backbone is not None:  # Lightning calls this again before loading a checkpoint
            return
        backbone = create_backbone(
            self.backbone_name,
            self.backbone_kwargs,
            self.hparams["pretrained"],
            self.hparams["checkpoint_path"],
            self.hparams["backbone_seed"],
        )
        self.fingerprint = weights_fingerprint(backbone)
        self.backbone = backbone
        self.head = create_head(backbone, self.backbone_name)
        if self.adapter_config is not None:
            backbone.requires_grad_(False)  # also while injection waits for a checkpoint's selection
            if self.selection is None:
                inject_on_targets(backbone, self._require_adapter_config(), self.backbone_name)
            else:
                self._inject(self._selected_layers())
        elif self.hparams["freeze_backbone"]:
            backbone.requires_grad_(False)
        compile_module(backbone, bool(self.hparams.get("compile", False)))

    def _require_backbone(self) -> nn.Module:
        """The backbone, which exists once ``configure_model()`` ran (the Trainer calls it)."""
        if self.backbone is None:
            raise RuntimeError(
                "MASMDetector has no backbone yet: call configure_model() first (Trainer.fit/test/predict call it)"
            )
        return self.backbone

    def _require_head(self) -> nn.Linear:
        if self.head is None:
            raise RuntimeError(
                "MASMDetector has no head yet: call configure_model() first (Trainer.fit/test/predict call it)"
            )
        return self.head

    def _require_adapter_config(self) -> MASMConfig:
        if self.adapter_config is None:
            raise RuntimeError("MASMDetector: model.adapters is null, so there are no adapters to place")
        return self.adapter_config

    def _selected_layers(self) -> list[str] | None:
        """Where FMSD puts adapters: the known selection, a fresh one when fitting, or None (test/predict without a
        known selection: ``on_load_checkpoint`` injects the checkpoint's layers)."""
        selection = self.selection
        if selection is None:
            raise RuntimeError("MASMDetector: FMSD layer selection called without model.selection")
        if selection.layers is None:
            if self._trainer is None or self.trainer.state.fn != "fit":
                return None
            backbone, config = self._require_backbone(), self._require_adapter_config()
            candidates = candidate_layers(backbone, config, self.backbone_name)
            tails = selection_tails(candidates, config)
            layers, self.selection_scores = select_layers(
                self.trainer,
                self,
                candidates,
                selection,
                self.task_loss,
                prefix="backbone.",
                head=self._require_head(),
                features=lambda batch: backbone(batch["image"]),
                tails=tails,
            )
            selection = self.selection = dataclasses.replace(selection, layers=tuple(layers))
            self._record_selection()
        return list(selection.layers or ())  # given or just selected: never None here

    def _inject(self, layers: list[str] | None) -> None:
        """Adapters on exactly ``layers`` (names inside the backbone), replacing any present; None injects none."""
        place_adapters(self._require_backbone(), self._require_adapter_config(), layers, self.backbone_name)

    def _record_selection(self) -> None:
        self.hparams["selection"] = None if self.selection is None else dataclasses.asdict(self.selection)

    def _norm_stats_frozen(self) -> bool:
        frozen_backbone = self.adapter_config is not None or self.hparams["freeze_backbone"]
        return frozen_backbone and self.hparams["freeze_norm_stats"]

    def _freeze_norms(self) -> None:
        if self.training and self.backbone is not None and self._norm_stats_frozen():
            freeze_norm_statistics(self.backbone)

    @override
    def train(self, mode: bool = True) -> MASMDetector:
        """Any loop's switch to training; a frozen backbone's BatchNorm stays in eval mode."""
        super().train(mode)
        self._freeze_norms()
        return self

    @override
    def on_train_start(self) -> None:
        # Lightning's fit loop never calls train() (and warns about eval-mode modules just before this hook); its
        # evaluation loops restore each module's own mode afterwards, so this holds for the whole fit.
        self._freeze_norms()

    @override
    def forward(self, images: Tensor) -> Tensor:
        """Logits (real, fake) for a batch of normalised images."""
        return self._require_head()(self._require_backbone()(images))

    def fake_probability(self, images: Tensor) -> Tensor:
        return self(images).softmax(-1)[:, 1]

    def task_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """The data term of the training loss: cross-entropy, class-weighted where the batch carries weights."""
        logits = self(batch["image"])
        if "weight" in batch:  # class weights carried by the batch (data.balance: loss): weighted-mean CE
            weight = batch["weight"].to(logits)
            return (F.cross_entropy(logits, batch["label"], reduction="none") * weight).sum() / weight.sum()
        return F.cross_entropy(logits, batch["label"])

    @property
    def subspace_assignment(self) -> tuple[int, ...]:
        """Per forgery type (index into :attr:`forgery_types`), the artifact subspace it trains under
        ``adapters.routing: type``, −1 for all (reals, unknown fakes): round-robin over :attr:`routed_types`
        (:func:`~masm_lightning.data.forgery_types.subspace_assignment`). Empty without adapters."""
        if self.adapter_config is None:
            return ()
        return subspace_assignment(self.adapter_config.num_subspaces, self.routed_types, self.forgery_types)

    def subspace_routing(self, batch: Mapping[str, Tensor]) -> Tensor | None:
        """(B, K) bool: the subspaces each sample of a training batch may train (``adapters.routing: type``: a fake
        trains its type's subspace, reals and unknown fakes all K; a subspace no trained type owns is shared by all
        samples), or None where nothing is routed (routing ``none``, no adapters, K = 1, or a batch without
        ``forgery_type``)."""
        config = self.adapter_config
        if config is None or config.routing != "type" or config.num_subspaces == 1 or "forgery_type" not in batch:
            return None
        types = batch["forgery_type"]
        if self._assignment is None or self._assignment.device != types.device:
            self._assignment = torch.tensor(self.subspace_assignment, device=types.device)
            shared = shared_subspaces(config.num_subspaces, self.routed_types, self.forgery_types)
            self._shared = torch.tensor(shared, device=types.device)
        return routing_mask(types, self._assignment, config.num_subspaces, self._shared)

    def sample_loss(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-sample cross-entropy (B,), unweighted, routed as :meth:`training_step` routes: what
        ``SelectiveLayerMask`` splits by forgery type (so each type's gradient is what it really trains)."""
        with route_subspaces(self._require_backbone(), self.subspace_routing(batch)):
            return F.cross_entropy(self(batch["image"]), batch["label"], reduction="none")

    @override
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        if not has_images(batch):  # every frame of the batch was unreadable (data.collate_frames): skip the step
            return None
        with route_subspaces(self._require_backbone(), self.subspace_routing(batch)):
            terms = {"ce": self.task_loss(batch)}
        loss = terms["ce"]  # the constraints are a separate step (optimizer_step): p.grad is the task's alone
        if self.adapter_config is not None and (
            self.hparams["lambda_orth"] or self.hparams["lambda_spec"] or self.hparams["lambda_semantic"]
        ):
            # What the active constraints bound, as of the last step (T×T Grams: cheap): max ‖UᵀU − I‖_F,
            # max |s − s0|/σ_r, max ‖P_f U‖_F over the decomposed matrices.
            found = constraint_metrics(self._require_backbone(), semantic=bool(self.hparams["lambda_semantic"]))
            names = {
                "orth": ("lambda_orth", "orth_error"),
                "spec": ("lambda_spec", "spectral_drift"),
                "semantic": ("lambda_semantic", "semantic_overlap"),
            }
            terms |= {key: found[metric] for key, (lam, metric) in names.items() if self.hparams[lam]}
        if not torch.isfinite(loss):
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            raise FloatingPointError(
                f"non-finite training loss at global step {self.global_step} "
                f"(epoch {self.current_epoch}, batch {batch_idx}): {values}; lower the "
                "learning rate or check the inputs"
            )
        self.log("train/loss", loss, prog_bar=True)
        self.log_dict({f"train/{k}": v for k, v in terms.items()})
        return loss

    @override
    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if not has_images(batch):  # every frame unreadable: nothing to score (the report counts them)
            return
        self.val_metrics.update(self.fake_probability(batch["image"]), batch["label"], batch["video"], batch["index"])

    @override
    def on_validation_epoch_end(self) -> None:
        if self.val_metrics.update_count:
            # Already synchronised by the metric; sync_dist averages identical values (and silences Lightning).
            self.log_dict({f"val/{k}": v for k, v in self.val_metrics.compute().items()}, sync_dist=True)
        self.val_metrics.reset()

    def _test_names(self) -> list[str]:
        # Set by Lightning's data connector; not declared on Trainer.
        datamodule: LightningDataModule | None = self.trainer.datamodule  # type: ignore[attr-defined]
        return [name for name, _ in named_loaders(self.trainer.test_dataloaders, datamodule)]

    def _test_metric_items(self) -> list[tuple[str, DetectionMetrics]]:
        """``test_metrics`` in loader order, typed (nn.ModuleDict types its values as plain Modules)."""
        items = []
        for name, metric in self.test_metrics.items():
            if not isinstance(metric, DetectionMetrics):
                raise TypeError(
                    f"MASMDetector.test_metrics[{name!r}] is a {type(metric).__name__}, not a DetectionMetrics"
                )
            items.append((name, metric))
        return items

    @override
    def on_test_start(self) -> None:
        self.test_results = {}
        self.test_metrics = nn.ModuleDict(
            {name: DetectionMetrics(self.hparams["threshold"]).to(self.device) for name in self._test_names()}
        )

    @override
    def test_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        if not has_images(batch):
            return
        _, metric = self._test_metric_items()[dataloader_idx]
        metric.update(self.fake_probability(batch["image"]), batch["label"], batch["video"], batch["index"])

    @override
    def on_test_epoch_end(self) -> None:
        for name, metric in self._test_metric_items():
            if not metric.update_count:
                continue
            values = metric.compute()  # synchronised; the scores stay in metric.curves for the ROC plots
            self.log_dict({f"test/{name}/{k}": v for k, v in values.items()}, add_dataloader_idx=False, sync_dist=True)
            self.test_results[name] = {k: float(v) for k, v in values.items()}

    @override
    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        if not has_images(batch):
            empty = torch.empty(0, device=self.device)
            return {"prob": empty, "label": empty.long(), "video": empty.long(), "index": empty.long()}
        return {
            "prob": self.fake_probability(batch["image"]),
            "label": batch["label"],
            "video": batch["video"],
            "index": batch["index"],
        }

    @override
    def configure_callbacks(self) -> list[Callback]:
        # Fitting only: evaluation runs write no checkpoints (and restore none of the checkpoint callbacks' state).
        # The policy replaces the trainer's checkpoint callbacks; a trainer built with enable_checkpointing=False
        # has none and keeps none.
        if self._trainer is None or self.trainer.state.fn != "fit" or not self.trainer.checkpoint_callbacks:
            return []
        return [*run_checkpoints(self.monitor, self.mode)]

    @override
    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Once per optimizer step (not per accumulated batch), identically on every rank (same factors, same
        # grads-is-None pattern), after the step and before zero_grad: masked subspaces stay untouched.
        if self.adapter_config is not None:
            apply_constraints(self._require_backbone(), optimizer, self.constraints)

    def num_trainable_parameters(self) -> int:
        """Trainable parameters (adapter factors + head, or whatever trains); call after ``configure_model()``."""
        return trainable_parameters(self)

    @override
    def on_fit_start(self) -> None:
        # Routing assigns subspaces over the training split's fake types (the same on every rank: every rank reads
        # the same manifest); a resumed run keeps its checkpoint's.
        trained = getattr(getattr(self.trainer, "datamodule", None), "trained_forgery_types", None)
        if self.routed_types is None and trained is not None:
            self.routed_types = [name for name in trained if name not in self.forgery_types[:2]]
            self._assignment = None
        rank_zero_info(
            f"MASMDetector: {self.num_trainable_parameters():,} trainable parameters "
            f"({self.backbone_name}, adapters {self.hparams['adapters']})"
        )

    @override
    def configure_optimizers(self) -> Any:
        return build_optimizers(self.parameters(), self.optimizer_factory, self.scheduler_factory)

    # --- checkpoints: what training changed, plus the identity of the frozen base ---

    def _trained_keys(self) -> set[str]:
        return trained_keys(self, self.backbone, self._norm_stats_frozen())

    # The overloads are nn.Module.state_dict's own; the implementation forwards whatever it is given.
    @overload
    def state_dict(self, *, destination: _Destination, prefix: str = ..., keep_vars: bool = ...) -> _Destination: ...

    @overload
    def state_dict(self, *, prefix: str = ..., keep_vars: bool = ...) -> dict[str, Any]: ...

    @override
    def state_dict(self, *args: Any, **kwargs: Any) -> Any:
        full = super().state_dict(*args, **kwargs)
        if self.backbone is None:
            return full
        drop_untrained(full, kwargs.get("prefix", ""), self._trained_keys())
        return full

    @override
    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        if self.backbone is None:
            return super().load_state_dict(state_dict, strict=strict, assign=assign)
        known = set(super().state_dict().keys())
        state_dict = normalise_keys(state_dict, known)
        missing, unexpected = check_trained_keys(
            state_dict.keys(),
            known,
            self._trained_keys(),
            strict,
            f"{self.backbone_name}, adapters {self.hparams['adapters']}",
        )
        super().load_state_dict({k: v for k, v in state_dict.items() if k in known}, strict=False, assign=assign)
        return _IncompatibleKeys(missing, unexpected)

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = base_record(
            self.backbone_name,
            self.backbone_kwargs,
            self.fingerprint,
            self.hparams["adapters"],
            self.data_config,
            self.forgery_types,
            self.routed_types,
            None if self.selection is None else (self.selection.layers or ()),
            self.selection_scores,
        )

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = saved_base(checkpoint)
        vocabulary = saved.get("forgery_types")
        if vocabulary:
            self._forgery_types = tuple(vocabulary)
        self.routed_types = saved.get("routed_types")
        self._assignment = None
        chosen = (saved.get("selection") or {}).get("layers")
        if chosen and self.adapter_config is not None and self.backbone is not None:
            # An FMSD checkpoint: adapters on the layers it selected, whatever this run's config would choose.
            self._inject(list(chosen))
            self.selection = dataclasses.replace(self.selection or LayerSelection(), layers=tuple(chosen))
            self.selection_scores = checkpoint[CHECKPOINT_KEY]["selection"].get("scores")
            self._record_selection()
        check_fingerprint(checkpoint, self.backbone_name, self.fingerprint)
