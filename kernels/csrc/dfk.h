/* devicefit integer kernels: shared definitions.
 *
 * Two ops, one canonical (ISA-neutral) weight layout each; every SIMD path reads the same tensors.
 *
 * Sparse24 (2:4 semi-structured sparse int8 weights, float activations):
 *   x       float [M, K]            (K <= Kp, Kp a multiple of 64; the op pads x with zeros)
 *   values  int8  [N, Kp/2]         the two kept weights of each group of 4 (in k order), |w| <= 127
 *   index   uint8 [N, Kp/8]         2-bit position (0..3) of each kept weight in its group; per block of
 *                                   64 k (32 kept weights = one little-endian 64-bit word), kept weight
 *                                   q = 8j + t (j = 0..3, t = 0..7) sits at bits 8t + 2j
 *   scales  float [N]               per-output-channel weight scale
 *   y[m,n] = (float)acc[m,n] * (sx[m] * scales[n]) (+ bias[n]), acc = sum_k xq[m,k] * w[n,k] in int32,
 *   xq = rint(x * (127 / amax_m)) (symmetric int8 per row), sx[m] = amax_m / 127.
 *
 * LowBit (2- and 3-bit group-wise weights, GPTQ-compatible; float activations):
 *   packed  uint8 [N, Kp*bits/8]    codes q in [0, 2^bits); Kp a multiple of 64 and of the group size G
 *     bits=2: per 32 k, one 64-bit word; k = 8j + t at bits 8t + 2j
 *     bits=3: per 64 k, 24 bytes: two 64-bit words with the low 2 bits (k < 32, k >= 32, laid out as
 *             bits=2) and one word with the high bit of k = 8j + t (j = 0..7) at bit 8t + j
 *   scales  float [N, Kp/G], zeros uint8 [N, Kp/G] (optional; default 2^(bits-1))
 *   w[n,k] = (q - z) * s.  Activations are quantized per group of G (symmetric int8, xs[m,g]);
 *   y[m,n] = sum over g, in order, of (float)(sum_k q*xq - z*sum_k xq) * (s[n,g] * xs[m,g]) (+ bias[n]),
 *   accumulated in float32 starting from 0, one group after the other (every path uses this order).
 */
#ifndef DFK_H
#define DFK_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(__GNUC__)
#define DFK_EXPORT __attribute__((visibility("default")))
#else
#define DFK_EXPORT
#endif

enum { DFK_ISA_SCALAR = 0, DFK_ISA_AVX2 = 1, DFK_ISA_NEON_DOT = 2, DFK_ISA_AVX512VNNI = 3, DFK_ISA_COUNT = 4 };

/* acc[M,N] = xq[M,Kp] . w[N,Kp] (int32) for 2:4 weights; scratch holds M*Kp bytes */
typedef void (*dfk_s24_fn)(int64_t M, int64_t N, int64_t Kp, const int8_t *xq, const int8_t *values,
                           const uint8_t *index, int32_t *acc, int8_t *scratch);
/* y[M,N] = the group sum above, without bias (y is overwritten) */
typedef void (*dfk_lowbit_fn)(int bits, int64_t M, int64_t N, int64_t Kp, int64_t G, const int8_t *xq,
                              const int32_t *xsum, const float *xs, const uint8_t *packed, const float *scales,
                              const uint8_t *zeros, float *y);

typedef struct {
  const char *name;
  dfk_s24_fn s24;
  dfk_lowbit_fn lowbit;
} dfk_isa;

/* per-ISA tables (defined in their own files; NULL members where the build has no such path) */
extern const dfk_isa dfk_isa_scalar;
#if defined(__x86_64__) || defined(_M_X64)
extern const dfk_isa dfk_isa_avx2;
extern const dfk_isa dfk_isa_avx512vnni;
#endif
#if defined(__aarch64__)
extern const dfk_isa dfk_isa_neon_dot;
#endif

/* 2-bit field q of a block's 64-bit index / code word (layout above) */
static inline unsigned dfk_field2(const uint8_t *word, int q) { return (word[q & 7] >> (2 * (q >> 3))) & 3u; }
/* code of weight k (0-based within the row) */
static inline unsigned dfk_code(const uint8_t *row, int bits, int64_t k) {
  if (bits == 2) return dfk_field2(row + (k >> 5) * 8, (int)(k & 31));
  const uint8_t *c = row + (k >> 6) * 24;
  int q = (int)(k & 63);
  unsigned lo = dfk_field2(c + (q >> 5) * 8, q & 31);
  unsigned hi = (c[16 + (q & 7)] >> (q >> 3)) & 1u;
  return lo | (hi << 2);
}

/* symmetric int8 quantization of n floats (padded with zeros to np): returns the scale amax/127 */
static inline float dfk_quantize_block(const float *x, int64_t n, int64_t np, int8_t *q) {
  /* eight running maxima (one maxss chain was the op's bottleneck at small sizes); max is exact and
   * order-free, and `a > m ? a : m` skips NaN in every lane as it did with one */
  float m8[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
  int64_t i0 = 0;
  for (; i0 + 8 <= n; i0 += 8)
    for (int j = 0; j < 8; j++) {
      float a = fabsf(x[i0 + j]);
      m8[j] = a > m8[j] ? a : m8[j];
    }
  for (; i0 < n; i0++) {
    float a = fabsf(x[i0]);
    m8[0] = a > m8[0] ? a : m8[0];
  }
  float amax = 0.0f;
  for (int j = 0; j < 8; j++) amax = m8[j] > amax ? m8[j] : amax;
  float inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  /* round half to even without a libm call: for |v| < 2^22, (v + 1.5*2^23) - 1.5*2^23 rounds v to an integer
   * in the current (default: to-nearest-even) mode, exactly like rintf; |x * inv| <= 127 here */
  const float magic = 12582912.0f;
  for (int64_t i = 0; i < n; i++) {
    float r = (x[i] * inv + magic) - magic;
    r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
    q[i] = (int8_t)r;
  }
  for (int64_t i = n; i < np; i++) q[i] = 0;
  return amax / 127.0f;
}

#if defined(__x86_64__) || defined(_M_X64)
/* dfk_quantize_block compiled with the AVX-512 flags (kern_avx512.c; call only where that ISA runs) */
float dfk_quantize_block_avx512(const float *x, int64_t n, int64_t np, int8_t *q);
#endif

/* public entry points (ctypes, the C test driver and the onnxruntime glue use them) */
DFK_EXPORT const char *dfk_version(void);
/* the ISA an op would use now: DEVICEFIT_KERNELS_ISA (scalar|avx2|avx512vnni|neon_dot|auto) or the best supported;
 * returns NULL (and sets *err) when the requested one is unknown or unsupported here */
DFK_EXPORT const char *dfk_isa_name(void);
DFK_EXPORT int dfk_isa_supported(const char *name);
DFK_EXPORT const char *dfk_isa_list(void); /* comma-separated, in preference order, supported ones */
const dfk_isa *dfk_isa_select(const char *requested, const char **err);

DFK_EXPORT int dfk_sparse24_run(const char *isa, int64_t M, int64_t K, int64_t Kp, int64_t N, const float *x,
                                const int8_t *values, const uint8_t *index, const float *scales,
                                const float *bias, float *y);
DFK_EXPORT int dfk_lowbit_run(const char *isa, int bits, int64_t G, int64_t M, int64_t K, int64_t Kp, int64_t N,
                              const float *x, const uint8_t *packed, const float *scales, const uint8_t *zeros,
                              const float *bias, float *y);
int dfk_sparse24_with(const dfk_isa *isa, int64_t M, int64_t K, int64_t Kp, int64_t N, const float *x,
                      const int8_t *values, const uint8_t *index, const float *scales, const float *bias, float *y);
int dfk_lowbit_with(const dfk_isa *isa, int bits, int64_t G, int64_t M, int64_t K, int64_t Kp, int64_t N,
                    const float *x, const uint8_t *packed, const float *scales, const uint8_t *zeros,
                    const float *bias, float *y);

#endif
