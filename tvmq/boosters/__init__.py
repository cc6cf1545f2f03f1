"""Post-training quantization boosters: float-model and weight transforms that make the integer
model closer to the float one (cross-layer equalization, bias correction, learned rounding).

Each is a QuantConfig switch; the compiler runs the enabled ones between calibration and realize.
"""
