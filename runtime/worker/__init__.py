"""The single-model worker server (one model, one runtime, one process)."""

from runtime.worker.app import create_app

__all__ = ["create_app"]
