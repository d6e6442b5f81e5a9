"""The training configuration: one typed dataclass, loaded from YAML / TOML plus overrides.

Precedence (lowest first): the dataclass defaults (the paper's recipe, section 4.1), a config file
(``--config run.yaml``), then command-line options and ``--set key=value`` overrides. The resolved
configuration is written to ``<out>/config.yaml`` and travels inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
import math
import sys
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from b2s_core.errors import B2SError
from b2s_core.output_paths import atomic_path

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: the same parser, published as tomli (a dependency there)
    import tomli as tomllib

STAGES = ("pretrain", "finetune")
STRATEGIES = ("intermediate", "multi-head", "replace-head")
BINARY_DATA = ("bstar", "b")
AMP_MODES = ("none", "bf16", "fp16")
SCHEDULES = ("cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(B2SError, ValueError):
    """A configuration value or file that cannot be used; ``key``: the one setting it is about, if one."""

    def __init__(self, message: str, *, key: str | None = None, problem: str | None = None) -> None:
        super().__init__(message)
        self.key = key  # the setting at fault: resolve_config names where it came from (file, option, --set)
        self.problem = problem  # the message without the setting's name


def _bad_value(key: str, problem: str) -> ConfigError:
    return ConfigError(f"{key} {problem}", key=key, problem=problem)


# Settings each stage reads; given (at a value other than the default) to the other stage they would
# be silently ignored, so resolve_config refuses them.
FINETUNE_ONLY = ("init", "semantic_data", "pseudo_data", "pretrain_data", "strategy", "binary_data", "offboard",
                 "class_balance", "semantic_loss_weight")
PRETRAIN_ONLY = ("data",)


@dataclass
class TrainConfig:
    stage: str = "pretrain"  # 'pretrain' (binary loss only) or 'finetune'
    out: str = "runs/run"  # run folder: config.yaml, checkpoints, metrics

    # -- model ------------------------------------------------------------------------------------
    model: str | None = None  # variant: sparse-ls, sparse-bevformer, ls, bevformer (fine-tuning: from --init)
    preset: str = "small"  # 'paper' for the paper's sizes; small / tiny for CPU
    model_overrides: dict = field(default_factory=dict)  # ModelConfig fields to change, e.g. {image_hw: [128, 352]}
    # Local ImageNet (torchvision layout) or detector checkpoint (backbone. / img_backbone. keys) for
    # the image backbone of a model trained from scratch; never downloaded. None: random init.
    backbone_weights: str | None = None
    frozen_stages: int = -1  # backbone stages kept frozen: -1 none, 0 the stem, n the stem + stages 1..n
    norm_eval: bool = False  # keep the backbone's BatchNorm statistics frozen while training

    # -- data -------------------------------------------------------------------------------------
    data: list[str] = field(default_factory=list)  # pre-training (binary) shards
    semantic_data: list[str] = field(default_factory=list)  # fine-tuning: labelled shards (S)
    pseudo_data: list[str] = field(default_factory=list)  # fine-tuning: pseudo-label files (Top1 / Top2), mixed with S
    pretrain_data: list[str] = field(default_factory=list)  # fine-tuning with binary_data='b': the binary set (B)
    val_data: list[str] = field(default_factory=list)  # periodic validation (IoU / mIoU)
    augment: bool = True  # BEVDet-style image + BEV augmentation on the training set
    use_camera_mask: bool = False  # score / train only voxels of mask_camera (Occ3D's camera-visible protocol)

    # -- fine-tuning --------------------------------------------------------------------------------
    init: str | None = None  # checkpoint to start from (the pre-trained model)
    strategy: str = "intermediate"  # intermediate | multi-head | replace-head (paper, Fig. 4)
    binary_data: str = "bstar"  # bstar: binaries of the semantic set (S+B*); b: plus pre-training batches (S+B)
    offboard: bool = False  # auto-labelling model: GT binary as input, semantic (focal) loss only

    # -- optimisation (paper, section 4.1) ------------------------------------------------------------
    # None: the paper's 24 (section 4.1), or 64 for the offboard auto-labelling model (section 4.2).
    epochs: int | None = None
    batch_size: int = 8  # global batch over all processes (the paper's 8); must divide by the process count
    lr: float = 2e-4
    weight_decay: float = 1e-2
    schedule: str = "cosine"  # cosine decay to min_lr_ratio * lr after a linear warm-up, or constant
    warmup_steps: int = 500  # capped at a tenth of the run so that short runs still decay
    min_lr_ratio: float = 1e-3
    grad_clip: float = 5.0  # max global gradient norm (BEVDet's value); 0 disables clipping
    binary_loss_weight: float = 1.0
    semantic_loss_weight: float = 1.0
    # LiDAR depth supervision of the Lift-Splat depth distribution, as in the paper's code base (COTR,
    # after BEVDet: loss_depth_weight 0.05), on frames that carry LiDAR points; 0 turns it off.
    depth_loss_weight: float = 0.05
    # Class weights of the focal loss, (mean count / count_c) ** class_balance over the training labels:
    # 0 = unweighted (the paper); 0.5 helps short runs learn the rare classes (b2s_core.train.class_weights).
    class_balance: float = 0.0
    # The BCE's weight of occupied voxels, (free / occupied) ** binary_balance over the training data's
    # binary targets: 0 = unweighted (the paper); 0.5 helps short runs learn what stands on the ground.
    binary_balance: float = 0.0
    amp: str = "none"  # none | bf16 | fp16 (CUDA only; ignored with a warning on CPU)
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    seed: int = 0

    # -- run control --------------------------------------------------------------------------------
    device: str = "auto"  # auto (CUDA when available) | cpu | cuda
    workers: int = 2  # DataLoader worker processes per training process
    max_steps: int | None = None  # cap on optimiser steps (short runs, smoke tests); changes the schedule
    # Stop at this step leaving a checkpoint (time-limited jobs); the schedule is unchanged.
    stop_after_steps: int | None = None
    log_every_steps: int = 10
    ckpt_every_steps: int = 0  # also checkpoint every this many steps (0: only at epoch ends)
    ckpt_every_epochs: int = 1  # checkpoint at the end of every this many epochs (and always at the end of the run)
    val_every_epochs: int = 1
    resume: bool = False  # continue from <out>/checkpoint.pt exactly where it stopped

    def __post_init__(self) -> None:
        if self.epochs is None:
            self.epochs = self.default_epochs(self.offboard)
        for name in ("data", "semantic_data", "pseudo_data", "pretrain_data", "val_data"):
            value = getattr(self, name)
            setattr(self, name, [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value or []])
        self.validate()

    def validate(self) -> None:
        self._check_choices()
        self._check_numbers()
        if not self.resume:  # a resumed run's data settings come from its saved config
            self._check_data()

    def _check_choices(self) -> None:
        for name, options in (("stage", STAGES), ("strategy", STRATEGIES), ("binary_data", BINARY_DATA),
                              ("amp", AMP_MODES), ("schedule", SCHEDULES), ("device", DEVICES)):
            if getattr(self, name) not in options:
                raise _bad_value(name, f"must be one of {', '.join(options)}, got {getattr(self, name)!r}")

    def _check_numbers(self) -> None:
        for f in dataclasses.fields(self):  # NaN passes every comparison below: refuse it (and inf) first
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise _bad_value(f.name, f"must be a finite number, got {value}")
        for name in AT_LEAST_ONE:
            value = getattr(self, name)
            if value is not None and value < 1:
                raise _bad_value(name, f"must be at least 1, got {value}")
        for name in NOT_NEGATIVE:
            if getattr(self, name) < 0:
                raise _bad_value(name, f"must not be negative, got {getattr(self, name)}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise _bad_value("min_lr_ratio", f"must lie in 0..1 (a fraction of lr), got {self.min_lr_ratio}")
        if not -1 <= self.frozen_stages <= 4:
            raise _bad_value("frozen_stages", f"must lie in -1..4 (-1: train every stage), got {self.frozen_stages}")

    def _check_data(self) -> None:
        """The data each stage needs, and the pairs of settings that contradict each other."""
        if self.stage == "pretrain" and not self.data:
            raise ConfigError("pre-training needs binary data (--data FILE.h5)")
        if self.stage != "finetune":
            return
        if not self.semantic_data and not self.pseudo_data:
            raise ConfigError("fine-tuning needs semantic data (--semantic-data FILE.h5) or pseudo-labels "
                              "(--pseudo-data)")
        if self.binary_data == "b" and not self.pretrain_data and not self.offboard and self.strategy != "replace-head":
            raise ConfigError("--binary-data b adds pre-training batches: give them with --pretrain-data FILE.h5")
        if self.init and self.backbone_weights:
            raise ConfigError("--backbone-weights initialises the backbone of a model trained from scratch; "
                              "--init already brings a trained one: give one of the two")

    @staticmethod
    def default_epochs(offboard: bool) -> int:
        """The paper's training length: 24 epochs (section 4.1), 64 for the offboard model (section 4.2)."""
        return 64 if offboard else 24

    # -- serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "config") -> TrainConfig:
        """The one reader of settings as plain values (a config file, a saved config.yaml, a checkpoint's
        train_config): unknown settings are refused by name, each value is checked against its type."""
        refuse_unknown_settings(values, where)
        coerced = {}
        for key, value in values.items():
            try:
                coerced[key] = _coerce(value, SETTING_TYPES[key])
            except ConfigError as err:
                raise ConfigError(f"{where}: {key} {err}", key=key, problem=str(err)) from None
        return cls(**coerced)

    def save_yaml(self, path: str | Path) -> None:
        """Write atomically (temp file + rename)."""
        with atomic_path(path) as temp:
            temp.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
SETTINGS = tuple(FIELDS)
SETTING_TYPES = typing.get_type_hints(TrainConfig)  # the annotations as types: int | None, list[str], ...


# Counts and periods of at least 1 (None, where allowed, means "no limit"), and values never negative.
AT_LEAST_ONE = ("epochs", "batch_size", "log_every_steps", "val_every_epochs", "ckpt_every_epochs", "max_steps",
                "stop_after_steps")
NOT_NEGATIVE = ("lr", "weight_decay", "grad_clip", "warmup_steps", "workers", "ckpt_every_steps", "binary_loss_weight",
                "semantic_loss_weight", "depth_loss_weight", "class_balance", "binary_balance", "seed")


def refuse_unknown_settings(values: Mapping[str, Any], where: str) -> None:
    """The policy on names TrainConfig does not have: refuse them all, each with the setting it was
    probably meant to be, saying where they came from."""
    unknown = sorted(set(values) - set(SETTINGS))
    if unknown:
        names = ", ".join(f"'{name}'{_suggestion(name)}" for name in unknown)
        raise ConfigError(f"{where}: unknown setting{'s' * (len(unknown) > 1)} {names}")


def _suggestion(name: str) -> str:
    """``'lrr'`` -> ``" (did you mean 'lr'?)"``; ``''`` when no setting is close."""
    close = difflib.get_close_matches(name, SETTINGS, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _coerce(value: Any, hint: Any) -> Any:
    """Check / convert one setting to its declared type (YAML may give '2e-4' as a string).

    ``hint``: the field's type from ``typing.get_type_hints`` (``int``, ``str | None``, ``list[str]``...).
    """
    args = typing.get_args(hint)
    if type(None) in args:  # X | None
        if value is None:
            return None
        (hint,) = [arg for arg in args if arg is not type(None)]
    elif value is None:
        raise ConfigError("must not be empty")
    try:
        return _READERS[typing.get_origin(hint) or hint](value)
    except (TypeError, ValueError, OverflowError):
        name = str(hint) if typing.get_args(hint) else hint.__name__  # 'list[str]', 'int'
        raise ConfigError(f"must be {name}, got {value!r}") from None


_TRUE, _FALSE = ("true", "yes", "1"), ("false", "no", "0")


def _read_bool(value: Any) -> bool:
    if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
        return value.lower() in _TRUE
    if not isinstance(value, bool):
        raise ValueError(value)
    return value


def _read_int(value: Any) -> int:
    if isinstance(value, bool) or float(value) != int(float(value)):  # 3.0 and '3' are 3; 3.5 and True are not
        raise ValueError(value)
    return int(float(value))


def _read_str(value: Any) -> str:
    if not isinstance(value, (str, Path)):
        raise ValueError(value)
    return str(value)


def _read_str_list(value: Any) -> list[str]:
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


def _read_dict(value: Any) -> dict:
    if not isinstance(value, Mapping):
        raise ValueError(value)
    return dict(value)


# The reader of each type a TrainConfig field has (list: list[str], the shard lists).
_READERS = {bool: _read_bool, int: _read_int, float: float, str: _read_str, list: _read_str_list, dict: _read_dict}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (.yaml / .yml) or TOML (.toml) file -> a dict of settings."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        if path.suffix == ".toml":
            values = tomllib.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            values = yaml.safe_load(path.read_text()) or {}
        else:
            raise ConfigError(f"{path}: config files must end in .yaml, .yml or .toml")
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"{path}: cannot parse ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return values


def parse_set_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["lr=1e-4", "model_overrides={image_hw: [64, 176]}"]`` -> dict; values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, text = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--set {key}: cannot parse value {text!r}") from None
    return out


def resolve_config(
    *, config_file: str | Path | None = None, options: Mapping[str, Any] | None = None,
    overrides: list[str] | None = None, defaults: Mapping[str, Any] | None = None,
) -> TrainConfig:
    """Dataclass defaults < ``defaults`` (a command's own) < config file < explicit options (``None``
    means "not given") < ``--set`` overrides.

    The command's ``options`` carry its ``stage``: a file or ``--set`` naming the other stage is
    refused, as are settings the run would silently ignore (:func:`_check_given`). An error about
    one setting names where that setting came from: the file, the option or ``--set``.
    """
    options = {k: v for k, v in (options or {}).items() if v is not None}
    values, origin = _merge(_layers(config_file, options, overrides, defaults), stage=options.get("stage"))
    for name in DATA_FIELDS:
        if values.get(name):
            values[name] = expand_globs(values[name])
    try:
        config = TrainConfig.from_dict(values, where="")
        _check_given(config, {k for k in values if origin[k] != "defaults"})
    except ConfigError as err:
        raise _placed(err, origin.get(err.key or "", "")) from None
    return config


def _layers(config_file: str | Path | None, options: dict[str, Any], overrides: list[str] | None,
            defaults: Mapping[str, Any] | None) -> list[tuple[str, dict[str, Any]]]:
    """(where, settings) from the lowest precedence to the highest."""
    layers = [("defaults", dict(defaults or {}))]
    if config_file is not None:
        layers.append((str(config_file), read_config_file(config_file)))
    return layers + [("options", options), ("--set", parse_set_overrides(overrides))]


def _merge(layers: list[tuple[str, dict[str, Any]]], stage: str | None) -> tuple[dict[str, Any], dict[str, str]]:
    """The settings of all layers, each from the last layer that sets it, and that layer's name per setting.
    Unknown settings and another stage's settings are refused naming the layer they came from."""
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for where, layer in layers:
        refuse_unknown_settings(layer, where)
        _check_stage(where, layer, stage)
        values.update(layer)
        origin.update(dict.fromkeys(layer, where))
    return values, origin


def _check_stage(where: str, layer: Mapping[str, Any], stage: str | None) -> None:
    """A file or ``--set`` naming the other stage than the command's is refused."""
    if stage is not None and layer.get("stage", stage) != stage:
        place = "--set stage" if where == "--set" else f"{where}: stage"
        raise ConfigError(f"{place} is '{layer['stage']}': these settings are for b2s {layer['stage']}, "
                          f"not b2s {stage}", key="stage")


def _placed(err: ConfigError, where: str) -> ConfigError:
    """The error about one setting, told where that setting came from: ``run.yaml: lr ...``,
    ``--set lr: ...`` or ``--lr ...`` (an option); other errors as they are."""
    if err.key is None or err.problem is None or where in ("", "defaults"):
        return ConfigError(str(err).removeprefix(": "), key=err.key)
    if where == "options":
        return ConfigError(f"{OPTION_FLAGS.get(err.key, '--' + err.key.replace('_', '-'))} {err.problem}", key=err.key)
    if where == "--set":
        return ConfigError(f"--set {err.key}: {err.problem}", key=err.key)
    return ConfigError(f"{where}: {err.key} {err.problem}", key=err.key)


# Settings whose command-line option is not --<key with dashes>.
OPTION_FLAGS = {"use_camera_mask": "--camera-mask"}


def _check_given(config: TrainConfig, given: set[str]) -> None:
    """Refuse settings the run would silently ignore. ``given``: the settings from a file, an option or
    ``--set``; one at its default value counts as not given (a saved config.yaml holds every key)."""
    changed = {name for name in given if getattr(config, name) != _default(name)}
    if config.stage == "pretrain":
        _refuse_given(changed, FINETUNE_ONLY, "is a fine-tuning setting (b2s finetune); pre-training would ignore it")
        return
    _refuse_given(changed, PRETRAIN_ONLY, "is pre-training data (b2s pretrain); fine-tuning reads semantic_data, "
                                          "pseudo_data and pretrain_data")
    if config.offboard:
        _refuse_given(changed, ("strategy", "binary_data", "pretrain_data"), "applies to the online model's "
                      "fine-tuning; offboard (the auto-labeller, focal loss only) would ignore it")
    else:
        _check_binary_data(config)
    if config.init and "preset" in changed:
        raise _bad_value("preset", "sets the model sizes of a model trained from scratch; --init brings its own")


def _default(name: str) -> Any:
    field_ = FIELDS[name]
    return field_.default if field_.default_factory is dataclasses.MISSING else field_.default_factory()


def _refuse_given(changed: set[str], names: tuple[str, ...], problem: str) -> None:
    """The first of ``names`` (in their order) that was given, refused with ``problem``."""
    for name in names:
        if name in changed:
            raise _bad_value(name, problem)


def _check_binary_data(config: TrainConfig) -> None:
    """Pre-training batches (binary_data b, from pretrain_data) feed the binary head: a run that drops it
    (replace-head) or does not draw them (bstar) would ignore them."""
    if config.pretrain_data and (config.binary_data != "b" or config.strategy == "replace-head"):
        raise _bad_value("pretrain_data", "is drawn from only with binary_data b and a strategy that keeps the "
                                          f"binary head (binary_data is '{config.binary_data}', strategy "
                                          f"'{config.strategy}')")
    if config.binary_data == "b" and config.strategy == "replace-head":
        raise _bad_value("binary_data", "b adds pre-training batches for the binary head, which replace-head "
                                        "drops: use bstar")


DATA_FIELDS = ("data", "semantic_data", "pseudo_data", "pretrain_data", "val_data")


def expand_globs(paths: str | list[str]) -> list[str]:
    """Shard lists may hold globs ('shards/*.h5'), expanded in sorted order so that the saved
    config names the files; a pattern that matches nothing stays, to be reported as missing."""
    out: list[str] = []
    for path in [paths] if isinstance(paths, (str, Path)) else paths:
        text = str(path)
        matches = sorted(glob.glob(text)) if any(ch in text for ch in "*?[") else []
        out.extend(matches or [text])
    return out
