"""The run config: conversion, precedence, and config files."""

from __future__ import annotations

import re

import pytest

from ptool.core.config import TrainConfig, convert, resolve_config
from ptool.core.errors import UsageError


def test_defaults_round_trip_through_plain_dict():
    config = TrainConfig()
    assert TrainConfig.from_dict(config.to_dict()) == config


def test_flag_strings_convert_to_field_types():
    assert convert("hidden", "512,256") == [512, 256]
    assert convert("betas", "0.8,0.99") == (0.8, 0.99)
    assert convert("shuffle", "false") is False
    assert convert("clip_norm", "none") is None
    assert convert("augment", "") == []  # `--augment ""`: none


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("optimizer", "lion"),
        ("batch_size", "ten"),
        ("betas", "0.9"),
        ("epochs", 1.5),
        ("milestones", 1.5),  # int(1.5) would be 1
        ("milestones", [2, 3.5]),
        ("epochs", True),  # YAML's `true` is no count
        ("lr", False),
        ("shuffle", 2),
    ],
)
def test_bad_values_are_usage_errors(name, value):
    with pytest.raises(UsageError):
        convert(name, value)


@pytest.mark.parametrize(
    ("name", "value", "source", "message"),
    [
        ("task", "foo", "option", "invalid value 'foo' for --task; valid: auto, "),
        ("hidden", "16,x", "option", "invalid value '16,x' for --hidden: expected an integer"),
        ("hidden", "16,,8", "run.yaml", "run.yaml: invalid value '16,,8' for --hidden: an empty"),
        ("out", " ", "option", "invalid value ' ' for --out: an empty value names nothing"),
        ("init_from", "", "run.yaml", "run.yaml: invalid value '' for --init-from: an empty"),
    ],
)
def test_bad_values_say_what_is_wrong(name, value, source, message):
    """A flag names itself (no "option:" label); Python's int() wording stays out."""
    with pytest.raises(UsageError) as info:
        convert(name, value, source=source)
    assert str(info.value).startswith(message)


def test_a_checkpoint_of_an_older_ptool_with_an_empty_value_still_loads():
    """Older ptools took `--init-from ''` as none and saved it: eval, resume and quantize of
    such a run failed with "the checkpoint's config is not valid here"."""
    saved = TrainConfig.from_dict({"init_from": "", "data_dir": ""}, source="checkpoint config")
    assert (saved.init_from, saved.data_dir) == ("", "")


@pytest.mark.parametrize(
    ("text", "message", "hint"),
    [  # Python's words were the reason: "float() argument must be a string or a real number"
        ("lr: [1]\n", "invalid value [1] for --lr: expected a number, not a list", None),
        ("lr: [2024-01-01]\n", 'invalid value ["2024-01-01"] for --lr: expected a number, not '
                                "a list", None),
        ("epochs: true\n", "invalid value true for --epochs: expected an integer", None),
        ("momentum: {a: 1}\n", 'invalid value {"a": 1} for --momentum: expected a number, not a '
                                "table", None),
        # another tool's name, no close spelling: no suggestion was made
        ("learning_rate: 0.1\n", "unknown option 'learning_rate'", "did you mean 'lr'?"),
        ("max_epochs: 3\n", "unknown option 'max_epochs'", "did you mean 'epochs'?"),
        # a group's name for one value was "unknown option 'loop'"
        ("loop: 3\n", "loop is a group of options, not one",
         "write its options under it, e.g. loop: {...}, or at the top level"),
    ],
)  # fmt: skip
def test_a_config_files_mistakes_are_said_in_its_own_terms(tmp_path, text, message, hint):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as refused:
        resolve_config(path)
    assert (str(refused.value), refused.value.hint) == (f"{path}: {message}", hint)


def test_unknown_key_suggests_the_close_one(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("batch_sise = 3\n")
    with pytest.raises(UsageError, match="batch_sise") as info:
        resolve_config(path)
    assert "batch_size" in info.value.hint


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_file_then_flags_precedence(tmp_path, suffix):
    path = tmp_path / f"run{suffix}"
    if suffix == ".toml":
        path.write_text("lr = 0.5\nepochs = 3\n[model]\nhidden = [32, 16]\n")
    else:
        path.write_text("lr: 0.5\nepochs: 3\nmodel:\n  hidden: [32, 16]\n")
    config = resolve_config(path, {"epochs": 7})
    assert (config.lr, config.epochs, config.hidden) == (0.5, 7, [32, 16])
    assert config.batch_size == TrainConfig().batch_size
    # an override's bad value or unknown name is its own, not the file's (the Python API)
    with pytest.raises(UsageError, match=r"^invalid value 'x' for --epochs: expected an int"):
        resolve_config(path, {"epochs": "x"})
    with pytest.raises(UsageError, match=r"^unknown option 'learning_rate'") as caught:
        resolve_config(path, {"learning_rate": 0.1})
    assert caught.value.hint == "did you mean 'lr'?"


def test_an_option_under_another_group_is_refused(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[data]\nlr = 0.3\n")
    with pytest.raises(UsageError, match=r"lr belongs under \[optimizer\], not \[data\]"):
        resolve_config(path)


@pytest.mark.parametrize(
    ("text", "places"),
    [
        ("epochs: 3\nloop:\n  epochs: 5\n", "epochs at the top level and as epochs under [loop]"),
        ("early-stop-patience: 3\nearly_stop_patience: 2\n", "early-stop-patience at the top"),
    ],
)
def test_an_option_given_twice_is_refused(tmp_path, text, places):
    """One of the two silently won (the group's 5 over the top level's 3)."""
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=r"is given twice: as " + re.escape(places)):
        resolve_config(path)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("run.yaml", "epochs: 2\nlr: 0.1\nepochs: 3\n", "epochs is given twice (lines 1 and 3)"),
        ("run.yaml", "optimizer:\n  lr: 0.1\noptimizer:\n  momentum: 0.9\n", "optimizer is"),
        ("run.yaml", "optimizer:\n  lr: 0.1\n  lr: 0.2\n", "lr is given twice (lines 2 and 3)"),
        ("run.json", '{"epochs": 2, "epochs": 3}', "epochs is given twice"),
        ("run.json", '{"optimizer": {"lr": 1, "lr": 2}}', "lr is given twice"),
        ("run.toml", "epochs = 2\nepochs = 3\n", "Cannot overwrite a value"),
    ],
)
def test_a_key_repeated_in_one_table_is_refused(tmp_path, name, text, message):
    """The YAML and JSON parsers keep the last value (a whole group block, the second time)."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(message)) as info:
        resolve_config(path)
    assert str(path) in str(info.value)


def test_yaml_merge_keys_may_be_overridden(tmp_path):
    """`<<: *anchor` then the same key is YAML's override, not a repeated key."""
    path = tmp_path / "run.yaml"
    path.write_text("optimizer:\n  <<: {lr: 0.1, momentum: 0.8}\n  lr: 0.2\n")
    config = resolve_config(path)
    assert (config.lr, config.momentum) == (0.2, 0.8)


def test_a_single_value_for_a_list_option_is_a_one_item_list(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: mlp\nhidden: 64\nclass_weights: 2\n")
    config = resolve_config(path)
    assert config.hidden == [64] and config.class_weights == [2.0]


def test_a_config_file_is_checked_when_read(tmp_path):
    """`train --resume --config` compares the file's values with the run's: they must be the
    converted, checked values, as resolve_config would build them."""
    from ptool.core.config import read_config_file

    path = tmp_path / "run.yaml"
    path.write_text("resized_crop_scale: [0.08, 1.0]\nlr: 1e-3\nepochs: '4'\n")
    assert read_config_file(path) == {"resized_crop_scale": (0.08, 1.0), "lr": 1e-3, "epochs": 4}
    path.write_text("lrr: 0.1\n")
    with pytest.raises(UsageError, match=f"{path}: unknown option 'lrr'"):
        read_config_file(path)
    # YAML reads these keys as an int and a bool ("unexpected AttributeError")
    for text, key in [("1: 2\n", "1"), ("optimizer:\n  on: 1\n", "True")]:
        path.write_text(text)
        with pytest.raises(UsageError, match=f"{path}: unknown option '{key}'"):
            read_config_file(path)


@pytest.mark.parametrize(("name", "text"), [("RUN.YAML", "epochs: 4\n"), ("x.TOML", "epochs = 4\n"),
                                            ("run.Json", '{"epochs": 4}')])  # fmt: skip
def test_a_config_files_extension_is_read_in_any_case(tmp_path, name, text):
    from ptool.core.config import read_config_file

    (tmp_path / name).write_text(text)
    assert read_config_file(tmp_path / name) == {"epochs": 4}


def test_a_folder_given_as_config_file_is_named_as_one(tmp_path):
    from ptool.core.config import read_config_file

    with pytest.raises(UsageError, match=f"config file {tmp_path} is a directory") as info:
        read_config_file(tmp_path)
    assert info.value.hint.endswith("(a run directory's resolved config)")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optimizer:\n  lr: -1\n", "--lr must be finite and positive, got -1.0"),
        ("batch_size: 0\n", "--batch-size must be at least 1, got 0"),
        ("hidden: [4, 0]\n", "--hidden must be at least 1, got 0"),
        ("pct_start: 1.5\n", "--pct-start must be in (0, 1), got 1.5"),
    ],
)
def test_a_config_file_value_out_of_range_names_the_file(tmp_path, text, message):
    """The same ranges as the flags' (check_config), refused naming the file the value is in."""
    from ptool.core.config import read_config_file

    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(UsageError, match=re.escape(f"{path}: {message}")):
        read_config_file(path)


def test_a_json_config_is_what_print_config_json_prints(tmp_path):
    from typer.testing import CliRunner

    from ptool.cli import app

    flags = ["--lr", "0.1", "--model", "mlp", "--hidden", "32,16", "--betas", "0.8,0.9"]
    flags.append("--no-shuffle")
    printed = CliRunner().invoke(app, ["train", *flags, "--print-config", "--json"])
    assert printed.exit_code == 0
    path = tmp_path / "run.json"
    path.write_text(printed.stdout)
    config = resolve_config(path)
    assert (config.lr, config.hidden, config.betas, config.shuffle) == (
        0.1,
        [32, 16],
        (0.8, 0.9),
        False,
    )
