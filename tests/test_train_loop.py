"""Tests of the training loop, its resumable state and model selection (tiny models, in-process)."""

import numpy as np
import keras
import pytest
import tensorflow as tf

from e2e_tf.training.loop import AnnotationTrainer, sigmoid_cross_entropy
from e2e_tf.training.selection import SaveBestModel
from e2e_tf.training.state import SaveTrainingState, TrainingState

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 5)).astype("float32")
Y = (RNG.random((16, 3)) < 0.4).astype("float32")
BATCH, STEPS = 4, 4  # one epoch is exactly one pass, so every epoch sees the same batches


def _model(seed, dropout=0.0):
    keras.utils.set_random_seed(seed)
    hidden = keras.layers.Dense(8, activation="relu", kernel_regularizer=keras.regularizers.L2(1e-3))
    dropout_layers = [keras.layers.Dropout(dropout, seed=seed)] if dropout else []
    model = keras.Sequential([keras.Input((5,)), hidden, *dropout_layers, keras.layers.Dense(3)])
    optimizer = keras.optimizers.RMSprop(
        keras.optimizers.schedules.ExponentialDecay(0.01, decay_steps=3, decay_rate=0.5), momentum=0.5
    )
    optimizer.build(model.trainable_variables)
    model.compile(optimizer=optimizer)
    return model, optimizer


def _data():
    return tf.data.Dataset.from_tensor_slices((X, Y)).batch(BATCH).repeat()


def _fit(model, optimizer, directory, epochs, extra_callbacks=()):
    state = TrainingState(model, optimizer, directory)
    initial_epoch = state.restore()
    trainer = AnnotationTrainer(model, optimizer, tf.distribute.get_strategy(), BATCH)
    history = trainer.fit(
        _data(), epochs=epochs, steps_per_epoch=STEPS, initial_epoch=initial_epoch,
        callbacks=[*extra_callbacks, SaveTrainingState(state)], verbose=0,
    )
    return initial_epoch, history, state


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_resumed_run_continues_at_the_right_epoch_with_the_same_weights(tmp_path, dropout):
    straight, straight_opt = _model(1, dropout)
    _fit(straight, straight_opt, tmp_path / "straight", epochs=3)

    first, first_opt = _model(1, dropout)
    _fit(first, first_opt, tmp_path / "resumed", epochs=2)
    after_two = [w.copy() for w in first.get_weights()]

    # Different initialisation and dropout seed: everything, dropout's random state included, must
    # come from the checkpoint.
    resumed, resumed_opt = _model(2, dropout)
    state = TrainingState(resumed, resumed_opt, tmp_path / "resumed")
    assert state.restore() == 2
    for restored, saved in zip(resumed.get_weights(), after_two):
        np.testing.assert_array_equal(restored, saved)
    assert int(resumed_opt.iterations.numpy()) == 2 * STEPS  # the schedule continues too

    initial_epoch, history, _ = _fit(resumed, resumed_opt, tmp_path / "resumed", epochs=3)
    assert initial_epoch == 2 and history.epoch == [2]
    for got, want in zip(resumed.get_weights(), straight.get_weights()):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_reported_losses_are_the_batch_mean_cross_entropy_and_the_l2_term(tmp_path):
    model, optimizer = _model(3)
    expected = float(keras.losses.BinaryCrossentropy(from_logits=True)(Y[:BATCH], model(X[:BATCH])))
    expected_l2 = 1e-3 * float(np.sum(np.square(model.layers[0].kernel.numpy())))
    trainer = AnnotationTrainer(model, optimizer, tf.distribute.get_strategy(), BATCH)
    history = trainer.fit(_data(), epochs=1, steps_per_epoch=1, verbose=0)
    np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)
    np.testing.assert_allclose(history.history["regularization_loss"][0], expected_l2, rtol=1e-5)
    np.testing.assert_allclose(
        sigmoid_cross_entropy(tf.constant(Y[:2]), tf.constant(np.zeros((2, 3), np.float32))).numpy(),
        [np.log(2.0)] * 2, rtol=1e-6,
    )


class _Scores(keras.callbacks.Callback):
    """Feeds a fixed sequence of validation scores into the epoch logs."""

    def __init__(self, scores):
        super().__init__()
        self._scores = scores

    def on_epoch_end(self, epoch, logs=None):
        logs["val_f1"] = self._scores[epoch]


def test_best_model_is_kept_across_a_resume(tmp_path):
    scores = [0.2, 0.5, 0.3, 0.4]
    model, optimizer = _model(4)
    state = TrainingState(model, optimizer, tmp_path / "checkpoints")
    path = tmp_path / "model.keras"
    selection = SaveBestModel(path, state, monitor="val_f1")
    trainer = AnnotationTrainer(model, optimizer, tf.distribute.get_strategy(), BATCH)
    trainer.fit(_data(), epochs=2, steps_per_epoch=STEPS, callbacks=[_Scores(scores), selection, SaveTrainingState(state)], verbose=0)
    best_weights = [w.copy() for w in model.get_weights()]
    saved_at = path.stat().st_mtime_ns

    model2, optimizer2 = _model(5)
    state2 = TrainingState(model2, optimizer2, tmp_path / "checkpoints")
    assert state2.restore() == 2 and float(state2.best_score.numpy()) == 0.5
    trainer2 = AnnotationTrainer(model2, optimizer2, tf.distribute.get_strategy(), BATCH)
    selection2 = SaveBestModel(path, state2, monitor="val_f1")
    trainer2.fit(_data(), initial_epoch=2, epochs=4, steps_per_epoch=STEPS,
                 callbacks=[_Scores(scores), selection2, SaveTrainingState(state2)], verbose=0)
    # 0.3 and 0.4 after the resume do not beat the 0.5 of epoch 2: the file is untouched.
    assert path.stat().st_mtime_ns == saved_at and int(state2.best_epoch.numpy()) == 1
    for got, want in zip(keras.saving.load_model(path).get_weights(), best_weights):
        np.testing.assert_array_equal(got, want)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic writes leave no temporary files


def test_checkpoint_restores_every_variable_of_the_e2e_model(tmp_path):
    """Non-trainable weights nested in custom layers (SPP's batch norms) and dropout states come back."""
    from e2e_tf.model import build_model

    def model_and_optimizer():
        model = build_model(4, backbone="compact", deformable_stages=1, spp=True, image_size=(32, 32),
                            deformable_implementation="pure_tf")
        optimizer = keras.optimizers.RMSprop(0.01)
        optimizer.build(model.trainable_variables)
        return model, optimizer

    saved, saved_optimizer = model_and_optimizer()
    rng = np.random.default_rng(0)
    for variable in saved.variables:  # a distinct value everywhere, as after some training
        variable.assign(rng.integers(1, 100, variable.shape).astype(variable.dtype))
    TrainingState(saved, saved_optimizer, tmp_path).save(1)

    restored, restored_optimizer = model_and_optimizer()
    assert TrainingState(restored, restored_optimizer, tmp_path).restore() == 1
    assert any("moving_mean" in v.path and "spp" in v.path for v in restored.variables)
    assert any("seed_generator_state" in v.path for v in restored.variables)
    for got, want in zip(restored.variables, saved.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.path)
