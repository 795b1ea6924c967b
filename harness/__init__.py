"""hair-harness: one fair benchmark for hair-transfer methods."""

from harness.hookspecs import hookimpl
from harness.method import Checkpoint, Method, NoParams
from harness.timing import stages

__all__ = ["Checkpoint", "Method", "NoParams", "hookimpl", "stages"]
__version__ = "0.1.0"
