"""Typed config: every key and value checked once, by one validator, with the same rules at every stage.

The CLI tests run the real command line in a subprocess (`python -m hpc.submit ...`), as a user would.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import typing
from pathlib import Path
from typing import get_args

import pytest
import yaml

from fyp import config
from fyp.config import ConfigError, load_preset, parse_override, parse_overrides
from fyp.run import Run

ROOT = Path(__file__).resolve().parent.parent


def cli(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", "hpc.submit", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd or ROOT, timeout=300)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


# -- the allowed values are the types; the modules that use them agree ------------------------------------
def test_module_constants_are_the_config_types():
    from fyp.data.registry import READERS
    from fyp.devices import DTYPES
    from fyp.dpo.flow import TIMESTEP_SAMPLING
    from fyp.dpo.losses import KINDS, NORMALIZE
    from fyp.ensemble import METHODS, TIES
    from fyp.evaluation.targets import BENCHMARKS
    from fyp.rewards.registry import names

    assert tuple(READERS) == get_args(config.DataKind)
    assert tuple(DTYPES) == get_args(config.Dtype)
    assert tuple(names()) == get_args(config.RewardName)
    assert (KINDS, NORMALIZE, TIMESTEP_SAMPLING) == (get_args(config.Loss), get_args(config.Normalize),
                                                    get_args(config.TimestepSampling))
    assert (METHODS, TIES, BENCHMARKS) == (get_args(config.PairsMethod), get_args(config.Ties),
                                           get_args(config.Benchmark))


def test_judge_options_are_build_judges_parameters():
    import dataclasses
    import inspect

    from fyp.rewards.judge import WEIGHT_VARIANTS, build_judge

    fields = {f.name for f in dataclasses.fields(config.JudgeOptions)}
    assert fields - {"variants", "bias"} == set(inspect.signature(build_judge).parameters)
    (variant,) = get_args(typing.get_type_hints(config.JudgeOptions)["variants"])
    assert get_args(variant) == tuple(WEIGHT_VARIANTS)


def test_option_mappings_stay_dicts_of_what_was_given():
    cfg = load_preset("tiny", parse_overrides(["eval.options.paths.brushbench=/data/bb", "eval.options.steps=3",
                                               "eval.judge.backend=http", "eval.judge.max_retries=0"]))
    assert cfg.eval.options == {"paths": {"brushbench": "/data/bb"}, "steps": 3}
    assert cfg.eval.judge == {"backend": "http", "max_retries": 0}


def test_one_merge_function():
    """hpc/submit.py and fyp/data/stage.py had their own `_merge`; now only fyp.config.merge exists."""
    hits = [str(p.relative_to(ROOT)) for folder in ("fyp", "hpc") for p in (ROOT / folder).rglob("*.py")
            if re.search(r"^def _?merge\(", p.read_text(), re.MULTILINE)]
    assert hits == ["fyp/config.py"]
    assert config.merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": 3}}) == {"a": {"b": 3, "c": 2}, "d": 1}


# -- values: refused with the allowed ones, on one line -----------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("train.loss=dpoo", "train.loss must be one of dpo, ipo, capo, caen, got 'dpoo' (did you mean 'dpo'?)"),
    ("pairs.method=ensembel", "pairs.method must be one of ensemble, filtered, linear, softmax, capo, caen, single, "
                              "random, got 'ensembel' (did you mean 'ensemble'?)"),
    ("pairs.ties=first", "pairs.ties must be one of min, average, dense, got 'first'"),
    ("data.kind=coco", "data.kind must be one of synthetic, brushdata, brushbench, editbench, rorem, got 'coco'"),
    ("data.resolution=40", "data.resolution must be an integer >= 16 and a multiple of 16, got 40"),
    ("model.dtype=fp16", "model.dtype must be one of float32, bfloat16, float16, got 'fp16'"),
    ("model.device=gpu", "model.device must be auto, cpu, cuda or cuda:N, got 'gpu'"),
    ("train.zero_stage=4", "train.zero_stage must be one of 0, 1, 2, 3, got 4"),
    ("train.zero_stage=true", "train.zero_stage must be one of 0, 1, 2, 3, got True"),
    ("train.steps=2.5", "train.steps must be an integer >= 1, got 2.5"),
    ("train.lr=-1e-4", "train.lr must be a number > 0, got -0.0001"),
    ("train.lr=fast", "train.lr must be a number > 0, got 'fast'"),
    ("sampling.max_sequence_length=1000", "sampling.max_sequence_length must be an integer >= 1 and <= 512"),
    ("eval.benchmark=brushbnech", "eval.benchmark must be one of synthetic, brushbench, editbench, rorem, got "
                                  "'brushbnech' (did you mean 'brushbench'?)"),
    ("rewards=[clipscore, hpsv9]", "rewards[1].name must be one of clipscore, aesthetic, imagereward, pickscore, "
                                   "hpsv2, vqascore, unifiedreward, perception, hpsv3, brightness, got 'hpsv9'"),
    ("pairs.rewards=[pickscore, clipscorre]", "pairs.rewards[1] must be one of clipscore, aesthetic"),
    ("pairs.weights={clipscore: high}", "pairs.weights.clipscore must be a number, got 'high'"),
    ("train.pairs=../x", "train.pairs must be a pairs name"),
    ("shards=0", "shards must be an integer >= 1, got 0"),
    ("eval.options.resolutoin=64", "unknown config key eval.options.resolutoin (did you mean 'resolution'?); valid "
                                   "keys: paths, resolution, prompt_kind"),
    ("eval.options.paths.brushbnch=/data", "eval.options.paths key must be one of synthetic, brushbench, editbench, "
                                           "rorem, got 'brushbnch'"),
    ("eval.judge.backend=openai", "eval.judge.backend must be one of transformers, http, got 'openai'"),
    ("eval.judge.variants=[40-40-20]", "eval.judge.variants[0] must be one of 40-30-30, 30-40-30, 30-30-40, "
                                       "33-33-33, got '40-40-20'"),
    ("train.options.deepspeed=3", "train.options.deepspeed must be a mapping, got 3"),
    ("train.options.deepseed={}", "unknown config key train.options.deepseed (did you mean 'deepspeed'?)"),
])
def test_bad_values_are_refused_with_the_allowed_ones(override, message):
    with pytest.raises(ConfigError) as info:
        load_preset("tiny", parse_override(override))
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_relations_between_fields():
    with pytest.raises(ConfigError, match="pairs.rewards names hpsv3, which the run does not score; the run's "
                                          "rewards: brightness"):
        load_preset("toy", parse_override("pairs.rewards=[hpsv3]"))
    with pytest.raises(ConfigError, match="rewards are listed twice"):
        load_preset("tiny", parse_override("rewards=[clipscore, clipscore]"))


def test_constructors_in_code_are_checked_by_check():
    config.check(config.TrainConfig(), "train")
    with pytest.raises(ConfigError, match="train.trainable must be one of all, attention, lora, got 'mlp'"):
        config.check(config.TrainConfig(trainable="mlp"), "train")


# -- coercion: one rule everywhere --------------------------------------------------------------------------
@pytest.mark.parametrize("text, value", [("train.lr=1e-4", 1e-4), ("train.lr=1.0e-4", 1e-4), ("train.lr=3", 3.0),
                                         ("train.beta=2E3", 2000.0), ("train.lr=.5", 0.5)])
def test_floats_read_as_yaml_1_2(text, value):
    cfg = load_preset("tiny", parse_override(text))
    assert cfg.train.lr == value or cfg.train.beta == value
    assert isinstance(cfg.train.lr, float) and isinstance(cfg.train.beta, float)


def test_one_name_is_a_one_item_list():
    assert load_preset("tiny", parse_override("pairs.rewards=pickscore")).pairs.rewards == ["pickscore"]


def test_same_override_means_the_same_at_prepare_and_at_train(tmp_path):
    """`--set train.lr=1e-4` was refused at prepare (a string) and accepted at train (converted there)."""
    from fyp.data.stage import create_run
    from fyp.dpo.train import resolve_config

    run = create_run(tmp_path / "r", "tiny", parse_overrides(["train.lr=1e-4", "train.beta=5e2"]), samples=2,
                     shards=1)
    saved = Run.open(run.dir).config
    assert (saved.train.lr, saved.train.beta) == (1e-4, 500.0)
    trained = resolve_config(Run.open(run.dir), None, None, parse_overrides(["train.lr=2e-4"], section="train"))
    assert trained.train.lr == 2e-4 and trained.train.beta == 500.0
    with pytest.raises(ConfigError, match="train.loss must be one of dpo, ipo, capo, caen, got 'dpoo'"):
        resolve_config(Run.open(run.dir), None, None, parse_overrides(["train.loss=dpoo"], section="train"))
    with pytest.raises(ConfigError, match="--set accepts train.\\* keys here, got 'pairs.method=single'"):
        parse_overrides(["pairs.method=single"], section="train")


@pytest.mark.parametrize("text", ["train.lr", "=3", "train..lr=3", "train.lr=[1, 2"])
def test_malformed_overrides(text):
    with pytest.raises(ConfigError, match="override"):
        parse_override(text)


def test_saved_config_round_trips(tmp_path):
    cfg = load_preset("flux-fill")
    config.save(cfg, tmp_path / "c.yaml")
    assert config.load(tmp_path / "c.yaml") == cfg
    raw = yaml.safe_load((tmp_path / "c.yaml").read_text())
    raw["train"]["loss"] = "kto"  # a hand-edited config.yaml is checked like a preset
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="train.loss must be one of"):
        config.load(tmp_path / "c.yaml")


# -- the real CLI: refused at prepare and at --dry-run, nothing written ------------------------------------
@pytest.mark.parametrize("override, needle", [
    ("train.loss=dpoo", "train.loss must be one of dpo, ipo, capo, caen, got 'dpoo'"),
    ("pairs.method=ensembel", "pairs.method must be one of ensemble, filtered, linear, softmax, capo, caen, single, "
                              "random, got 'ensembel'"),
    ("rewards=[clipscore, hpsv9]", "rewards[1].name must be one of clipscore, aesthetic, imagereward"),
])
@pytest.mark.parametrize("command", [("prepare",), ("prepare", "--dry-run"), ("pipeline", "--dry-run")])
def test_cli_refuses_bad_values_at_prepare_and_dry_run(tmp_path, command, override, needle):
    run = tmp_path / "run"
    line = one_line_error(cli(*command, "--run", run, "--preset", "tiny", "--samples", 2, "--set", override))
    assert needle in line
    assert not run.exists()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    run = tmp_path_factory.mktemp("cfg") / "run"
    proc = cli("prepare", "--run", run, "--preset", "tiny", "--samples", 2, "--shards", 1, "--set", "train.lr=1e-4",
               "--create-only")
    assert proc.returncode == 0, proc.stderr
    return run


def test_cli_float_override_accepted_at_prepare(prepared):
    assert Run.open(prepared).config.train.lr == 1e-4


def test_cli_train_dry_run_checks_set_values(prepared):
    line = one_line_error(cli("train", "--run", prepared, "--set", "train.loss=dpoo", "--dry-run"))
    assert "train.loss must be one of dpo, ipo, capo, caen, got 'dpoo'" in line
    line = one_line_error(cli("train", "--run", prepared, "--set", "train.warmup_steps=-1", "--dry-run"))
    assert "train.warmup_steps must be an integer >= 0, got -1" in line
    ok = cli("train", "--run", prepared, "--set", "train.lr=1e-4", "--dry-run")
    assert ok.returncode == 0 and "would run train" in ok.stdout, ok.stderr


def test_cli_prepare_again_same_settings_is_a_no_op_other_settings_refused(prepared):
    before = (prepared / "config.yaml").read_bytes()
    same = cli("prepare", "--run", prepared, "--preset", "tiny", "--samples", 2, "--shards", 1, "--set",
               "train.lr=1e-4", "--create-only")
    assert same.returncode == 0, same.stderr
    line = one_line_error(cli("prepare", "--run", prepared, "--preset", "tiny", "--samples", 3, "--shards", 1,
                              "--set", "train.lr=2e-4", "--set", "pairs.method=random"))
    assert "was prepared with other settings: data.samples (run: 2, asked: 3), pairs.method (run: 'ensemble', " \
           "asked: 'random'), train.lr (run: 0.0001, asked: 0.0002)" in line
    line = one_line_error(cli("prepare", "--run", prepared, "--preset", "toy", "--dry-run"))
    assert "was prepared with other settings:" in line and "preset (run: 'tiny', asked: 'toy')" in line
    assert (prepared / "config.yaml").read_bytes() == before


def test_cli_bad_cluster_config_value_is_one_line(prepared, tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("executor: slurm\npartition: gpu\nstages:\n  train: {gpus_per_node: many}\n")
    line = one_line_error(cli("prepare", "--run", prepared, "--cluster", bad, "--dry-run"))
    assert line == ("error: cluster config mine, stages.train: gpus_per_node must be an integer >= 0, "
                    "got 'many'")
    bad.write_text("executor: pbs\n")
    assert "executor must be one of local, slurm, got 'pbs'" in one_line_error(
        cli("prepare", "--run", prepared, "--cluster", bad, "--dry-run"))


def test_cli_pairs_flags_checked_at_dry_run(prepared):
    line = one_line_error(cli("pairs", "--run", prepared, "--method", "ensembel", "--dry-run"))
    assert line == ("error: --method must be one of ensemble, filtered, linear, softmax, capo, caen, single, random, "
                    "got 'ensembel' (did you mean 'ensemble'?)")
    line = one_line_error(cli("pairs", "--run", prepared, "--rewards", "clipscore,hpsv9", "--dry-run"))
    assert line.startswith("error: --rewards[1] must be one of clipscore, aesthetic,")
    ok = cli("pairs", "--run", prepared, "--method", "single", "--reward", "pickscore", "--dry-run")
    assert ok.returncode == 0, ok.stderr
