"""Microcontroller target: self-contained C (TVM's C codegen for kernels, a generated model.c)."""
