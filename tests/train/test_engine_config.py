"""DeepSpeed config derivation: batch arithmetic, precision, ZeRO stage, LR schedule."""
from __future__ import annotations

import json
import math

import pytest

from chunksft.train.config import ConfigError, load_config

engine = pytest.importorskip("chunksft.train.engine")


def test_auto_entries_are_filled_from_the_train_config():
    cfg = load_config(["--batch_size", "3", "--gradient_accumulation_steps", "4", "--max_grad_norm", "0.5"])
    ds = engine.deepspeed_config(cfg, world_size=2)
    assert ds["train_micro_batch_size_per_gpu"] == 3 and ds["gradient_accumulation_steps"] == 4
    assert ds["train_batch_size"] == 3 * 4 * 2
    assert ds["gradient_clipping"] == 0.5
    assert ds["bf16"]["enabled"] is False and ds["fp16"]["enabled"] is False
    assert ds["zero_optimization"]["stage"] == 3
    assert "checkpoint" not in ds
    assert engine.deepspeed_config(cfg, 2, load_universal=True)["checkpoint"]["load_universal"] is True
    bf16 = engine.deepspeed_config(load_config(["--dtype", "bfloat16"]), 1)
    assert bf16["bf16"]["enabled"] is True


def test_offload_config_is_zero3_with_cpu_offload():
    ds = engine.deepspeed_config(load_config(["--deepspeed_config", "configs/deepspeed/zero3_offload.json"]), 1)
    assert ds["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert ds["zero_optimization"]["offload_param"]["device"] == "cpu"


@pytest.mark.parametrize("entry, expected", [
    ({"train_batch_size": 7}, "train_batch_size = 7 disagrees with the train config (16 = batch_size 8 x"),
    ({"train_micro_batch_size_per_gpu": 2}, "train_micro_batch_size_per_gpu = 2 disagrees"),
    ({"zero_optimization": {"stage": 2}}, "zero_optimization.stage = 2"),
])
def test_inconsistent_json_is_one_line(tmp_path, entry, expected):
    ds = json.loads(open(engine.resolve_path("configs/deepspeed/zero3.json")).read())
    ds.update(entry)
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(ds))
    with pytest.raises(ConfigError) as info:
        engine.deepspeed_config(load_config(["--deepspeed_config", str(path), "--batch_size", "8"]), world_size=2)
    assert expected in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_missing_or_broken_json(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        engine.deepspeed_config(load_config(["--deepspeed_config", str(tmp_path / "nope.json")]), 1)
    bad = tmp_path / "bad.json"
    bad.write_text("{\n  \"a\": ,\n}")
    with pytest.raises(ConfigError, match="line 2: invalid JSON"):
        engine.deepspeed_config(load_config(["--deepspeed_config", str(bad)]), 1)


def test_warmup_then_cosine_to_the_floor():
    f = engine.warmup_cosine(warmup_steps=4, total_steps=14, min_lr_ratio=0.1)
    assert [f(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert f(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(14) == pytest.approx(0.1) and f(100) == pytest.approx(0.1)
    assert engine.warmup_cosine(0, 10, 0.0)(0) == 1.0


def test_muon_section_comes_from_the_train_config(tmp_path):
    flags = ["--optimizer", "muon", "--learning_rate", "0.006", "--muon_learning_rate", "0.03",
             "--weight_decay", "0.01"]
    ds = engine.deepspeed_config(load_config(flags), 1)
    assert ds["optimizer"]["type"] == "Muon"
    params = ds["optimizer"]["params"]
    assert params["lr"] == 0.006 and params["muon_lr"] == 0.03 and params["weight_decay"] == 0.01
    assert params["momentum"] == 0.95 and params["betas"] == [0.9, 0.999] and params["torch_adam"] is True
    assert ds["zero_optimization"]["reduce_scatter"] is False
    assert "optimizer" not in engine.deepspeed_config(load_config([]), 1), "adamw: the client optimizer"
    # A JSON optimizer section would silently fight training.optimizer: refused with one line.
    raw = json.loads(open(engine.resolve_path("configs/deepspeed/zero3.json")).read())
    path = tmp_path / "ds.json"
    path.write_text(json.dumps(dict(raw, optimizer={"type": "Adam"})))
    with pytest.raises(ConfigError) as info:
        engine.deepspeed_config(load_config([*flags, "--deepspeed_config", str(path)]), 1)
    assert "training.optimizer" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="training.muon_momentum"):
        load_config(["--optimizer", "muon", "--muon_momentum", "1.0"])
