"""TrainConfig's one reader (from_dict): the types from the field annotations, unknown settings refused by
name wherever they come from (a dict, a config file, --set), and the round trip through to_dict."""

from __future__ import annotations

import re

import pytest
import yaml

from b2s_core.train.config import ConfigError, TrainConfig, resolve_config

PRETRAIN = {"stage": "pretrain", "data": ["b.h5"]}


def test_values_are_read_by_the_type_of_their_field():
    config = TrainConfig.from_dict({**PRETRAIN, "epochs": "3", "lr": "2e-4", "max_steps": None, "augment": "no",
                                    "seed": 4.0, "data": "b.h5", "model_overrides": {"embed_dim": 32}})
    assert (config.epochs, config.lr, config.max_steps, config.augment, config.seed) == (3, 2e-4, None, False, 4)
    assert config.data == ["b.h5"] and config.model_overrides == {"embed_dim": 32}


@pytest.mark.parametrize("key, value, message", [
    ("epochs", 3.5, "epochs must be int, got 3.5"),
    ("max_steps", "inf", "max_steps must be int, got 'inf'"),  # int | None: the int part
    ("seed", True, "seed must be int, got True"),
    ("augment", "maybe", "augment must be bool, got 'maybe'"),
    ("data", 5, "data must be list[str], got 5"),
    ("model", 5, "model must be str, got 5"),
    ("model_overrides", [1], "model_overrides must be dict, got [1]"),
    ("lr", None, "lr must not be empty"),
])
def test_a_value_of_the_wrong_type_is_refused_naming_the_setting_and_where(key, value, message):
    with pytest.raises(ConfigError, match=rf"^run\.yaml: {re.escape(message)}$") as err:
        TrainConfig.from_dict({**PRETRAIN, key: value}, where="run.yaml")
    assert err.value.key == key


def test_unknown_settings_are_all_refused_by_name_with_the_nearest_setting():
    with pytest.raises(ConfigError, match=r"^ckpt\.pt train_config: unknown settings 'colour', 'lrr' "
                                          r"\(did you mean 'lr'\?\)$"):
        TrainConfig.from_dict({**PRETRAIN, "lrr": 1e-3, "colour": "red"}, where="ckpt.pt train_config")


def test_config_files_and_set_overrides_name_where_an_unknown_setting_came_from(tmp_path):
    (tmp_path / "run.yaml").write_text("data: [b.h5]\nwarmup_step: 3\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown setting 'warmup_step' "
                                          r"\(did you mean 'warmup_steps'\?\)$"):
        resolve_config(config_file=tmp_path / "run.yaml")
    with pytest.raises(ConfigError, match=r"^--set: unknown setting 'lrr' \(did you mean 'lr'\?\)$"):
        resolve_config(options={"data": ["b.h5"]}, overrides=["lrr=1e-3"])


def test_a_config_survives_to_dict_yaml_and_from_dict(tmp_path):
    config = TrainConfig(stage="finetune", semantic_data=["s.h5"], strategy="multi-head", max_steps=7,
                         model_overrides={"image_size": [32, 64]}, lr=3e-4)
    config.save_yaml(tmp_path / "config.yaml")
    assert TrainConfig.from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == config
