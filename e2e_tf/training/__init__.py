"""Training of annotation models: the loop, resumable state, model selection, final evaluation.

`e2e_tf.training.trainer.train_and_evaluate(TrainConfig(...))` is the whole job;
`python -m e2e_tf.train` is its command line.
"""
