"""Every Python block of the README runs as written (issue 17, item 5): each in a fresh interpreter, in
a runtime directory of its own, with a `shmbroker serve` listening at "broker" for the blocks that talk
to one (as the README's own commands start it)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 10


@pytest.fixture(scope="module")
def world():
    """A runtime directory, a system directory and a `shmbroker serve` at "broker" in it; a nats-server at
    $NATS_URL for the federation's block."""
    from tests.federation.nats_servers import NatsServer

    d = tempfile.mkdtemp(prefix="brk-readme-")
    nats = NatsServer(Path(d), "readme").start()
    env = dict(os.environ, XDG_RUNTIME_DIR=d, BROKER_SYSTEM_DIR=os.path.join(d, "system"), NATS_URL=nats.url,
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    serve = subprocess.Popen([sys.executable, "-m", "shmbroker", "serve"], cwd=d, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert serve.stdout is not None and "listening on" in serve.stdout.readline()
    yield d, env
    serve.send_signal(signal.SIGTERM)
    serve.wait(30)
    serve.stdout.close()
    nats.stop()
    subprocess.run(["rm", "-rf", d], check=False)


@pytest.mark.stress  # a dozen whole programs
@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_a_readme_block_runs_as_written(world, i):
    d, env = world
    first = BLOCKS[i].strip().splitlines()[0]
    done = subprocess.run([sys.executable, "-c", BLOCKS[i]], cwd=d, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"README block {i} ({first!r}) failed:\n{done.stderr[-3000:]}"
