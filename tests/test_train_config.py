"""Tests of the training configuration: flag parsing, validation messages, schedules, config files."""

import pathlib
import subprocess
import sys

import keras
import pytest
from absl import flags

from e2e_tf import train  # noqa: F401  (defines the flags parsed below)
from e2e_tf.training.config import TrainConfig
from e2e_tf.training.schedules import learning_rate_schedule

REPO = pathlib.Path(__file__).resolve().parent.parent
# paper_common.cfg is only included by the paper_* configs, which add the dataset and backbone.
CONFIGS = sorted(p for p in (REPO / "configs").glob("*.cfg") if p.name != "paper_common.cfg")


@pytest.fixture
def parse(monkeypatch):
    """Parses command-line flags of e2e_tf.train from the repository root, and resets them after."""
    monkeypatch.chdir(REPO)

    def parse_args(*args):
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", *args])
        return TrainConfig(**{name: flags.FLAGS[name].value for name in TrainConfig.__dataclass_fields__})

    yield parse_args
    flags.FLAGS.unparse_flags()


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: p.name)
def test_every_config_file_parses_into_a_valid_run(parse, config):
    run = parse(f"--flagfile=configs/{config.name}")
    assert run.model_dir.startswith("runs/")
    if config.name.startswith("paper_"):
        dataset, backbone = config.stem.split("_")[1:]
        assert (run.dataset, run.backbone) == (dataset, backbone)
        # Section IV-A-2 of the paper.
        assert (run.learning_rate, run.weight_decay, run.dropout, run.batch_size) == (0.005, 1e-4, 0.5, 64)
        assert run.steps == 100_000 and run.schedule(4410) == (100, 1000)


def test_command_line_overrides_the_flagfile(parse):
    run = parse("--flagfile=configs/paper_corel5k_resnet50.cfg", "--image_size=160,192", "--nospp")
    assert run.image_size == (160, 192) and run.spp is False and run.backbone == "resnet50"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset=imagenet"], "flag --dataset=imagenet"),
        (["--resize_policy=squash"], "flag --resize_policy=squash"),
        (["--augmentation=gan"], "flag --augmentation=gan"),
        (["--strategy=tpu"], "flag --strategy=tpu"),
    ],
)
def test_unknown_choices_name_the_flag(parse, args, message):
    with pytest.raises(flags.IllegalFlagValueError, match=message):
        parse("--model_dir=x", *args)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--epochs=2", "--steps=10"], "--epochs or --steps"),
        (["--image_size=0"], "--image_size"),
        (["--image_size=1,2,3"], "--image_size"),
        (["--batch_size=0"], "--batch_size"),
        (["--learning_rate=0"], "--learning_rate"),
        (["--augmentation=mlwgan"], "--augmented_dir"),
    ],
)
def test_invalid_values_name_the_flag(parse, args, message):
    with pytest.raises(ValueError, match=message):
        parse("--model_dir=x", *args)


def test_command_line_reports_a_bad_dataset_and_exits_non_zero(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "e2e_tf.train", "--dataset=corel6k", f"--model_dir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert result.returncode != 0
    assert "--dataset=corel6k" in result.stderr and "corel5k" in result.stderr
    assert not any(tmp_path.iterdir())  # nothing was started


def test_steps_are_rounded_up_to_whole_epochs():
    assert TrainConfig(model_dir="m", steps=10).schedule(4410) == (1, 10)
    assert TrainConfig(model_dir="m", steps=150, batch_size=64).schedule(4410) == (3, 69)
    assert TrainConfig(model_dir="m", epochs=4, steps_per_epoch=7).schedule(100) == (4, 7)


def test_step_decay_is_caffe_step_policy():
    schedule = learning_rate_schedule(0.005, "step", total_steps=100, decay_rate=0.1, decay_steps=40)
    values = [float(schedule(step)) for step in (0, 39, 40, 79, 80)]
    assert values == pytest.approx([0.005, 0.005, 0.0005, 0.0005, 0.00005])
    cosine = learning_rate_schedule(1.0, "cosine", total_steps=10, min_ratio=0.1)
    assert float(cosine(10)) == pytest.approx(0.1)
    assert learning_rate_schedule(0.01, "none", total_steps=5) == 0.01
    assert isinstance(learning_rate_schedule(0.01, "exponential", total_steps=5), keras.optimizers.schedules.ExponentialDecay)
