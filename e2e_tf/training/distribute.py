"""Distribution strategies by name, and which worker of a multi-worker job this process is."""

import dataclasses
import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker")


@dataclasses.dataclass(frozen=True)
class WorkerRole:
    """This process's place in the job; only the chief writes the shared model directory."""

    task_type: str
    task_id: int
    is_chief: bool


def make_strategy(name: str) -> tf.distribute.Strategy:
    """Creates the strategy; call it before any other TensorFlow op (multi-worker needs that).

    Args:
      name: "default" (one device), "mirrored" (all local GPUs) or "multi_worker"
        (synchronous data parallelism over the cluster described by `$TF_CONFIG`).
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if not os.environ.get("TF_CONFIG"):
            raise ValueError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable describing the "
                'cluster, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}}'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    raise ValueError(f"Unknown strategy; expected one of {STRATEGIES}. Received: strategy={name!r}")


def worker_role(strategy: tf.distribute.Strategy) -> WorkerRole:
    """The role of this process: the chief is task "chief", else worker 0."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return WorkerRole("worker", 0, True)
    task_type, task_id = resolver.task_type, int(resolver.task_id or 0)
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    if "chief" in cluster:
        is_chief = task_type == "chief"
    else:
        is_chief = task_type == "worker" and task_id == 0
    return WorkerRole(task_type, task_id, is_chief)


def sync_workers(strategy: tf.distribute.Strategy) -> None:
    """Blocks until every worker reaches this point (a one-number all-reduce).

    Multi-worker jobs end with it: a worker that exits while the chief still
    evaluates stops heartbeating, and TensorFlow's coordination service then
    fails the whole job.
    """
    strategy.reduce(
        tf.distribute.ReduceOp.SUM, strategy.run(tf.function(lambda: tf.constant(1.0))), axis=None
    )
