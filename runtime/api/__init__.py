"""Wire types of the HTTP contract: OpenAI (``openai``) and KServe OIP v2 (``oip``)."""

__all__ = ["body", "oip", "openai", "render"]
