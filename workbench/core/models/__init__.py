"""Models: the catalog, finding and loading them, their memory, and the copies decoding runs on (int8, bf16, compiled)."""
