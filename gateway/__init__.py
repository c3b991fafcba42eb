"""The HTTP front door and the ``edgeinfer`` command line."""

__all__: list[str] = []
