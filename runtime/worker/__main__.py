"""``python -m runtime.worker --model NAME ...``: one replica (see ``runtime.worker.cli``)."""

from runtime.worker.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
