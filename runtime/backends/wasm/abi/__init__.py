"""A guest ABI per module; ``base`` holds the interface and the registry."""
