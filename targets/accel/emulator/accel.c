/* accel.c: C emulator of tvmq's INT8 accelerator and its LBFP MAC mode, bit-exact with
 * tvmq.numerics (requant.py for INT8, lbfp.py for LBFP).
 *
 * Build: cc -O2 -std=c99 -Wall -Wextra -Werror -fPIC -shared -ffp-contract=off -fwrapv
 *        accel.c -lm
 * (-ffp-contract=off: no FMA may be formed in the fp32 requant; -fwrapv: the int32
 *  accumulators wrap like hardware instead of being undefined on overflow.)
 *
 * Data flow of accel_conv2d: output-channel tiles of t_oc (outer; accel_conv2d_tile runs one,
 * which is how compiled models call it), then output positions, then the input channels and
 * kernel taps of each lane's group, accumulating t_oc int32 lanes (+ bias), then the tile's
 * requant units (+ out_zp, clamp) write int8.
 *
 * Cycle model (all integer, deterministic). Per call:
 *   Cg = C / groups, Og = O / groups, resident = (C*H*W <= act_buffer_bytes).
 *   Operand widths w_bits, a_bits, y_bits in {4, 8}. A PE's 8x8 multiplier splits into two
 *   8x4 / 4x8 or four 4x4 multipliers whose products add into the lane's accumulator (Bit
 *   Fusion's fused units), so a PE takes L = (8 / a_bits) * (8 / w_bits) products of its
 *   reduction per step (1, 2 or 4): its input lane's channels c = i, i + t_ic, ... times the
 *   kernel taps, ceil(Cg / t_ic) * KH*KW products per output position.
 * Per output-channel tile [o0, o0 + tile_O), tile_O = min(t_oc, O - o0):
 *   compute_cycles = OH*OW*ceil(KH*KW*ceil(Cg / t_ic) / L)   one PE-array step per cycle;
 *                                                   each lane reads the Cg channels of its own
 *                                                   group (depthwise: one input lane busy, its
 *                                                   fused units take L taps per step)
 *   weight bytes   = ceil(tile_O*Cg*KH*KW*w_bits / 8)   packed; must fit weight_buffer_bytes
 *   act bytes      = ceil(C_read*H*W*a_bits / 8), C_read = Cg * (number of groups the tile's
 *                    channels span); if resident, only input channels no earlier tile loaded
 *                    are paid for (groups == 1: the first tile pays C*H*W, the others 0);
 *                    the DMA moves 4-bit activations packed (the host keeps int8 containers)
 *   output bytes   = ceil(tile_O*OH*OW*y_bits / 8)
 *   dma_bytes      = weight + act + output bytes   (bias and requant params not counted)
 *   dma_cycles     = ceil(dma_bytes / dma_bytes_per_cycle)
 *   requant_cycles = OH*OW                         t_oc requant units in parallel, one output
 *                                                   position per cycle
 *   cycles         = max(compute_cycles, dma_cycles) + requant_cycles   (DMA double-buffered,
 *                                                   overlapped with compute)
 *   macs           = OH*OW*tile_O*Cg*KH*KW          real MACs
 * The call adds the sum over tiles to each counter and the number of tiles to `tiles`.
 * 4*t_oc bytes of int32 accumulators must fit acc_buffer_bytes (else error).
 * With all widths 8 these are the INT8 accelerator's counts.
 *
 * LBFP mode (accel_lbfp_conv2d_tile; tvmq/numerics/lbfp.py). Same PE array, tiling, data flow
 * and counters; an LBFP MAC is a code adder + product-table (LUT) lookup + shifter instead of a
 * multiplier, still one PE-array step per cycle, accumulating in int64. Per tile, as INT8:
 *   compute_cycles = OH*OW*KH*KW*ceil(Cg / t_ic)
 *   act bytes      = as INT8 (one byte per code word)
 *   output bytes   = tile_O*OH*OW                  (one byte per code word)
 * but
 *   weight bytes   = tile_O*Cg*KH*KW code words + tile_O*ceil(Cg / W_BLOCK)*KH*KW exponent
 *                    bytes (one per weight block of W_BLOCK input channels); the sum must fit
 *                    weight_buffer_bytes (else error)
 *   dma_bytes      = weight + act + output bytes   (bias, activation and output exponents,
 *                                                   e_ref, LUT and thresholds not counted)
 *   dma_cycles     = ceil(dma_bytes / dma_bytes_per_cycle)
 *   requant_cycles = OH*OW                         output conversion (acc_to_lbfp): t_oc
 *                                                   converters in parallel, one output
 *                                                   position per cycle
 *   cycles         = max(compute_cycles, dma_cycles) + requant_cycles
 *   macs           = OH*OW*tile_O*Cg*KH*KW
 * 8*t_oc bytes of int64 accumulators must fit acc_buffer_bytes (else error).
 */
#include "accel.h"

#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* `>>` on a negative signed value is implementation-defined in C; gcc and clang shift
 * arithmetically (floor), which is what tvmq.numerics (NumPy >>) does. Refuse other compilers'
 * behaviour at compile time (C99 has no _Static_assert: a negative array size fails). */
typedef char accel_check_arithmetic_shift[(((int64_t)-5) >> 1) == -3 ? 1 : -1];
/* float expressions must be evaluated in float (no x87 extended precision). */
#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "accel.c needs FLT_EVAL_METHOD == 0 (SSE float math), for bit-exact fp32 requant"
#endif

static char g_error[512];

/* Record the reason for a nonzero return (printf format) and return 1; gradq.c uses it too. */
int accel_fail(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g_error, sizeof g_error, fmt, ap);
  va_end(ap);
  return 1;
}
#define fail accel_fail

const char* accel_last_error(void) { return g_error; }

/* ---- the requant unit: a line-by-line mirror of tvmq/numerics/requant.py ---------------- */

/* tvmq _saturate_int32: clamp an int64 to [INT32_MIN, INT32_MAX]. */
static int32_t sat_i32(int64_t x) {
  return x < INT32_MIN ? INT32_MIN : x > INT32_MAX ? INT32_MAX : (int32_t)x;
}

/* gemmlowp SaturatingRoundingDoublingHighMul (ARM VQRDMULH): round(a*b / 2**31) half up,
 * nudge 2**30 or 1 - 2**30, C division truncating toward zero; INT32_MIN*INT32_MIN saturates
 * to INT32_MAX. tvmq _srdhm. */
static int32_t srdhm(int32_t a, int32_t b) {
  if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
  int64_t ab = (int64_t)a * (int64_t)b;
  int64_t nudge = ab >= 0 ? (INT64_C(1) << 30) : (1 - (INT64_C(1) << 30));
  return (int32_t)((ab + nudge) / (INT64_C(1) << 31));
}

/* gemmlowp RoundingDivideByPOT: round(x / 2**e) half away from zero, e in [0, 31]; int64 mask
 * so e == 31 is defined. tvmq _rdbpot. */
static int32_t rdbpot(int32_t x, int e) {
  int64_t mask = (INT64_C(1) << e) - 1;
  int64_t remainder = (int64_t)x & mask;
  int64_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (int32_t)(((int64_t)x >> e) + (remainder > threshold ? 1 : 0));
}

/* gemmlowp / TFLite MultiplyByQuantizedMultiplier ("double rounding") with a saturating left
 * shift (ARM VQSHL): tvmq _double. */
static int32_t rq_double(int32_t acc, int32_t mult, int32_t shift) {
  int left = shift > 0 ? shift : 0;
  int right = shift < 0 ? -shift : 0;
  int32_t x = sat_i32((int64_t)acc * (INT64_C(1) << left));
  return rdbpot(srdhm(x, mult), right);
}

/* CMSIS-NN arm_nn_requantize with CMSIS_NN_USE_SINGLE_ROUNDING, TVM QNN UPWARD:
 * floor(p / 2**k + 1/2), k = 31 - shift in 1..62. tvmq _single then _saturate_int32. */
static int32_t rq_single(int32_t acc, int32_t mult, int32_t shift) {
  int k = 31 - shift;
  int64_t p = (int64_t)acc * (int64_t)mult;
  return sat_i32(((p >> (k - 1)) + 1) >> 1);
}

/* TVM QNN TONEAREST: (p + 2**(k-1) - (p < 0)) >> k, half away from zero. tvmq _tonearest. */
static int32_t rq_tonearest(int32_t acc, int32_t mult, int32_t shift) {
  int k = 31 - shift;
  int64_t p = (int64_t)acc * (int64_t)mult; /* |p| < 2**62: p + 2**61 cannot overflow */
  int64_t half = INT64_C(1) << (k - 1);
  return sat_i32((p + (p >= 0 ? half : half - 1)) >> k);
}

/* tvmq requantize_fp32: one float32 multiply (no FMA, no float64), rint half to even under
 * the default rounding mode, clip to [-2**31, 2**31 - 128] in float32, convert. */
static int32_t rq_fp32(int32_t acc, float scale) {
  float product = (float)acc * scale;
  float r = nearbyintf(product);
  if (r < -2147483648.0f) r = -2147483648.0f;
  if (r > 2147483520.0f) r = 2147483520.0f; /* 2**31 - 128, the largest float32 < 2**31 */
  return (int32_t)r;
}

/* tvmq requantize: rq.apply(acc) + zero_point in int64, clip to [qmin, qmax]. */
static int32_t requant_one(int kind, int32_t acc, int32_t mult, int32_t shift, float scale,
                           int32_t out_zp, int32_t qmin, int32_t qmax) {
  int32_t r;
  switch (kind) {
    case ACCEL_RQ_DOUBLE: r = rq_double(acc, mult, shift); break;
    case ACCEL_RQ_SINGLE: r = rq_single(acc, mult, shift); break;
    case ACCEL_RQ_TONEAREST: r = rq_tonearest(acc, mult, shift); break;
    default: r = rq_fp32(acc, scale); break;
  }
  int64_t v = (int64_t)r + out_zp;
  return (int32_t)(v < qmin ? qmin : v > qmax ? qmax : v);
}

/* Validate n requant parameter sets of `kind` (what tvmq.numerics.Requant checks). */
static int check_params(int kind, const int32_t* mult, const int32_t* shift, const float* scale,
                        int64_t n) {
  if (kind < 0 || kind > 3) return fail("kind=%d: use 0 double, 1 single, 2 tonearest, 3 fp32", kind);
  if (kind == ACCEL_RQ_FP32) {
    if (!scale) return fail("scale is NULL: kind=3 (fp32) needs a scale");
    for (int64_t i = 0; i < n; ++i)
      if (!(isfinite(scale[i]) && scale[i] >= 0.0f))
        return fail("scale[%lld]=%g: use a finite float32 >= 0", (long long)i, (double)scale[i]);
    return 0;
  }
  if (!mult || !shift) return fail("mult or shift is NULL: kind=%d (mult_shift) needs both", kind);
  for (int64_t i = 0; i < n; ++i) {
    if (mult[i] < 0) return fail("mult[%lld]=%d: use [0, 2**31 - 1]", (long long)i, mult[i]);
    if (shift[i] < -31 || shift[i] > 30)
      return fail("shift[%lld]=%d: use [-31, 30]", (long long)i, shift[i]);
  }
  return 0;
}

int accel_requant(const int32_t* acc, int64_t n, int kind, const int32_t* mult,
                  const int32_t* shift, const float* scale, int32_t out_zp, int32_t qmin,
                  int32_t qmax, int32_t* out) {
  if (n < 0) return fail("n=%lld: use n >= 0", (long long)n);
  if (n > 0 && (!acc || !out)) return fail("acc or out is NULL");
  if (qmin > qmax) return fail("qmin=%d > qmax=%d", qmin, qmax);
  if (check_params(kind, mult, shift, scale, 1)) return 1;
  int32_t m = kind == ACCEL_RQ_FP32 ? 0 : mult[0], s = kind == ACCEL_RQ_FP32 ? 0 : shift[0];
  float sc = kind == ACCEL_RQ_FP32 ? scale[0] : 0.0f;
  for (int64_t i = 0; i < n; ++i) out[i] = requant_one(kind, acc[i], m, s, sc, out_zp, qmin, qmax);
  return 0;
}

/* ---- conv2d ------------------------------------------------------------------------------ */

static int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

/* An operand width field: 0 reads as 8 (callers that predate 4-bit operands). */
static int32_t bits_of(int32_t bits) { return bits == 0 ? 8 : bits; }

/* Weight k of a conv's weight buffer: int8, or packed int4 (low nibble first, sign-extended). */
static int32_t weight_at(const int8_t* w, int64_t k, int32_t w_bits) {
  if (w_bits == 8) return w[k];
  const uint8_t byte = (uint8_t)w[k >> 1];
  const int32_t nibble = (k & 1) ? byte >> 4 : byte & 0xF;
  return nibble >= 8 ? nibble - 16 : nibble;
}

/* The hardware's fields are usable. */
static int check_hw(const accel_hw* hw) {
  if (hw->t_oc < 1 || hw->t_ic < 1 || hw->weight_buffer_bytes < 1 || hw->act_buffer_bytes < 1 ||
      hw->acc_buffer_bytes < 1 || hw->dma_bytes_per_cycle < 1)
    return fail("accel_hw: t_oc=%d t_ic=%d weight_buffer_bytes=%d act_buffer_bytes=%d "
                "acc_buffer_bytes=%d dma_bytes_per_cycle=%d: all must be >= 1",
                hw->t_oc, hw->t_ic, hw->weight_buffer_bytes, hw->act_buffer_bytes,
                hw->acc_buffer_bytes, hw->dma_bytes_per_cycle);
  return 0;
}

/* The conv geometry of `a` (sizes, groups, strides, padding, dilation, OH/OW) is consistent. */
static int check_geometry(const accel_conv_args* a) {
  if (a->C < 1 || a->H < 1 || a->W < 1 || a->O < 1 || a->KH < 1 || a->KW < 1 || a->groups < 1)
    return fail("C=%d H=%d W=%d O=%d KH=%d KW=%d groups=%d: all must be >= 1", a->C, a->H, a->W,
                a->O, a->KH, a->KW, a->groups);
  if (a->C % a->groups || a->O % a->groups)
    return fail("groups=%d must divide C=%d and O=%d", a->groups, a->C, a->O);
  if (a->stride_h < 1 || a->stride_w < 1 || a->dil_h < 1 || a->dil_w < 1)
    return fail("stride (%d, %d) and dilation (%d, %d) must be >= 1", a->stride_h, a->stride_w,
                a->dil_h, a->dil_w);
  if (a->pad_top < 0 || a->pad_left < 0 || a->pad_bottom < 0 || a->pad_right < 0)
    return fail("padding (%d, %d, %d, %d) must be >= 0", a->pad_top, a->pad_left, a->pad_bottom,
                a->pad_right);
  int64_t span_h = (int64_t)a->H + a->pad_top + a->pad_bottom - (int64_t)a->dil_h * (a->KH - 1);
  int64_t span_w = (int64_t)a->W + a->pad_left + a->pad_right - (int64_t)a->dil_w * (a->KW - 1);
  int64_t oh = span_h < 1 ? 0 : (span_h - 1) / a->stride_h + 1;
  int64_t ow = span_w < 1 ? 0 : (span_w - 1) / a->stride_w + 1;
  if (oh < 1 || ow < 1 || a->OH != oh || a->OW != ow)
    return fail("OH=%d OW=%d: the conv formula gives OH=%lld OW=%lld (must be >= 1)", a->OH,
                a->OW, (long long)oh, (long long)ow);
  return 0;
}

/* t_oc accumulators of `lane_bytes` bytes (`type`: int32 / int64) fit acc_buffer_bytes. */
static int check_acc_buffer(const accel_hw* hw, int64_t lane_bytes, const char* type) {
  int64_t acc_bytes = lane_bytes * hw->t_oc;
  if (acc_bytes > hw->acc_buffer_bytes)
    return fail("acc_buffer_bytes=%d too small: %d %s accumulators need %lld bytes",
                hw->acc_buffer_bytes, hw->t_oc, type, (long long)acc_bytes);
  return 0;
}

/* Everything but the data pointers: can this hardware run this layer? */
static int check_layer(const accel_hw* hw, const accel_conv_args* a) {
  if (check_hw(hw) || check_geometry(a)) return 1;
  if (a->per_channel != 0 && a->per_channel != 1)
    return fail("per_channel=%d: use 0 or 1", a->per_channel);
  if (a->qmin < -128 || a->qmax > 127 || a->qmin > a->qmax)
    return fail("qmin=%d qmax=%d: need -128 <= qmin <= qmax <= 127 (int8 output)", a->qmin,
                a->qmax);
  if (check_params(a->kind, a->mult, a->shift, a->scale, a->per_channel ? a->O : 1)) return 1;
  if (check_acc_buffer(hw, 4, "int32")) return 1;
  const int32_t wb = bits_of(a->w_bits), ab = bits_of(a->a_bits), yb = bits_of(a->y_bits);
  if ((wb != 4 && wb != 8) || (ab != 4 && ab != 8) || (yb != 4 && yb != 8))
    return fail("w_bits=%d a_bits=%d y_bits=%d: each must be 4 or 8", a->w_bits, a->a_bits,
                a->y_bits);
  if (yb == 4 && (a->qmin < -8 || a->qmax > 7))
    return fail("qmin=%d qmax=%d: y_bits=4 needs -8 <= qmin <= qmax <= 7", a->qmin, a->qmax);
  if (ab == 4 && (a->in_zp < -8 || a->in_zp > 7))
    return fail("in_zp=%d: a_bits=4 needs a zero point in [-8, 7]", a->in_zp);
  int64_t tile_o = hw->t_oc < a->O ? hw->t_oc : a->O;
  int64_t wbytes = ceil_div(tile_o * (a->C / a->groups) * a->KH * a->KW * wb, 8);
  if (wbytes > hw->weight_buffer_bytes)
    return fail("weight_buffer_bytes=%d too small: a tile of %lld output channels needs %lld "
                "bytes (%lld x %d x %d x %d at %d bits)", hw->weight_buffer_bytes,
                (long long)tile_o, (long long)wbytes, (long long)tile_o, a->C / a->groups,
                a->KH, a->KW, wb);
  return 0;
}

static int check_conv(const accel_hw* hw, const accel_conv_args* a) {
  if (!hw || !a) return fail("hw or args is NULL");
  if (!a->x || !a->w || !a->y) return fail("x, w or y is NULL");
  return check_layer(hw, a);
}

/* Cycle model of one tile (see the top of this file), added into cnt. Tiles run in order from
 * o0 = 0, so the input channels earlier tiles loaded are those below the previous tile's end.
 * w_block: 0 for INT8; for LBFP the weight block size along input channels, adding one
 * exponent byte per block, tile_o*ceil(Cg / w_block)*KH*KW, to the weight bytes. */
static void count_tile(const accel_hw* hw, const accel_conv_args* a, int64_t o0, int64_t tile_o,
                       int64_t w_block, accel_counters* cnt) {
  const int64_t wb = bits_of(a->w_bits), ab = bits_of(a->a_bits), yb = bits_of(a->y_bits);
  const int64_t fused = (8 / ab) * (8 / wb); /* products per PE step */
  int64_t cg = a->C / a->groups, og = a->O / a->groups, hw_in = (int64_t)a->H * a->W;
  int64_t pos = (int64_t)a->OH * a->OW, taps = (int64_t)a->KH * a->KW;
  int64_t g_lo = o0 / og, g_hi = (o0 + tile_o - 1) / og;
  int64_t ch_lo = g_lo * cg, ch_hi = (g_hi + 1) * cg; /* input channels [ch_lo, ch_hi) read */
  int64_t loaded_end = o0 == 0 ? 0 : ((o0 - 1) / og + 1) * cg;
  int64_t act = (ch_hi - ch_lo) * hw_in;
  if ((int64_t)a->C * hw_in <= hw->act_buffer_bytes) { /* resident: pay only for new channels */
    int64_t from = ch_lo > loaded_end ? ch_lo : loaded_end;
    act = ch_hi > from ? (ch_hi - from) * hw_in : 0;
  }
  int64_t exp_bytes = w_block > 0 ? tile_o * ceil_div(cg, w_block) * taps : 0;
  int64_t bytes = ceil_div(tile_o * cg * taps * wb, 8) + exp_bytes + ceil_div(act * ab, 8) +
                  ceil_div(tile_o * pos * yb, 8);
  int64_t compute = pos * ceil_div(taps * ceil_div(cg, hw->t_ic), fused);
  int64_t dma = ceil_div(bytes, hw->dma_bytes_per_cycle);
  int64_t requant = pos;
  cnt->compute_cycles += (uint64_t)compute;
  cnt->dma_cycles += (uint64_t)dma;
  cnt->requant_cycles += (uint64_t)requant;
  cnt->cycles += (uint64_t)((compute > dma ? compute : dma) + requant);
  cnt->macs += (uint64_t)(pos * tile_o * cg * taps);
  cnt->dma_bytes += (uint64_t)bytes;
  cnt->tiles += 1;
}

/* One output-channel tile [o0, o0 + tile_o) of a checked conv: the PE array's work, the
 * tile's requant units, and its counters. */
static int conv_tile(const accel_hw* hw, const accel_conv_args* a, int32_t o0,
                     accel_counters* cnt) {
  const int32_t KH = a->KH, KW = a->KW, OH = a->OH, OW = a->OW;
  const int32_t cg = a->C / a->groups, og = a->O / a->groups;
  const int32_t tile_o = a->O - o0 < hw->t_oc ? a->O - o0 : hw->t_oc;
  const int32_t ch_lo = o0 / og * cg, ch_hi = ((o0 + tile_o - 1) / og + 1) * cg;
  const int64_t hp = (int64_t)a->H + a->pad_top + a->pad_bottom;
  const int64_t wp = (int64_t)a->W + a->pad_left + a->pad_right;
  const int64_t plane = hp * wp, ksize = (int64_t)cg * KH * KW;
  /* The tile's input channels as the PE array sees them: x - in_zp, zero in the padding. */
  int32_t* xp = calloc((size_t)((ch_hi - ch_lo) * plane), sizeof *xp);
  int32_t* acc = malloc((size_t)tile_o * sizeof *acc);
  if (!xp || !acc) {
    free(xp);
    free(acc);
    return fail("out of memory for the padded input (%lld bytes)",
                (long long)((ch_hi - ch_lo) * plane * 4));
  }
  const int32_t x_lo = -(1 << (bits_of(a->a_bits) - 1)), x_hi = (1 << (bits_of(a->a_bits) - 1)) - 1;
  for (int64_t c = ch_lo; c < ch_hi; ++c)
    for (int64_t i = 0; i < a->H; ++i) {
      const int8_t* src = a->x + (c * a->H + i) * a->W;
      int32_t* dst = xp + ((c - ch_lo) * hp + i + a->pad_top) * wp + a->pad_left;
      for (int64_t j = 0; j < a->W; ++j) {
        if (src[j] < x_lo || src[j] > x_hi) {
          free(xp);
          free(acc);
          return fail("input value %d at channel %lld, row %lld, column %lld is outside "
                      "a_bits=%d ([%d, %d])", src[j], (long long)c, (long long)i, (long long)j,
                      bits_of(a->a_bits), x_lo, x_hi);
        }
        dst[j] = (int32_t)src[j] - a->in_zp;
      }
    }
  const int32_t wb = bits_of(a->w_bits);
  for (int32_t oy = 0; oy < OH; ++oy)
    for (int32_t ox = 0; ox < OW; ++ox) {
      const int64_t origin = (int64_t)oy * a->stride_h * wp + (int64_t)ox * a->stride_w;
      for (int32_t l = 0; l < tile_o; ++l) { /* the t_oc lanes */
        const int32_t o = o0 + l;
        const int32_t* xg = xp + (int64_t)(o / og * cg - ch_lo) * plane + origin;
        const int64_t wo = (int64_t)o * ksize;
        int32_t s = a->bias ? a->bias[o] : 0;
        for (int32_t c = 0; c < cg; ++c)
          for (int32_t ky = 0; ky < KH; ++ky) {
            const int32_t* row = xg + c * plane + (int64_t)ky * a->dil_h * wp;
            const int64_t wr = wo + ((int64_t)c * KH + ky) * KW;
            for (int32_t kx = 0; kx < KW; ++kx)
              s += row[(int64_t)kx * a->dil_w] * weight_at(a->w, wr + kx, wb);
          }
        acc[l] = s;
      }
      for (int32_t l = 0; l < tile_o; ++l) { /* the tile's requant units */
        const int32_t o = o0 + l, p = a->per_channel ? o : 0;
        const int32_t m = a->kind == ACCEL_RQ_FP32 ? 0 : a->mult[p];
        const int32_t sh = a->kind == ACCEL_RQ_FP32 ? 0 : a->shift[p];
        const float sc = a->kind == ACCEL_RQ_FP32 ? a->scale[p] : 0.0f;
        a->y[((int64_t)o * OH + oy) * OW + ox] =
            (int8_t)requant_one(a->kind, acc[l], m, sh, sc, a->out_zp, a->qmin, a->qmax);
      }
    }
  count_tile(hw, a, o0, tile_o, 0, cnt);
  free(xp);
  free(acc);
  return 0;
}

int accel_conv2d(const accel_hw* hw, const accel_conv_args* a, accel_counters* cnt) {
  if (check_conv(hw, a)) return 1;
  if (!cnt) return fail("counters is NULL");
  for (int32_t o0 = 0; o0 < a->O; o0 += hw->t_oc)
    if (conv_tile(hw, a, o0, cnt)) return 1;
  return 0;
}

/* ---- layer descriptors and the counter bank (the interface of compiled models) ------------ */

static accel_counters* g_bank = NULL;
static int32_t g_bank_size = 0;
enum { MAX_SLOTS = 1 << 20 };

/* Grow the bank to `size` zeroed slots. */
static int grow_bank(int64_t size) {
  if (size <= g_bank_size) return 0;
  if (size > MAX_SLOTS) return fail("counter bank: %lld slots exceed the limit %d",
                                    (long long)size, MAX_SLOTS);
  accel_counters* grown = realloc(g_bank, (size_t)size * sizeof *grown);
  if (!grown) return fail("counter bank: out of memory for %lld slots", (long long)size);
  memset(grown + g_bank_size, 0, (size_t)(size - g_bank_size) * sizeof *grown);
  g_bank = grown;
  g_bank_size = (int32_t)size;
  return 0;
}

int32_t accel_counters_alloc(int32_t n) {
  if (n < 1 || grow_bank((int64_t)g_bank_size + n)) return -1;
  return g_bank_size - n;
}

static accel_counters* slot_of(int32_t slot) {
  if (slot < 0 || slot >= g_bank_size) {
    fail("counter slot %d: allocate it with accel_counters_alloc (%d slots exist)", slot,
         g_bank_size);
    return NULL;
  }
  return &g_bank[slot];
}

int accel_counters_read(int32_t slot, accel_counters* out) {
  const accel_counters* c = slot_of(slot);
  if (!c || !out) return c ? fail("out is NULL") : 1;
  *out = *c;
  return 0;
}

int accel_counters_clear(int32_t slot) {
  accel_counters* c = slot_of(slot);
  if (!c) return 1;
  memset(c, 0, sizeof *c);
  return 0;
}

int accel_desc_len(void) { return ACCEL_D_LEN; }

/* A descriptor's requant register file as the mult/shift/scale arrays of accel_conv_args; the
 * caller frees *mult (one allocation holds all three). */
static int unpack(const int32_t* d, const int32_t* rq, accel_hw* hw, accel_conv_args* a) {
  if (!d || !rq) return fail("desc or rq is NULL");
  *hw = (accel_hw){d[ACCEL_D_T_OC], d[ACCEL_D_T_IC], d[ACCEL_D_WEIGHT_BUFFER],
                   d[ACCEL_D_ACT_BUFFER], d[ACCEL_D_ACC_BUFFER], d[ACCEL_D_DMA]};
  memset(a, 0, sizeof *a);
  a->C = d[ACCEL_D_C], a->H = d[ACCEL_D_H], a->W = d[ACCEL_D_W], a->in_zp = d[ACCEL_D_IN_ZP];
  a->O = d[ACCEL_D_O], a->KH = d[ACCEL_D_KH], a->KW = d[ACCEL_D_KW];
  a->groups = d[ACCEL_D_GROUPS];
  a->stride_h = d[ACCEL_D_STRIDE_H], a->stride_w = d[ACCEL_D_STRIDE_W];
  a->pad_top = d[ACCEL_D_PAD_TOP], a->pad_left = d[ACCEL_D_PAD_LEFT];
  a->pad_bottom = d[ACCEL_D_PAD_BOTTOM], a->pad_right = d[ACCEL_D_PAD_RIGHT];
  a->dil_h = d[ACCEL_D_DIL_H], a->dil_w = d[ACCEL_D_DIL_W];
  a->kind = d[ACCEL_D_KIND], a->per_channel = d[ACCEL_D_PER_CHANNEL];
  a->out_zp = d[ACCEL_D_OUT_ZP], a->qmin = d[ACCEL_D_QMIN], a->qmax = d[ACCEL_D_QMAX];
  a->OH = d[ACCEL_D_OH], a->OW = d[ACCEL_D_OW];
  a->w_bits = d[ACCEL_D_W_BITS], a->a_bits = d[ACCEL_D_A_BITS], a->y_bits = d[ACCEL_D_Y_BITS];
  if (a->O < 1) return fail("O=%d: must be >= 1", a->O);
  const int32_t n = a->per_channel ? a->O : 1;
  int32_t* mem = malloc((size_t)n * (2 * sizeof(int32_t) + sizeof(float)));
  if (!mem) return fail("out of memory for %d requant parameter sets", n);
  int32_t* mult = mem;
  int32_t* shift = mem + n;
  float* scale = (float*)(mem + 2 * n);
  for (int32_t i = 0; i < n; ++i) {
    mult[i] = rq[2 * i];
    shift[i] = rq[2 * i + 1];
    memcpy(&scale[i], &rq[2 * i], sizeof scale[i]); /* fp32: the register holds the bits */
  }
  a->mult = mult, a->shift = shift, a->scale = scale;
  return 0;
}

int accel_conv2d_check(const int32_t* desc, const int32_t* rq) {
  accel_hw hw;
  accel_conv_args a;
  if (unpack(desc, rq, &hw, &a)) return 1;
  int status = check_layer(&hw, &a);
  if (!status && (desc[ACCEL_D_COUNTER_SLOT] < 0 || desc[ACCEL_D_COUNTER_SLOT] >= MAX_SLOTS))
    status = fail("counter_slot=%d: use [0, %d)", desc[ACCEL_D_COUNTER_SLOT], MAX_SLOTS);
  free((void*)a.mult);
  return status;
}

int accel_conv2d_tile(const int32_t* desc, const int8_t* x, const int8_t* w, const int32_t* bias,
                      const int32_t* rq, int8_t* y, int32_t o0) {
  accel_hw hw;
  accel_conv_args a;
  if (unpack(desc, rq, &hw, &a)) return 1;
  a.x = x, a.w = w, a.bias = bias, a.y = y;
  /* A model loaded in a new process finds an empty bank: its slots are created on first use. */
  const int32_t slot = desc[ACCEL_D_COUNTER_SLOT];
  int status = slot < 0 ? fail("counter_slot=%d: use >= 0", slot) : grow_bank((int64_t)slot + 1);
  accel_counters* cnt = status ? NULL : slot_of(slot);
  status = status || check_conv(&hw, &a);
  if (!status && (o0 < 0 || o0 >= a.O || o0 % hw.t_oc))
    status = fail("o0=%d: use a multiple of t_oc=%d in [0, O=%d)", o0, hw.t_oc, a.O);
  if (!status) status = conv_tile(&hw, &a, o0, cnt);
  free((void*)a.mult);
  return status;
}

/* ---- LBFP mode: a line-by-line mirror of tvmq/numerics/lbfp.py ---------------------------- */

enum { LBFP_EXP_MIN = -126, LBFP_EXP_MAX = 127 }; /* lbfp.EXPONENT_RANGE: one byte */

/* An unpacked LBFP descriptor. g carries the conv geometry only (C .. dil_w, O, KH, KW, groups,
 * OH, OW), so the INT8 geometry checker and cycle model apply unchanged. */
typedef struct {
  accel_hw hw;
  accel_conv_args g;
  int32_t bits, frac_bits, lut_bits, w_block, slot;
} lbfp_layer;

/* The arrays of one accel_lbfp_conv2d_tile call (see accel.h). */
typedef struct {
  const uint8_t *x, *w;
  const int32_t *x_exp, *w_exp, *e_ref, *out_exp;
  const int64_t* bias;
  const double* clip;
  const int64_t* lut;
  const double* thresholds;
  uint8_t* y;
} lbfp_data;

/* The constants of the code adder: c_max (the zero code), the sign bit's position, frac_bits
 * and its mask, and the product table. */
typedef struct {
  int32_t cmax, top, f, mask;
  const int64_t* lut;
} lbfp_pe;

int accel_lbfp_desc_len(void) { return ACCEL_L_LEN; }

static int lbfp_unpack(const int32_t* d, lbfp_layer* L) {
  if (!d) return fail("desc is NULL");
  L->hw = (accel_hw){d[ACCEL_L_T_OC], d[ACCEL_L_T_IC], d[ACCEL_L_WEIGHT_BUFFER],
                     d[ACCEL_L_ACT_BUFFER], d[ACCEL_L_ACC_BUFFER], d[ACCEL_L_DMA]};
  accel_conv_args* g = &L->g;
  memset(g, 0, sizeof *g);
  g->C = d[ACCEL_L_C], g->H = d[ACCEL_L_H], g->W = d[ACCEL_L_W], g->O = d[ACCEL_L_O];
  g->KH = d[ACCEL_L_KH], g->KW = d[ACCEL_L_KW], g->groups = d[ACCEL_L_GROUPS];
  g->stride_h = d[ACCEL_L_STRIDE_H], g->stride_w = d[ACCEL_L_STRIDE_W];
  g->pad_top = d[ACCEL_L_PAD_TOP], g->pad_left = d[ACCEL_L_PAD_LEFT];
  g->pad_bottom = d[ACCEL_L_PAD_BOTTOM], g->pad_right = d[ACCEL_L_PAD_RIGHT];
  g->dil_h = d[ACCEL_L_DIL_H], g->dil_w = d[ACCEL_L_DIL_W];
  g->OH = d[ACCEL_L_OH], g->OW = d[ACCEL_L_OW];
  L->bits = d[ACCEL_L_BITS], L->frac_bits = d[ACCEL_L_FRAC_BITS];
  L->lut_bits = d[ACCEL_L_LUT_BITS], L->w_block = d[ACCEL_L_W_BLOCK];
  L->slot = d[ACCEL_L_COUNTER_SLOT];
  return 0;
}

/* The format fields (what lbfp.LBFPFormat checks) and the weight block size. */
static int lbfp_check_format(const lbfp_layer* L) {
  if (L->bits < 2 || L->bits > 8)
    return fail("bits=%d: use [2, 8] (sign + code in one byte)", L->bits);
  const int32_t fmax = L->bits - 2 < 4 ? L->bits - 2 : 4;
  if (L->frac_bits < 0 || L->frac_bits > fmax)
    return fail("frac_bits=%d: use [0, min(4, bits - 2)] = [0, %d]", L->frac_bits, fmax);
  if (L->lut_bits < 1 || L->lut_bits > 30) return fail("lut_bits=%d: use [1, 30]", L->lut_bits);
  if (L->w_block < 1)
    return fail("w_block=%d: use >= 1 (weight block size along input channels)", L->w_block);
  return 0;
}

/* Everything but the data: can this hardware run this LBFP layer? */
static int lbfp_check_layer(const lbfp_layer* L) {
  const accel_conv_args* a = &L->g;
  if (check_hw(&L->hw) || check_geometry(a) || lbfp_check_format(L)) return 1;
  if (check_acc_buffer(&L->hw, 8, "int64")) return 1;
  const int64_t tile_o = L->hw.t_oc < a->O ? L->hw.t_oc : a->O, cg = a->C / a->groups;
  const int64_t taps = (int64_t)a->KH * a->KW, blocks = ceil_div(cg, L->w_block);
  const int64_t wbytes = tile_o * cg * taps + tile_o * blocks * taps;
  if (wbytes > L->hw.weight_buffer_bytes)
    return fail("weight_buffer_bytes=%d too small: a tile of %lld output channels needs %lld "
                "bytes (%lld x %lld x %d x %d code words + %lld x %lld x %d x %d exponent "
                "bytes, w_block=%d)", L->hw.weight_buffer_bytes, (long long)tile_o,
                (long long)wbytes, (long long)tile_o, (long long)cg, a->KH, a->KW,
                (long long)tile_o, (long long)blocks, a->KH, a->KW, L->w_block);
  if (L->slot < 0 || L->slot >= MAX_SLOTS)
    return fail("counter_slot=%d: use [0, %d)", L->slot, MAX_SLOTS);
  return 0;
}

int accel_lbfp_conv2d_check(const int32_t* desc) {
  lbfp_layer L;
  return lbfp_unpack(desc, &L) || lbfp_check_layer(&L);
}

/* Exponent `e` of array `what` at index i lies in lbfp.EXPONENT_RANGE. */
static int check_exponent(const char* what, int64_t i, int32_t e) {
  if (e < LBFP_EXP_MIN || e > LBFP_EXP_MAX)
    return fail("%s[%lld]=%d: use [%d, %d] (lbfp.EXPONENT_RANGE)", what, (long long)i, e,
                LBFP_EXP_MIN, LBFP_EXP_MAX);
  return 0;
}

/* The tables: clip bounds not NaN with lo < +inf and hi > -inf (a finite clipped value), LUT
 * entries in [0, 2^lut_bits], thresholds finite, positive and decreasing. */
static int lbfp_check_tables(const lbfp_layer* L, const lbfp_data* D) {
  const double lo = D->clip[0], hi = D->clip[1];
  if (isnan(lo) || isnan(hi) || lo == INFINITY || hi == -INFINITY)
    return fail("clip={%g, %g}: use lo < inf and hi > -inf, not NaN", lo, hi);
  for (int32_t r = 0; r < (1 << L->frac_bits); ++r)
    if (D->lut[r] < 0 || D->lut[r] > (INT64_C(1) << L->lut_bits))
      return fail("lut[%d]=%lld: use [0, 2^lut_bits = %lld] (LBFPFormat.lut)", r,
                  (long long)D->lut[r], (long long)(INT64_C(1) << L->lut_bits));
  const int32_t cmax = (1 << (L->bits - 1)) - 1;
  for (int32_t k = 0; k < cmax; ++k) {
    const double t = D->thresholds[k];
    if (!(isfinite(t) && t > 0.0 && (k == 0 || t < D->thresholds[k - 1])))
      return fail("thresholds[%d]=%g: use finite positive decreasing values "
                  "(LBFPFormat.thresholds)", k, t);
  }
  return 0;
}

/* The tile's exponents: all in range, and e_ref[o] >= x_exp[c] + w_exp[o, c, kh, kw] over
 * lane o's reduction (the product shifts are >= 0). Weight code words < 2^bits. */
static int lbfp_check_tile_data(const lbfp_layer* L, const lbfp_data* D, int32_t o0,
                                int32_t tile_o) {
  const accel_conv_args* a = &L->g;
  const int32_t cg = a->C / a->groups, og = a->O / a->groups;
  const int64_t taps = (int64_t)a->KH * a->KW, ksize = cg * taps;
  for (int32_t o = o0; o < o0 + tile_o; ++o) {
    if (check_exponent("out_exp", o, D->out_exp[o])) return 1;
    for (int64_t k = 0; k < ksize; ++k) {
      const int64_t i = (int64_t)o * ksize + k, c = (int64_t)o / og * cg + k / taps;
      if (D->w[i] >> L->bits)
        return fail("w[%lld]=%d: a %d-bit code word must be < %d", (long long)i, D->w[i],
                    L->bits, 1 << L->bits);
      if (check_exponent("w_exp", i, D->w_exp[i]) || check_exponent("x_exp", c, D->x_exp[c]))
        return 1;
      if ((int64_t)D->e_ref[o] < (int64_t)D->x_exp[c] + D->w_exp[i])
        return fail("e_ref[%d]=%d < x_exp[%lld] + w_exp[%lld] = %lld: use lbfp.conv_e_ref (the "
                    "maximum over the reduction)", o, D->e_ref[o], (long long)c, (long long)i,
                    (long long)D->x_exp[c] + D->w_exp[i]);
    }
  }
  return 0;
}

/* Input channels [ch_lo, ch_hi) into xp, padded with the zero code c_max; code words must be
 * < 2^bits. */
static int lbfp_pad_input(const lbfp_layer* L, const uint8_t* x, int64_t ch_lo, int64_t ch_hi,
                          uint8_t* xp) {
  const accel_conv_args* a = &L->g;
  const int64_t hp = (int64_t)a->H + a->pad_top + a->pad_bottom;
  const int64_t wp = (int64_t)a->W + a->pad_left + a->pad_right;
  memset(xp, (1 << (L->bits - 1)) - 1, (size_t)((ch_hi - ch_lo) * hp * wp));
  for (int64_t c = ch_lo; c < ch_hi; ++c)
    for (int64_t i = 0; i < a->H; ++i) {
      const uint8_t* src = x + (c * a->H + i) * a->W;
      uint8_t* dst = xp + ((c - ch_lo) * hp + i + a->pad_top) * wp + a->pad_left;
      for (int64_t j = 0; j < a->W; ++j) {
        if (src[j] >> L->bits)
          return fail("x[%lld]=%d: a %d-bit code word must be < %d",
                      (long long)((c * a->H + i) * a->W + j), src[j], L->bits, 1 << L->bits);
        dst[j] = src[j];
      }
    }
  return 0;
}

/* lbfp.product_terms of one pair of code words: 0 if either code is c_max; else with
 * s = ca + cb, q = s >> f, r = s & (2^f - 1), total = q + shift:
 * sign * (total >= 63 ? 0 : LUT[r] >> total), negative if the signs differ. */
static int64_t lbfp_term(const lbfp_pe* pe, int32_t xw, int32_t ww, int64_t shift) {
  const int32_t ca = xw & pe->cmax, cb = ww & pe->cmax;
  if (ca == pe->cmax || cb == pe->cmax) return 0;
  const int32_t s = ca + cb;
  const int64_t total = (s >> pe->f) + shift;
  const int64_t mag = total >= 63 ? 0 : pe->lut[s & pe->mask] >> total;
  return ((xw ^ ww) >> pe->top) ? -mag : mag;
}

/* lbfp.acc_to_lbfp of one accumulator (|acc| < 2^53): v = ldexp(acc, e_ref - lut_bits),
 * v = min(max(v, lo), hi), m = ldexp(|v|, -out_exp), c = #{k < c_max : m < T[k]} (T decreasing:
 * the first k with m >= T[k]), word = (v < 0 && c < c_max) << (bits - 1) | c. */
static uint8_t lbfp_encode(const lbfp_layer* L, const lbfp_data* D, int64_t acc, int32_t o) {
  const int32_t cmax = (1 << (L->bits - 1)) - 1;
  double v = ldexp((double)acc, D->e_ref[o] - L->lut_bits);
  v = fmin(fmax(v, D->clip[0]), D->clip[1]);
  const double m = ldexp(fabs(v), -D->out_exp[o]);
  int32_t c = 0;
  while (c < cmax && m < D->thresholds[c]) ++c;
  const int32_t sign = v < 0.0 && c < cmax;
  return (uint8_t)(sign << (L->bits - 1) | c);
}

/* One output-channel tile [o0, o0 + tile_o) of a checked LBFP layer: per output position the
 * t_oc lanes' int64 dot products (+ bias), then the tile's converters; then its counters. */
static int lbfp_tile(const lbfp_layer* L, const lbfp_data* D, int32_t o0, accel_counters* cnt) {
  const accel_conv_args* a = &L->g;
  const int32_t KH = a->KH, KW = a->KW, OH = a->OH, OW = a->OW;
  const int32_t cg = a->C / a->groups, og = a->O / a->groups;
  const int32_t tile_o = a->O - o0 < L->hw.t_oc ? a->O - o0 : L->hw.t_oc;
  const int64_t ch_lo = (int64_t)o0 / og * cg, ch_hi = ((int64_t)(o0 + tile_o - 1) / og + 1) * cg;
  const int64_t hp = (int64_t)a->H + a->pad_top + a->pad_bottom;
  const int64_t wp = (int64_t)a->W + a->pad_left + a->pad_right;
  const int64_t plane = hp * wp, taps = (int64_t)KH * KW, ksize = cg * taps;
  const lbfp_pe pe = {(1 << (L->bits - 1)) - 1, L->bits - 1, L->frac_bits,
                      (1 << L->frac_bits) - 1, D->lut};
  if (lbfp_check_tables(L, D) || lbfp_check_tile_data(L, D, o0, tile_o)) return 1;
  uint8_t* xp = malloc((size_t)((ch_hi - ch_lo) * plane));
  int64_t* shift = malloc((size_t)(tile_o * ksize) * sizeof *shift);
  int64_t* acc = malloc((size_t)tile_o * sizeof *acc);
  int status = !xp || !shift || !acc
                   ? fail("out of memory for the padded input (%lld bytes)",
                          (long long)((ch_hi - ch_lo) * plane))
                   : lbfp_pad_input(L, D->x, ch_lo, ch_hi, xp);
  for (int32_t l = 0; !status && l < tile_o; ++l) /* e_ref - x_exp - w_exp per weight */
    for (int64_t k = 0; k < ksize; ++k) {
      const int64_t o = o0 + l, i = o * ksize + k;
      shift[l * ksize + k] = (int64_t)D->e_ref[o] - D->x_exp[o / og * cg + k / taps] - D->w_exp[i];
    }
  for (int32_t oy = 0; !status && oy < OH; ++oy)
    for (int32_t ox = 0; !status && ox < OW; ++ox) {
      const int64_t origin = (int64_t)oy * a->stride_h * wp + (int64_t)ox * a->stride_w;
      for (int32_t l = 0; l < tile_o; ++l) { /* the t_oc lanes */
        const int32_t o = o0 + l;
        const uint8_t* xg = xp + (o / og * cg - ch_lo) * plane + origin;
        const uint8_t* wo = D->w + (int64_t)o * ksize;
        const int64_t* sh = shift + l * ksize;
        int64_t s = 0;
        for (int32_t c = 0; c < cg; ++c)
          for (int32_t ky = 0; ky < KH; ++ky) {
            const uint8_t* row = xg + c * plane + (int64_t)ky * a->dil_h * wp;
            const int64_t k = ((int64_t)c * KH + ky) * KW;
            for (int32_t kx = 0; kx < KW; ++kx)
              s += lbfp_term(&pe, row[(int64_t)kx * a->dil_w], wo[k + kx], sh[k + kx]);
          }
        acc[l] = s + (D->bias ? D->bias[o] : 0); /* -fwrapv: wraps like NumPy int64 */
      }
      for (int32_t l = 0; l < tile_o && !status; ++l) { /* the tile's converters */
        const int32_t o = o0 + l;
        if (acc[l] >= (INT64_C(1) << 53) || acc[l] <= -(INT64_C(1) << 53))
          status = fail("acc=%lld at (o=%d, y=%d, x=%d): |acc| >= 2^53 cannot be scaled exactly "
                        "in float64", (long long)acc[l], o, oy, ox);
        else
          D->y[((int64_t)o * OH + oy) * OW + ox] = lbfp_encode(L, D, acc[l], o);
      }
    }
  if (!status) count_tile(&L->hw, a, o0, tile_o, L->w_block, cnt);
  free(xp);
  free(shift);
  free(acc);
  return status;
}

int accel_lbfp_conv2d_tile(const int32_t* desc, const uint8_t* x, const uint8_t* w,
                           const int32_t* x_exp, const int32_t* w_exp, const int32_t* e_ref,
                           const int64_t* bias, const int32_t* out_exp, const double* clip,
                           const int64_t* lut, const double* thresholds, uint8_t* y,
                           int32_t o0) {
  lbfp_layer L;
  if (lbfp_unpack(desc, &L) || lbfp_check_layer(&L)) return 1;
  if (!x || !w || !x_exp || !w_exp || !e_ref || !out_exp || !clip || !lut || !thresholds || !y)
    return fail("x, w, x_exp, w_exp, e_ref, out_exp, clip, lut, thresholds or y is NULL");
  if (o0 < 0 || o0 >= L.g.O || o0 % L.hw.t_oc)
    return fail("o0=%d: use a multiple of t_oc=%d in [0, O=%d)", o0, L.hw.t_oc, L.g.O);
  /* A model loaded in a new process finds an empty bank: its slots are created on first use. */
  if (grow_bank((int64_t)L.slot + 1)) return 1;
  const lbfp_data D = {x, w, x_exp, w_exp, e_ref, out_exp, bias, clip, lut, thresholds, y};
  return lbfp_tile(&L, &D, o0, slot_of(L.slot));
}
