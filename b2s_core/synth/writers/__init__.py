"""Writers that put simulated scenes on disk in the real datasets' layouts (one module per format)."""
