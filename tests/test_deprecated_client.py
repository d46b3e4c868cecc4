"""redisai-py's deprecated client methods warn and run their replacements."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import stub_blob

from aiworker import Client, Worker


def test_modelset_and_modelrun(client: Client, worker: Worker) -> None:
    with pytest.deprecated_call(
        match=r"^Call to deprecated method modelset\. \(Use modelstore instead\) -- Deprecated since version 1\.2\.0\.$"
    ):
        assert client.modelset("m", "STUB", "CPU", stub_blob("add"), batch=2, tag="t") == "OK"
    assert client.modelget("m", meta_only=True)["batchsize"] == 2
    client.tensorset("a", np.array([1, 2], np.float32))
    with pytest.deprecated_call(
        match=r"^Call to deprecated method modelrun\. \(Use modelexecute instead\) -- Deprecated since version 1\.2\.0\.$"
    ):
        assert client.modelrun("m", ["a", "a"], "b") == "OK"
    np.testing.assert_array_equal(client.tensorget("b"), [2, 4])


def test_modelset_leaves_out_inputs_and_outputs_but_for_tf(client: Client) -> None:
    """redisai-py's modelset sent INPUTS and OUTPUTS for TF models only: given for another
    backend they were left out, and the model stored."""
    with pytest.deprecated_call():
        stored = client.modelset("m", "STUB", "CPU", stub_blob("add"), inputs="a", outputs=["b"])
    assert stored == "OK"
    meta = client.modelget("m", meta_only=True)
    assert (meta["inputs"], meta["outputs"]) == ([], [])


LEGACY = """
def sub(a, b):
    return a - b

def total(a, rest: List[Tensor]):
    out = a
    for t in rest:
        out = out + t
    return out
"""


def test_scriptset_and_scriptrun_call_functions_positionally(
    client: Client, worker: Worker
) -> None:
    """AI.SCRIPTSET stored no entry points and AI.SCRIPTRUN passed tensors positionally, with the
    inputs after ``$`` as one List[Tensor] argument."""
    pytest.importorskip("torch")
    with pytest.deprecated_call(
        match=r"^Call to deprecated method scriptset\. \(Use scriptstore instead\) -- Deprecated since version 1\.2\.0\.$"
    ):
        assert client.scriptset("s", "CPU", LEGACY, tag="t") == "OK"
    assert client.scriptget("s", meta_only=True)["entry points"] == []
    client.tensorset("a", np.array([5, 7], np.float32))
    client.tensorset("b", np.array([1, 2], np.float32))
    with pytest.deprecated_call(
        match=r"^Call to deprecated method scriptrun\. \(Use scriptexecute instead\) -- Deprecated since version 1\.2\.0\.$"
    ):
        assert client.scriptrun("s", "sub", ["a", "b"], "c") == "OK"
    np.testing.assert_array_equal(client.tensorget("c"), [4, 5])
    assert client.execute_command("PING")  # the connection is still usable
    from aiworker.parser import parse_command

    request = parse_command("AI.SCRIPTRUN s total INPUTS a $ b b OUTPUTS d")
    assert client.submit("CPU", request) == "OK"
    np.testing.assert_array_equal(client.tensorget("d"), [7, 11])
