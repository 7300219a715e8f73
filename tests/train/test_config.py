"""Config: YAML + flag resolution, validation messages, hash stability."""
import glob
import os
import socket
import subprocess
import sys

import pytest

from chunksft.train.config import DEFAULT_CONFIG, REPO_ROOT, ConfigError, TrainConfig, load_config, valid_keys


def test_default_is_tiny_yaml_and_resolves_mode_defaults():
    cfg = load_config([])
    assert cfg.objective.training_mode == "chunk_sft"
    assert cfg.objective.chunk_size == 16
    assert cfg.freeze_backbone is True
    pre = load_config(["--config", f"{REPO_ROOT}/configs/train/tiny_bd3.yaml"])
    assert pre.objective.training_mode == "bd3" and pre.freeze_backbone is False


@pytest.mark.parametrize("flags, key, value", [
    (["--chunk_size", "8"], "objective.chunk_size", 8),
    (["--objective.chunk_size=4"], "objective.chunk_size", 4),
    (["--mask_probability", "0.5"], "objective.mask_probability", 0.5),
    (["--deep_supervision_weight", "1"], "objective.deep_supervision_weight", 1.0),
    (["--max_recursive_steps", "3"], "model.max_recursive_steps", 3),
    (["--freeze_backbone"], "model.freeze_backbone", True),
    (["--freeze_backbone", "false"], "model.freeze_backbone", False),
    (["--dataset_name", "gsm8k"], "data.dataset_name", "gsm8k"),
    (["--batch_size", "2"], "training.batch_size", 2),
    (["--num_epochs", "3"], "training.num_epochs", 3),
    (["--output_dir", "/tmp/x"], "training.output_dir", "/tmp/x"),
    (["--max_steps", "7"], "training.max_steps", 7),
    (["--seed", "1"], "training.seed", 1),
    (["--save_interval", "5"], "checkpoint.save_interval", 5),
    (["--keep_last", "3"], "checkpoint.keep_last", 3),
    (["--resume", "none"], "checkpoint.resume", "none"),
    (["--resume", "/ckpt/global_step5"], "checkpoint.resume", "/ckpt/global_step5"),
    (["--training_mode", "sft"], "objective.training_mode", "sft"),
    (["--backend", "eager"], "model.backend", "eager"),
    (["--local_rank=1", "--seed", "3"], "training.seed", 3),  # the deepspeed launcher's flag
])
def test_flags_override(flags, key, value):
    section, name = key.split(".")
    assert getattr(getattr(load_config(flags), section), name) == value


def test_flags_override_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("objective:\n  chunk_size: 8\ntraining:\n  seed: 5\n")
    cfg = load_config(["--config", str(path), "--seed", "6"])
    assert (cfg.objective.chunk_size, cfg.training.seed) == (8, 6)
    assert cfg.training.batch_size == TrainConfig().training.batch_size  # untouched keys keep defaults


@pytest.mark.parametrize("flags, expected", [
    (["--chunk_sise", "8"], "did you mean '--chunk_size'?"),
    (["--objective.mask_prob", "0.1"], "did you mean '--objective.mask_probability'?"),
    (["--chunk_size", "0"], "objective.chunk_size = 0: must be a positive"),
    (["--chunk_size", "-3"], "objective.chunk_size = -3"),
    (["--mask_probability", "1.5"], "objective.mask_probability = 1.5: must be a probability in [0, 1]"),
    (["--mask_probability", "-0.1"], "[0, 1]"),
    (["--training_mode", "chunk-sft"], "did you mean 'chunk_sft'?"),
    (["--batch_size", "two"], "--batch_size: training.batch_size: expected int, got 'two'"),
    (["--max_steps"], "--max_steps needs a value"),
    (["stray"], "unexpected argument 'stray'"),
])
def test_bad_flags_one_line(flags, expected):
    with pytest.raises(ConfigError) as info:
        load_config(flags)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("flag, value, dotted", [
    ("chunk_size", 0, "objective.chunk_size"), ("mask_probability", 1.5, "objective.mask_probability"),
    ("bd3_t_min", 0.0, "objective.bd3_t_min"), ("bd3_t_max", 2.0, "objective.bd3_t_max"),
    ("deep_supervision_weight", -0.1, "objective.deep_supervision_weight"),
    ("deep_supervision_interval", 0, "objective.deep_supervision_interval"),
    ("max_recursive_steps", 0, "model.max_recursive_steps"), ("head_hidden_size", -4, "model.head_hidden_size"),
    ("steps_per_chunk", 0, "data.steps_per_chunk"),
])
def test_model_hyperparameters_are_checked_by_the_model_config_rules(flag, value, dotted):
    """One rule per hyperparameter (chunksft.hyperparameters): the train config reports HybridConfig's
    own check under its YAML key and flag, with the same fix."""
    from chunksft.models import HybridConfig

    with pytest.raises(ConfigError) as train_error:
        load_config([f"--{flag}", str(value)])
    with pytest.raises(ValueError) as model_error:
        HybridConfig(**{flag: value})
    fix = str(model_error.value).split(": ", 1)[1]
    assert str(train_error.value) == f"{dotted} = {value!r}: {fix} (--{flag} ...)"


@pytest.mark.parametrize("body, expected", [
    ("objective:\n  chunk_sise: 8\n", "unknown key 'objective.chunk_sise'; did you mean 'chunk_size'?"),
    ("objectives:\n  chunk_size: 8\n", "unknown section 'objectives'; did you mean 'objective'?"),
    ("objective:\n  mask_probability: 2\n", "objective.mask_probability = 2.0"),
    ("objective: [1, 2]\n", "section 'objective' must be a mapping"),
    ("objective:\n  chunk_size: 8\n bad", "invalid YAML"),
    ("training:\n  max_steps: 3\n  seed: 1\n  max_steps: 4\n", "line 4: key 'max_steps' given twice (first on line 2)"),
])
def test_bad_yaml_names_file_and_key(tmp_path, body, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(["--config", str(path)])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)
    if "mask_probability" not in expected:
        assert str(path) in str(info.value)


def test_text_flags_are_taken_as_typed_and_tilde_is_home(monkeypatch, tmp_path):
    """YAML would read `--output_dir 0x10` as 16 and `--dataset_name 1e3` as 1000.0: text fields keep
    the text; `null` still clears an optional one; `~` means the home folder, as in a shell."""
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(["--output_dir", "0x10", "--dataset_name", "1e3", "--tokenizer", "null",
                       "--resume", "~/runs/a"])
    assert (cfg.training.output_dir, cfg.data.dataset_name, cfg.data.tokenizer) == ("0x10", "1e3", None)
    assert cfg.checkpoint.resume == str(tmp_path / "runs" / "a")
    assert load_config(["--output_dir", "~/out"]).training.output_dir == str(tmp_path / "out")
    assert load_config(["--max_steps", "0x10"]).training.max_steps == 16  # numbers still parse as YAML


def test_launch_scripts_resolve_paths_against_the_caller(tmp_path):
    """launch/train_torchrun.sh cds to the repository: a config path relative to the caller's folder
    must still be found (here the run then stops at the config's own bad value, before any rank work)."""
    (tmp_path / "mine.yaml").write_text(open(DEFAULT_CONFIG).read())
    env = dict(os.environ, NPROC_PER_NODE="1", MASTER_PORT=str(_free_port()), OMP_NUM_THREADS="1",
               PATH=f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(["bash", os.path.join(REPO_ROOT, "launch", "train_torchrun.sh"), "mine.yaml",
                           "--max_steps", "0", "--output_dir", "out"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "training.max_steps" in proc.stderr and "not found" not in proc.stderr, proc.stderr[-2000:]


def test_debug_env(monkeypatch):
    monkeypatch.setenv("DEBUG", "1")
    assert load_config([]).logging.debug is True


def test_bare_names_are_unique_so_every_key_has_a_short_flag():
    names = [k.split(".")[1] for k in valid_keys()]
    assert len(names) == len(set(names))


def test_hash_stable_and_ignores_run_only_fields():
    base = load_config([]).hash()
    assert base == load_config([]).hash() == TrainConfig.hash(load_config([]))
    assert len(base) == 16
    same = load_config(["--output_dir", "/elsewhere", "--save_interval", "3", "--keep_last", "5",
                        "--resume", "none", "--stop_at_step", "2", "--eval_interval", "9",
                        "--eval_generate_rows", "3", "--eval_dataset_name", "x.jsonl"])
    assert same.hash() == base
    assert load_config(["--chunk_size", "8"]).hash() != base
    assert load_config(["--learning_rate", "0.5"]).hash() != base


def test_every_shipped_config_loads():
    for path in glob.glob(f"{REPO_ROOT}/configs/train/*.yaml"):
        load_config(["--config", path])
    assert DEFAULT_CONFIG.endswith("configs/train/tiny.yaml")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
