/* accel.h: C emulator of tvmq's INT8 accelerator (targets/accel/config.py AccelConfig), with
 * an LBFP MAC mode.
 *
 * Bit-exact with tvmq.numerics (the golden model): INT8: int32 accumulate, + bias, requantize,
 * + zero point, clamp; LBFP: tvmq.numerics.lbfp's int64 accumulate (code adder, product table,
 * shift), + bias, acc_to_lbfp. See accel.c for the cycle model. C99, libc + libm only.
 *
 * Every entry point returns 0 on success, nonzero on bad arguments; the reason is then in
 * accel_last_error() (a static buffer: one caller thread at a time).
 */
#ifndef TVMQ_ACCEL_H_
#define TVMQ_ACCEL_H_

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Requant kinds: mult_shift with three roundings, or fp32. */
enum { ACCEL_RQ_DOUBLE = 0, ACCEL_RQ_SINGLE = 1, ACCEL_RQ_TONEAREST = 2, ACCEL_RQ_FP32 = 3 };

/* The hardware: PE array of t_oc output lanes x t_ic input lanes, on-chip buffers, DMA rate. */
typedef struct {
  int32_t t_oc, t_ic, weight_buffer_bytes, act_buffer_bytes, acc_buffer_bytes,
      dma_bytes_per_cycle;
} accel_hw;

/* One conv2d call: batch 1, NCHW input, OIHW weights (O x C/groups x KH x KW). */
typedef struct {
  const int8_t* x; int32_t C, H, W, in_zp;
  const int8_t* w; int32_t O, KH, KW, groups;
  int32_t stride_h, stride_w, pad_top, pad_left, pad_bottom, pad_right, dil_h, dil_w;
  const int32_t* bias;                 /* O entries or NULL */
  int32_t kind;                        /* ACCEL_RQ_* */
  const int32_t* mult;                 /* kinds 0..2: O entries if per_channel else 1 */
  const int32_t* shift;                /* kinds 0..2: idem */
  const float* scale;                  /* kind 3: idem */
  int32_t per_channel;
  int32_t out_zp, qmin, qmax;          /* qmin/qmax within [-128, 127] */
  int8_t* y; int32_t OH, OW;           /* output O x OH x OW */
  /* Operand widths, 4 or 8 (0 reads as 8). w_bits 4: w holds the O*Cg*KH*KW weights packed two
   * per byte (tvmq.numerics.weights.pack_int4: element i in byte i/2, low nibble first, two's
   * complement). a_bits 4: every input value lies in [-8, 7] (checked). y_bits 4: qmin/qmax
   * within [-8, 7]. Values stay in int8 containers in x and y. */
  int32_t w_bits, a_bits, y_bits;
} accel_conv_args;

/* Counters, accumulated (+=) by each call; zero them before the first. */
typedef struct {
  uint64_t cycles, compute_cycles, dma_cycles, requant_cycles, macs, dma_bytes, tiles;
} accel_counters;

/* Requantize n accumulators with per-tensor params (one mult/shift, or one scale), + out_zp,
 * clamp to [qmin, qmax]. kind: ACCEL_RQ_*; mult/shift are read for kinds 0..2, scale for 3. */
int accel_requant(const int32_t* acc, int64_t n, int kind, const int32_t* mult,
                  const int32_t* shift, const float* scale, int32_t out_zp, int32_t qmin,
                  int32_t qmax, int32_t* out);

/* Conv2d on the accelerator: output-channel tiles of t_oc, counters per the cycle model. */
int accel_conv2d(const accel_hw* hw, const accel_conv_args* a, accel_counters* cnt);

/* ---- the interface of compiled models: layer descriptors, per-tile calls, counter bank ----
 *
 * A layer descriptor is ACCEL_D_LEN int32s: one conv2d's geometry and requant settings, the
 * hardware, and the counter slot its tiles add to. Its requant register file `rq` holds two
 * int32 per parameter set (O sets if per_channel, else 1): {M0, shift} for kinds 0..2, {the
 * float32 bits of the scale, 0} for kind 3. A compiled model's TIR loops over the tiles. */
enum {
  ACCEL_D_C, ACCEL_D_H, ACCEL_D_W, ACCEL_D_IN_ZP, ACCEL_D_O, ACCEL_D_KH, ACCEL_D_KW,
  ACCEL_D_GROUPS, ACCEL_D_STRIDE_H, ACCEL_D_STRIDE_W, ACCEL_D_PAD_TOP, ACCEL_D_PAD_LEFT,
  ACCEL_D_PAD_BOTTOM, ACCEL_D_PAD_RIGHT, ACCEL_D_DIL_H, ACCEL_D_DIL_W, ACCEL_D_KIND,
  ACCEL_D_PER_CHANNEL, ACCEL_D_OUT_ZP, ACCEL_D_QMIN, ACCEL_D_QMAX, ACCEL_D_OH, ACCEL_D_OW,
  ACCEL_D_T_OC, ACCEL_D_T_IC, ACCEL_D_WEIGHT_BUFFER, ACCEL_D_ACT_BUFFER, ACCEL_D_ACC_BUFFER,
  ACCEL_D_DMA, ACCEL_D_COUNTER_SLOT, ACCEL_D_W_BITS, ACCEL_D_A_BITS, ACCEL_D_Y_BITS,
  ACCEL_D_LEN
};

/* ACCEL_D_LEN, so callers can check they agree on the layout. */
int accel_desc_len(void);

/* Validate a descriptor and its register file without running anything (what every tile call
 * checks): 0 if the accelerator can run the layer. */
int accel_conv2d_check(const int32_t* desc, const int32_t* rq);

/* One output-channel tile: channels [o0, o0 + min(t_oc, O - o0)), o0 a multiple of t_oc.
 * bias may be NULL. Tiles of a call run in order from o0 = 0 (the DMA model skips input
 * channels earlier tiles loaded). Counters are added into the descriptor's slot, which is
 * created if the bank is smaller (a compiled model loaded in a fresh process). */
int accel_conv2d_tile(const int32_t* desc, const int8_t* x, const int8_t* w, const int32_t* bias,
                      const int32_t* rq, int8_t* y, int32_t o0);

/* The counter bank (at most 2**20 slots): accel_counters_alloc(n) returns the first of n new
 * zeroed slots (-1 if n < 1 or no room); read copies a slot out, clear zeroes it. */
int32_t accel_counters_alloc(int32_t n);
int accel_counters_read(int32_t slot, accel_counters* out);
int accel_counters_clear(int32_t slot);

/* ---- LBFP mode (tvmq/numerics/lbfp.py): the same PE array, tiles and counter bank ----------
 *
 * An LBFP layer descriptor is ACCEL_L_LEN int32s: conv2d geometry, the LBFP format (bits,
 * frac_bits, lut_bits: one format for activations, weights and output), the weight block size
 * along input channels (w_block: it sets the exponent bytes the DMA moves), the hardware and
 * the counter slot. A code word is s << (bits - 1) | c; c_max = 2^(bits-1) - 1 is zero. */
enum {
  ACCEL_L_C, ACCEL_L_H, ACCEL_L_W, ACCEL_L_O, ACCEL_L_KH, ACCEL_L_KW, ACCEL_L_GROUPS,
  ACCEL_L_STRIDE_H, ACCEL_L_STRIDE_W, ACCEL_L_PAD_TOP, ACCEL_L_PAD_LEFT, ACCEL_L_PAD_BOTTOM,
  ACCEL_L_PAD_RIGHT, ACCEL_L_DIL_H, ACCEL_L_DIL_W, ACCEL_L_OH, ACCEL_L_OW,
  ACCEL_L_BITS, ACCEL_L_FRAC_BITS, ACCEL_L_LUT_BITS,
  ACCEL_L_W_BLOCK, /* weight block size along input channels (for exponent DMA bytes) */
  ACCEL_L_T_OC, ACCEL_L_T_IC, ACCEL_L_WEIGHT_BUFFER, ACCEL_L_ACT_BUFFER, ACCEL_L_ACC_BUFFER,
  ACCEL_L_DMA, ACCEL_L_COUNTER_SLOT, ACCEL_L_LEN
};

/* ACCEL_L_LEN, so callers can check they agree on the layout. */
int accel_lbfp_desc_len(void);

/* Validate an LBFP descriptor (geometry as accel_conv2d_check; bits in [2, 8], frac_bits in
 * [0, min(4, bits - 2)], lut_bits in [1, 30], w_block >= 1; a weight tile's code words plus
 * exponent bytes fit weight_buffer_bytes; 8*t_oc bytes of int64 accumulators fit
 * acc_buffer_bytes; counter_slot in [0, 2**20)): 0 if the accelerator can run the layer. */
int accel_lbfp_conv2d_check(const int32_t* desc);

/* One output-channel tile [o0, o0+min(t_oc, O-o0)) of an LBFP conv2d, batch 1, NCHW / OIHW.
 * x: C*H*W code words; w: O*Cg*KH*KW code words; x_exp: C exponents (one per input channel);
 * w_exp: O*Cg*KH*KW exponents (per weight element, blocks expanded); e_ref: O reference
 * exponents (as lbfp.conv_e_ref); bias: O int64 in accumulator units or NULL; out_exp: O
 * exponents of the output (the block exponent of the output block holding channel o);
 * clip: {lo, hi} doubles (use -INFINITY/INFINITY for none); lut: 2^frac_bits int64 product
 * table (fmt.lut); thresholds: c_max doubles (fmt.thresholds); y: O*OH*OW code words.
 *
 * y[o, oy, ox] = lbfp.acc_to_lbfp(acc, e_ref[o], out_exp[o], lo, hi) of
 * acc = bias[o] + sum over the group's channels c and taps in the image of product terms
 * sign * (LUT[r] >> (q + e_ref[o] - x_exp[c] - w_exp[o, c, kh, kw])), s = ca + cb,
 * q = s >> frac_bits, r = s & (2^frac_bits - 1), 0 if either code is c_max or the shift is
 * >= 63. Also checked (nonzero return): code words < 2^bits; exponents x_exp, w_exp, out_exp in
 * [-126, 127]; e_ref[o] >= x_exp[c] + w_exp[o, c, kh, kw] over o's reduction; |acc| < 2^53;
 * clip not NaN with lo < inf, hi > -inf; lut in [0, 2^lut_bits]; thresholds positive and
 * decreasing. Tiles run in order from o0 = 0; counters go to the descriptor's slot (created if
 * the bank is smaller), as accel_conv2d_tile. */
int accel_lbfp_conv2d_tile(const int32_t* desc, const uint8_t* x, const uint8_t* w,
                           const int32_t* x_exp, const int32_t* w_exp, const int32_t* e_ref,
                           const int64_t* bias, const int32_t* out_exp, const double* clip,
                           const int64_t* lut, const double* thresholds, uint8_t* y,
                           int32_t o0);

/* The reason for the last nonzero return. */
const char* accel_last_error(void);

/* Set that reason (printf format); returns 1 (internal to the emulator's sources). */
int accel_fail(const char* fmt, ...);

/* ---- gradient quantization unit (gradq.c; tvmq/numerics/gradq.py) ------------------------
 *
 * Entry points here report bad arguments through accel_last_error(). */
enum { ACCEL_GRADQ_NEAREST = 0, ACCEL_GRADQ_STOCHASTIC = 1, ACCEL_GRADQ_RTZ = 2 };
enum { ACCEL_GRADQ_CLIP_NONE = 0, ACCEL_GRADQ_CLIP_MAX = 1, ACCEL_GRADQ_CLIP_ZSCORE = 2 };

/* Quantize n = outer*channels*inner float32 gradients laid out [outer][channels][inner]
 * (per tensor: outer = channels = 1) to int16 codes in [-qmax, qmax], qmax = 2^(bits-1) - 1,
 * with one float32 step per channel, bit-exact with tvmq.numerics.gradq.quantize_gradient.
 * bits in [2, 16]; rounding ACCEL_GRADQ_{NEAREST, STOCHASTIC, RTZ}; clip ACCEL_GRADQ_CLIP_*;
 * k: the z-score multiplier, finite and > 0. Stochastic rounding uses counter offset + i for
 * the element at flat index i (mod 2^32) under key seed. g must be finite; clip 'none' also
 * needs max|g| of each channel <= 2^127. */
int accel_gradq(const float* g, int64_t outer, int64_t channels, int64_t inner, int bits,
                int rounding, int clip, double k, uint32_t seed, uint32_t offset,
                int16_t* codes, float* step);

/* u[i] = tvmq.numerics.gradq.uniform(seed, offset, n)[i]: the stochastic rounding draws. */
int accel_uniform(uint32_t seed, uint32_t offset, int64_t n, float* u);

/* The reason for the last nonzero return of accel_gradq or accel_uniform. */

#ifdef __cplusplus
}
#endif

#endif /* TVMQ_ACCEL_H_ */
