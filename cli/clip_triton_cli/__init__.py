"""clip_triton_cli: the `clip-triton` command (export, serve, encode, demo)."""
