"""Rebuilding a checkpoint's model from its saved config, checked against the original."""

from __future__ import annotations

import pytest
import torch

from ptool.core import checkpoint
from ptool.core.config import TrainConfig
from ptool.core.data import build_data
from ptool.core.errors import PtoolError
from ptool.core.models import build_model
from ptool.core.restore import model_from_checkpoint


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
