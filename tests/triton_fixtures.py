"""A real Triton Inference Server for the tests, serving small python-backend test models.

Registered from tests/conftest.py (``pytest_plugins``) or with ``-p tests.triton_fixtures``.
The session fixture installs the server first if needed (``scripts/setup_triton.sh``: about
a minute the first time, instant afterwards) and starts it on free loopback ports.

Test models (FP32, batch first, ``max_batch_size`` 4, dynamic batching):

- ``double``: INPUT__0 [-1, 2, 8, 8, 8] -> OUTPUT__0 the same shape, times 2.
- ``wrong_shape``: INPUT__0 [-1, 2, 8, 8, 8] -> OUTPUT__0 declared [-1, -1, -1, -1, -1] but
  every spatial axis halved: a model that breaks the predictor's contract at run time.
- ``slow``: any [-1, -1, -1, -1, -1] -> the same, after sleeping ``SLOW_MODEL_S`` once per
  execution: requests queued meanwhile are batched into the next one (two executions for
  four requests in flight, where one at a time takes four).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from carina.triton import MODEL_REPOSITORY, SETUP_SCRIPT, LocalTriton

SLOW_MODEL_S = 2.0

# The first line of every python-backend model.py in the project: see carina/triton.py.
SITE_PACKAGES_LINE = ('import os, sys; sys.path[:0] = [p for p in os.environ.get('
                      '"CARINA_TRITON_SITE_PACKAGES", "").split(os.pathsep) if p]\n')

MODEL_PY = SITE_PACKAGES_LINE + textwrap.dedent('''
    import time

    import numpy as np
    import triton_python_backend_utils as pb_utils


    SLEEP_S = {sleep}


    def transform(x):
        return {body}


    class TritonPythonModel:
        def execute(self, requests):
            # Once per execute, whatever the number of requests the dynamic batcher hands in.
            time.sleep(SLEEP_S)
            responses = []
            for request in requests:
                x = pb_utils.get_input_tensor_by_name(request, "INPUT__0").as_numpy()
                y = np.ascontiguousarray(transform(x), dtype=np.float32)
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT__0", y)]))
            return responses
''')

CONFIG = textwrap.dedent('''
    backend: "python"
    max_batch_size: 4
    input [ {{ name: "INPUT__0", data_type: TYPE_FP32, dims: [ {input_dims} ] }} ]
    output [ {{ name: "OUTPUT__0", data_type: TYPE_FP32, dims: [ {output_dims} ] }} ]
    dynamic_batching {{ }}
    instance_group [ {{ kind: KIND_CPU, count: 1 }} ]
''')

TEST_MODELS = {
    # name: (input dims, output dims, both without the batch axis; seconds asleep per
    # execution; what it returns for the batch x)
    "double": ("2, 8, 8, 8", "2, 8, 8, 8", 0.0, "x * 2"),
    "wrong_shape": ("2, 8, 8, 8", "-1, -1, -1, -1", 0.0, "x[:, :, ::2, ::2, ::2]"),
    "slow": ("-1, -1, -1, -1", "-1, -1, -1, -1", SLOW_MODEL_S, "x"),
}


def write_test_models(repository: Path) -> Path:
    """Write :data:`TEST_MODELS` as a Triton model repository into ``repository``."""
    for name, (input_dims, output_dims, sleep_s, body) in TEST_MODELS.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / "config.pbtxt").write_text(
            CONFIG.format(input_dims=input_dims, output_dims=output_dims))
        (repository / name / "1" / "model.py").write_text(MODEL_PY.replace("{sleep}", repr(sleep_s)).replace("{body}", body))
    return repository


def ensure_triton_installed() -> None:
    """Run the (idempotent, silent when done) setup script; fail the session with its output."""
    done = subprocess.run(["bash", str(SETUP_SCRIPT)], check=False, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        pytest.fail(f"{SETUP_SCRIPT} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


@pytest.fixture(scope="session")
def triton_server():
    """A :class:`carina.triton.LocalTriton` serving the test models; stopped after the session."""
    ensure_triton_installed()
    repository = write_test_models(Path(tempfile.mkdtemp(prefix="carina-test-models-")))
    try:
        with LocalTriton(repository) as server:
            yield server
    finally:
        shutil.rmtree(repository, ignore_errors=True)


@pytest.fixture(scope="session")
def project_triton():
    """A :class:`carina.triton.LocalTriton` serving the project's model repository: ``models/``,
    or ``CARINA_MODEL_REPOSITORY`` to run the suite against another one (a production model
    with the same interface)."""
    ensure_triton_installed()
    with LocalTriton(Path(os.environ.get("CARINA_MODEL_REPOSITORY", MODEL_REPOSITORY))) as server:
        yield server
