"""Exercise checks, one module per lesson (from lesson 01 on)."""
