"""Generate the embedded demo AOI (being written)."""
