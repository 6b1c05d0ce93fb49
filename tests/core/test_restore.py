"""Rebuilding a checkpoint's model from its saved config, checked against the original."""

from __future__ import annotations

import pytest
import torch

from ptool.core import checkpoint
from ptool.core.config import TrainConfig
from ptool.core.data import build_data
from ptool.core.errors import PtoolError
from ptool.core.models import build_model
from ptool.core.restore import config_and_info, model_from_checkpoint
from ptool.core.trust import TRUST_CODE_ENV


@pytest.mark.parametrize("model_name", ["mlp", "cnn"])
def test_rebuilt_model_matches_the_saved_one(tmp_path, model_name):
    config = TrainConfig(data="synthetic", shape="1x8x8", samples=64, model=model_name, seed=0)
    info = build_data(config).info
    model = build_model(config, info).eval()
    path = checkpoint.atomic_save(
        {
            "format": checkpoint.FORMAT,
            "format_version": checkpoint.FORMAT_VERSION,
            "model_state_dict": model.state_dict(),
            "config": config.to_dict(),
            "data_info": info.to_dict(),
        },
        tmp_path / "ckpt.pt",
    )
    rebuilt = model_from_checkpoint(checkpoint.load_checkpoint(path)).eval()
    x = torch.randn(4, *info.input_shape)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model(x))


def test_checkpoint_without_config_is_refused():
    with pytest.raises(PtoolError, match="cannot be rebuilt"):
        model_from_checkpoint({"model_state_dict": {}})


def test_a_checkpoints_model_code_runs_only_when_trusted(tmp_path, monkeypatch):
    """A checkpoint naming `module:function` as its model made eval, predict, resume, prune
    and quantize import that module (a planted helper file, or `this`, which prints) and call
    it, with nothing asked: like unpickling, it needs the user's word now."""
    (tmp_path / "planted.py").write_text(
        "import pathlib\n"
        "pathlib.Path(__file__).with_name('RAN').touch()\n"
        "import torch\n"
        "def build(input_shape, num_outputs):\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, num_outputs))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(TRUST_CODE_ENV, raising=False)
    config = TrainConfig(data="synthetic", shape="1x8x8", samples=64, model="planted:build")
    info = build_data(config).info
    ckpt = {"config": {**config.to_dict(), "download": True}, "data_info": info.to_dict()}
    with pytest.raises(PtoolError, match="model is planted:build: rebuilding it imports") as err:
        model_from_checkpoint(ckpt, load_weights=False)
    assert err.value.hint == (
        "only if you trust the checkpoint, rerun with --trust-code (or PTOOL_TRUST_CODE=1)"
    )
    assert not (tmp_path / "RAN").exists()
    monkeypatch.setenv(TRUST_CODE_ENV, "1")
    assert isinstance(model_from_checkpoint(ckpt, load_weights=False), torch.nn.Sequential)
    assert (tmp_path / "RAN").exists()
    # nor does a file reach the network by itself: --download is the user's flag
    assert config_and_info(ckpt)[0].download is False
