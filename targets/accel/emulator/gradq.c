/* gradq.c: the accelerator's gradient quantization unit, bit-exact with
 * tvmq/numerics/gradq.py (the golden model; see its module docstring for the formulas).
 *
 * Built into libaccel.so with accel.c, same flags: -ffp-contract=off is what keeps the float64
 * statistics (|mean| + k*std) and the float32 rounding free of fused multiply-adds, so every
 * operation is the single IEEE operation NumPy does.
 *
 * Per channel (outer = 1, channels = 1 per tensor): one pass for max|g| and sum(g) (float64,
 * sequential in memory order: outer index, then inner), one for sum((g - mean)^2), then the
 * clip value and step; finally every element is divided by its channel's step, clamped to
 * +-(qmax + 1), rounded and saturated to [-qmax, qmax]. Stochastic rounding draws
 * u = uniform(seed, offset + i) for the element at flat index i: a counter-based hash, so the
 * draws do not depend on the order elements are processed in.
 */
#include "accel.h"

#include <float.h>
#include <math.h>

#if !defined(FLT_EVAL_METHOD) || FLT_EVAL_METHOD != 0
#error "gradq.c needs FLT_EVAL_METHOD == 0 (SSE float math), for bit-exact rounding"
#endif

/* Mixed into the seed before hashing, so seed 0 does not give key 0 (lowbias32(0) == 0). */
#define SEED_MIX 0x9E3779B9u

/* lowbias32 (Chris Wellons' 32-bit integer hash); uint32 multiplies wrap. tvmq _lowbias32. */
static uint32_t lowbias32(uint32_t x) {
  x ^= x >> 16;
  x *= UINT32_C(0x7feb352d);
  x ^= x >> 15;
  x *= UINT32_C(0x846ca68b);
  x ^= x >> 16;
  return x;
}

/* tvmq uniform: (lowbias32(counter ^ key) >> 8) * 2^-24, exact in float32, in [0, 1). */
static float uniform_at(uint32_t key, uint32_t counter) {
  return (float)(lowbias32(counter ^ key) >> 8) * 0x1p-24f;
}

int accel_uniform(uint32_t seed, uint32_t offset, int64_t n, float* u) {
  if (n < 0) return accel_fail("n=%lld: use n >= 0", (long long)n);
  if (n > 0 && !u) return accel_fail("u is NULL");
  uint32_t key = lowbias32(seed ^ SEED_MIX);
  for (int64_t i = 0; i < n; ++i) u[i] = uniform_at(key, offset + (uint32_t)i);
  return 0;
}

/* The elements of channel ch in memory order: g[(o * channels + ch) * inner + j]. */
#define FOR_CHANNEL(o, j) \
  for (int64_t o = 0; o < outer; ++o) \
    for (int64_t j = 0; j < inner; ++j)

/* tvmq _clip_rows for one channel: float32 clip value c (see clip_value). Returns nonzero if
 * clip 'none' would round max|g| past 2^127. */
static int clip_channel(const float* g, int64_t outer, int64_t channels, int64_t inner,
                        int64_t ch, int clip, double k, float* c) {
  float top = 0.0f;
  double s1 = 0.0;
  FOR_CHANNEL(o, j) {
    float v = g[(o * channels + ch) * inner + j];
    float a = fabsf(v);
    if (a > top) top = a;
    s1 += (double)v;
  }
  if (clip == ACCEL_GRADQ_CLIP_MAX) {
    *c = top;
    return 0;
  }
  if (clip == ACCEL_GRADQ_CLIP_NONE) {
    int e;
    float mant = frexpf(top, &e);
    if (top == 0.0f || mant == 0.5f) {
      *c = top;
      return 0;
    }
    if (e > 127)
      return accel_fail("clip 'none' rounds max|g|=%g of channel %lld up to 2**%d, beyond "
                        "float32; use clip 'max' or 'zscore'", (double)top, (long long)ch, e);
    *c = ldexpf(1.0f, e);
    return 0;
  }
  double n = (double)(outer * inner);
  double mean = s1 / n;
  double s2 = 0.0;
  FOR_CHANNEL(o, j) {
    double d = (double)g[(o * channels + ch) * inner + j] - mean;
    s2 += d * d;
  }
  double c64 = fabs(mean) + k * sqrt(s2 / n);
  if (c64 > (double)top) c64 = (double)top;
  *c = (float)c64;
  return 0;
}

/* tvmq step_size: float32 c / qmax, 1.0 if that is 0. */
static float step_of(float c, int32_t qmax) {
  float step = c / (float)qmax;
  return step == 0.0f ? 1.0f : step;
}

static inline float clampf(float x, float limit) {
  return x < -limit ? -limit : x > limit ? limit : x;
}

/* 1.5 * 2^23: (x + R) - R rounds a float32 |x| <= 2^22 to the nearest integer, ties to even,
 * exactly as nearbyintf in the default rounding mode (needs -ffp-contract=off, no fast-math). */
#define ROUND_MAGIC 12582912.0f

/* tvmq _round and the saturation of quantize_gradient on one row of n elements sharing `step`,
 * `offset` being the stochastic-rounding counter of its first element. x = g / step is clamped
 * to +-(qmax+1) first, so the int32 conversions below (which truncate toward zero) are exact.
 * One loop per rounding mode, so each stays a simple loop. */
static void quantize_row(const float* g, int64_t n, float step, int32_t qmax, int rounding,
                         uint32_t key, uint32_t offset, int16_t* codes) {
  const float limit = (float)(qmax + 1), lim = (float)qmax;
#define CLAMPED(j) clampf(g[j] / step, limit)
#define SATURATE(r) (int16_t)((r) < -lim ? -lim : (r) > lim ? lim : (r))
  switch (rounding) {
    case ACCEL_GRADQ_NEAREST:
      for (int64_t j = 0; j < n; ++j) {
        float r = (CLAMPED(j) + ROUND_MAGIC) - ROUND_MAGIC;
        codes[j] = SATURATE(r);
      }
      break;
    case ACCEL_GRADQ_RTZ:
      for (int64_t j = 0; j < n; ++j) {
        float r = (float)(int32_t)CLAMPED(j);
        codes[j] = SATURATE(r);
      }
      break;
    default: /* stochastic: floor(x) + (u < x - floor(x)), in integers: no branches, since
              * the outcomes are random and a mispredicted branch per element triples the time */
      for (int64_t j = 0; j < n; ++j) {
        float x = CLAMPED(j);
        int32_t t = (int32_t)x;
        int32_t fl = t - (int32_t)(x < (float)t);
        int32_t r = fl + (int32_t)(uniform_at(key, offset + (uint32_t)j) < x - (float)fl);
        codes[j] = (int16_t)(r < -qmax ? -qmax : r > qmax ? qmax : r);
      }
  }
#undef CLAMPED
#undef SATURATE
}

static int check_gradq(const float* g, int64_t outer, int64_t channels, int64_t inner, int bits,
                       int rounding, int clip, double k, const int16_t* codes, const float* step) {
  if (outer < 1 || channels < 1 || inner < 1)
    return accel_fail("outer=%lld, channels=%lld, inner=%lld: use values >= 1", (long long)outer,
                      (long long)channels, (long long)inner);
  if (outer > INT64_MAX / channels || outer * channels > INT64_MAX / inner)
    return accel_fail("outer*channels*inner overflows int64");
  if (!g || !codes || !step) return accel_fail("g, codes or step is NULL");
  if (bits < 2 || bits > 16) return accel_fail("bits=%d: use [2, 16]", bits);
  if (rounding < 0 || rounding > 2)
    return accel_fail("rounding=%d: use 0 nearest, 1 stochastic, 2 rtz", rounding);
  if (clip < 0 || clip > 2) return accel_fail("clip=%d: use 0 none, 1 max, 2 zscore", clip);
  if (!(isfinite(k) && k > 0.0)) return accel_fail("k=%g: use a finite number > 0", k);
  int64_t n = outer * channels * inner;
  for (int64_t i = 0; i < n; ++i)
    if (!isfinite(g[i]))
      return accel_fail("g[%lld]=%g: use finite float32 values", (long long)i, (double)g[i]);
  return 0;
}

int accel_gradq(const float* g, int64_t outer, int64_t channels, int64_t inner, int bits,
                int rounding, int clip, double k, uint32_t seed, uint32_t offset,
                int16_t* codes, float* step) {
  if (check_gradq(g, outer, channels, inner, bits, rounding, clip, k, codes, step)) return 1;
  int32_t qmax = (INT32_C(1) << (bits - 1)) - 1;
  for (int64_t ch = 0; ch < channels; ++ch) {
    float c = 0.0f;
    if (clip_channel(g, outer, channels, inner, ch, clip, k, &c)) return 1;
    step[ch] = step_of(c, qmax);
  }
  uint32_t key = lowbias32(seed ^ SEED_MIX);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t ch = 0; ch < channels; ++ch) {
      int64_t base = (o * channels + ch) * inner;
      quantize_row(g + base, inner, step[ch], qmax, rounding, key, offset + (uint32_t)base,
                   codes + base);
    }
  return 0;
}
