"""TorchScript code whose shape would overflow the compiler's stack is refused before it is
compiled: TorchScript's parser and emitter recurse once per nesting level, per operator of one
expression chain and per elif of one if, and a few thousand of any kill the process (SIGSEGV),
which a requester could otherwise do to every worker in turn with one SCRIPTVERIFY entry or one
stored script or model."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable

import pytest

from aiworker import Client, Worker
from aiworker.protocol.errors import AIError
from aiworker.protocol.requests import ScriptVerify

pytest.importorskip("torch")

from aiworker.backends.safety.torch_ops import (
    MAX_CHAIN,
    MAX_ELIFS,
    MAX_NESTING,
)
from aiworker.backends.torch_script import compile_script

HEAD = "def f(tensors: List[Tensor], keys: List[str], args: List[str]):\n"


def brackets(n: int) -> str:
    return HEAD + "    x = " + "[" * n + "1" + "]" * n + "\n    return tensors[0]\n"


def blocks(n: int) -> str:
    body = "".join("    " * (i + 1) + "if True:\n" for i in range(n))
    return HEAD + body + "    " * (n + 1) + "pass\n    return tensors[0]\n"


def chain(n: int) -> str:
    return HEAD + "    return tensors[0] + " + " + ".join(["1"] * n) + "\n"


def elifs(n: int) -> str:
    body = "    x = 0\n    if x == 0:\n        x = 1\n"
    body += "".join(f"    elif x == {i}:\n        x = {i}\n" for i in range(1, n + 1))
    return HEAD + body + "    return tensors[0]\n"


SHAPES = [
    (brackets, MAX_NESTING, "nests brackets"),
    (blocks, MAX_NESTING - 1, "nests blocks"),  # the function's body is a block too
    (chain, MAX_CHAIN - 1, "chains operators in one statement"),  # its first + too
    (elifs, MAX_ELIFS, "has elif branches"),
]


@pytest.mark.parametrize(("shape", "limit", "does"), SHAPES)
def test_code_past_a_limit_is_refused_before_it_is_compiled(
    shape: Callable[[int], str], limit: int, does: str
) -> None:
    with pytest.raises(AIError, match=f"^TORCH: the script {does} past "):
        compile_script(shape(limit + 1), ["f"])
    compile_script(shape(limit), ["f"])


def test_code_at_every_limit_at_once_compiles_on_a_small_thread_stack() -> None:
    """The limits leave the compiler room on a 2 MiB thread stack (glibc's default is 8):
    nesting, a chain and elifs all at their limits in one function. In a child process: past
    the stack, the compiler does not fail, it kills the process."""
    program = textwrap.dedent(
        f"""
        import threading
        threading.stack_size(2 << 20)
        from aiworker.backends.safety.torch_ops import MAX_CHAIN, MAX_ELIFS, MAX_NESTING
        from aiworker.backends.torch_script import compile_script
        depth = MAX_NESTING - 2
        body = "".join("    " * (i + 1) + "if True:\\n" for i in range(depth))
        pad = "    " * (depth + 1)
        body += pad + "x = 0\\n" + pad + "if x == 0:\\n" + pad + "    x = 1\\n"
        for i in range(1, MAX_ELIFS):
            body += pad + f"elif x == {{i}}:\\n" + pad + f"    x = {{i}}\\n"
        nested = MAX_NESTING - 1  # the worst case: every bracket open inside the chain
        expression = "[" * nested + "+".join(["1"] * (MAX_CHAIN - nested - 10)) + "]" * nested
        body += pad + "elif x == 5:\\n" + pad + "    y = " + expression + "\\n"
        source = {HEAD!r} + body + "    return tensors[0]\\n"
        outcome = []
        thread = threading.Thread(target=lambda: outcome.append(compile_script(source, ["f"])))
        thread.start()
        thread.join()
        print("compiled" if outcome else "failed")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"the compiler crashed: {done.returncode} {done.stderr[-500:]}"
    assert done.stdout.strip() == "compiled", done.stderr[-2000:]


def test_broken_code_gets_the_compilers_words_unless_it_is_too_deep() -> None:
    """Code Python's tokenizer cannot read has broken syntax: the compiler says where, as
    RedisAI passed it on. Measured on its characters instead of its tokens, it is refused all
    the same when it nests or chains too deep before the break (an unclosed bracket at the end
    must not let 5,000 nested ones through, nor a chain spread over many lines)."""
    with pytest.raises(AIError, match="expected"):
        compile_script("def bar(:\n", ["bar"])
    with pytest.raises(AIError) as info:
        compile_script(HEAD + "    if True:\n        x = 1\n      y = 2\n", ["f"])
    assert "past" not in str(info.value), "the compiler's own message"
    deep = HEAD + "    x = " + "(" * 5000 + "1" + ")" * 5000 + "\n    y = (\n"
    with pytest.raises(AIError, match=r"^TORCH: the script nests brackets past 100 "):
        compile_script(deep, ["f"])
    spread = HEAD + "    x = (1" + " +\n        1" * 2000 + ")\n    y = (\n"
    with pytest.raises(AIError, match=f"chains operators in one statement past {MAX_CHAIN:,}"):
        compile_script(spread, ["f"])
    broken_elifs = elifs(MAX_ELIFS + 1) + "    z = (\n"
    with pytest.raises(AIError, match="has elif branches past 200"):
        compile_script(broken_elifs, ["f"])


def test_a_worker_answers_a_deeply_nested_scriptverify_and_lives(
    client: Client, worker: Worker
) -> None:
    """The attack as it came: one entry of 40 KB whose source nests 20,000 brackets."""
    source = HEAD + "    return tensors[0] + " + "(" * 20_000 + "1" + ")" * 20_000 + "\n"
    reply = client.submit_reply("CPU", ScriptVerify("CPU", source, ("f",)))
    assert reply.status == "error" and "nests brackets past 100" in (reply.error or "")
    reply = client.submit_reply("CPU", ScriptVerify("CPU", brackets(3), ("f",)))
    assert reply.status == "ok", "the same worker serves the next entry"


def test_a_stored_script_too_deep_to_compile_fails_its_jobs_not_the_worker(
    client: Client, worker: Worker
) -> None:
    """Written by hand, past the store's check: the worker's load refuses it."""
    client.scriptstore("s", "CPU", brackets(3), ["f"])
    client.hset("s", mapping={"source": brackets(5_000), "digest": "written by hand"})
    client.tensorset("a", [1.0], dtype="float")
    with pytest.raises(Exception, match="nests brackets past 100"):
        client.scriptexecute("s", "f", inputs=["a"], outputs=["b"])
    client.hset("s", mapping={"source": brackets(3), "digest": "fixed"})
    client.scriptexecute("s", "f", inputs=["a"], outputs=["b"])
    assert client.exists("b")
