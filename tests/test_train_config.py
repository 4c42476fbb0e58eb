"""Tests of the training configuration: flag parsing, validation messages, schedules, config files."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import pytest
from absl import flags

from e2e_tf import train  # defines the flags parsed below
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


CONFIG_ERRORS = [
    (["--batch_size=-4"], "--batch_size=-4"),
    (["--batch_size=0"], "--batch_size=0"),
    (["--epochs=0"], "--epochs=0"),
    (["--steps_per_epoch=0"], "--steps_per_epoch=0"),
    (["--image_size=0"], "--image_size"),
    (["--learning_rate=-1"], "--learning_rate=-1"),
    (["--top_k=0"], "--top_k=0"),
    (["--epochs=2", "--steps=10"], "--epochs or --steps"),
    (["--augmentation=mlwgan"], "--augmented_dir"),
    (["--dropout=1.5"], "--dropout=1.5"),
    (["--weight_decay=-1"], "--weight_decay=-1"),
]


@pytest.mark.parametrize("args, message", CONFIG_ERRORS)
def test_main_ends_a_config_error_with_one_line_naming_the_flag(parse, monkeypatch, tmp_path, args, message):
    monkeypatch.setattr(train, "train_and_evaluate", lambda *a, **k: pytest.fail("the run started"))
    flags.FLAGS(["train", f"--model_dir={tmp_path}", *args])  # parse() would fail building the config
    with pytest.raises(SystemExit) as exit_info:
        train.main(["train"])  # not app.UsageError, which app.run answers with the whole flag help
    error = str(exit_info.value.code)
    assert error.startswith("e2e_tf.train: error: ") and message in error and "\n" not in error


def test_command_line_config_error_is_one_line_without_the_flag_help(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "e2e_tf.train", "--batch_size=0", f"--model_dir={tmp_path}"],
        capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1] == "e2e_tf.train: error: --batch_size must be a positive integer. Received: --batch_size=0"
    assert "Examples in the shuffle buffer" not in result.stderr  # --shuffle_buffer's help: no flag help


@pytest.fixture
def signal_handlers():
    """Restores this process's SIGINT and SIGTERM handlers, which train.main changes."""
    saved = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in saved.items():
        signal.signal(number, handler)


@pytest.mark.parametrize("stop, status, how", [
    ("ctrl_c", 130, "interrupted"),
    ("sigterm", 143, "stopped (SIGTERM)"),
])
def test_ctrl_c_or_sigterm_ends_training_with_one_line_saying_how_to_resume(
        parse, monkeypatch, capsys, signal_handlers, stop, status, how):
    def interrupted(config, flags_text):
        if stop == "ctrl_c":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGTERM)  # the handler main installed raises in this thread
        time.sleep(5)
        pytest.fail("SIGTERM did not stop training")

    monkeypatch.setattr(train, "train_and_evaluate", interrupted)
    parse("--model_dir=runs/x")
    with pytest.raises(SystemExit) as exit_info:
        try:
            train.main(["train"])
        except KeyboardInterrupt:
            pytest.fail("KeyboardInterrupt escaped main (a traceback)")
    assert exit_info.value.code == status
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith(f"e2e_tf.train: {how}. ")
    assert "same command" in stderr[0] and "resume" in stderr[0] and "--model_dir=runs/x" in stderr[0]


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
