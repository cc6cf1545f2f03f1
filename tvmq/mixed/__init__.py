"""Mixed precision: measured cost, sensitivity, bit-width assignment (integer linear program)."""
