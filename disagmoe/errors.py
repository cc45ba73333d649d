"""The project's exceptions."""

from disagmoe._C import KVCacheExhausted

KVCacheExhausted.__doc__ = (
    "The KV-cache pool, the request rows or max_seq_len cannot hold a batch. "
    "A RuntimeError; the manager is left exactly as it was."
)
KVCacheExhausted.__module__ = "disagmoe"

__all__ = ["KVCacheExhausted"]
