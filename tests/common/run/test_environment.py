"""common.run.environment: the library builds and CPU a result was made on."""
import importlib.metadata

import torch

from common.run.environment import runtime_environment


def test_runtime_environment_names_the_installed_builds_and_the_cpu():
    env = runtime_environment()
    assert env["torch"] == importlib.metadata.version("torch") and torch.__version__.startswith(env["torch"])
    assert env["transformers"] == importlib.metadata.version("transformers")
    assert env["numpy"] == importlib.metadata.version("numpy")
    assert env["cpu"] and isinstance(env["cpu"], str)
    assert env["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
