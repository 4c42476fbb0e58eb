"""Shared pytest fixtures."""

import importlib
import os

import pytest

from e2e_tf.ops.deformable_conv2d import FORCE_PURE_TF_ENV

_CUSTOM_OP_MODULE = "e2e_tf.custom_ops.ops.deformable_conv2d_ops"


def _custom_op_unavailable_reason() -> str | None:
    """Why the compiled DeformableConv2D op cannot be tested here, or None when it can."""
    if os.environ.get(FORCE_PURE_TF_ENV, "").strip().lower() in ("1", "true", "yes"):
        return f"{FORCE_PURE_TF_ENV} is set, which forces the pure-TF path"
    try:
        module = importlib.import_module(_CUSTOM_OP_MODULE)
    except Exception as error:  # noqa: BLE001 - any import failure means "not built"
        return f"cannot import {_CUSTOM_OP_MODULE}: {error}"
    if not module.is_available():
        return module.load_error() or "the op library did not load"
    return None


@pytest.fixture(params=["pure_tf", "custom_op"])
def implementation(request) -> str:
    """Each DeformableConv2D implementation. The compiled one is skipped when it is not built,
    except in CI (CI=true), which builds it: there a missing op is a failure."""
    if request.param == "custom_op":
        reason = _custom_op_unavailable_reason()
        if reason is not None:
            if os.environ.get("CI") == "true":
                pytest.fail(f"compiled op not built (CI builds it): {reason}")
            pytest.skip(f"compiled op not built: {reason}")
    return request.param
