/* Arm NEON dot-product kernels (aarch64; compiled with -march=armv8.2-a+dotprod and only called when
 * HWCAP_ASIMDDP is set). sdot multiplies int8 x int8 into int32 lanes exactly. */
#if defined(__aarch64__)
#include <arm_neon.h>
#include <string.h>

#include "dfk.h"

static inline uint64x2_t dup_word(const uint8_t *p) {
  uint64_t w;
  memcpy(&w, p, 8);
  return vdupq_n_u64(w);
}

/* 16 2-bit fields, slots 16h .. 16h+15 of a word (h = 0, 1) */
static inline uint8x16_t unpack2_half(uint64x2_t w, int h) {
  const int64x2_t sh = h ? vcombine_s64(vcreate_s64((uint64_t)-4), vcreate_s64((uint64_t)-6))
                         : vcombine_s64(vcreate_s64(0), vcreate_s64((uint64_t)-2));
  return vandq_u8(vreinterpretq_u8_u64(vshlq_u64(w, sh)), vdupq_n_u8(3));
}

static void s24_neon(int64_t M, int64_t N, int64_t Kp, const int8_t *xq, const int8_t *values,
                     const uint8_t *index, int32_t *acc, int8_t *scratch) {
  (void)scratch;
  const int64_t nblk = Kp / 64;
  static const uint8_t base_lo[16] = {0, 0, 4, 4, 8, 8, 12, 12, 16, 16, 20, 20, 24, 24, 28, 28};
  const uint8x16_t b0 = vld1q_u8(base_lo), b1 = vaddq_u8(b0, vdupq_n_u8(32));
  for (int64_t m = 0; m < M; m++) {
    const int8_t *x = xq + m * Kp;
    for (int64_t n = 0; n < N; n++) {
      const int8_t *v = values + n * (Kp / 2);
      const uint8_t *ix = index + n * (Kp / 8);
      int32x4_t s = vdupq_n_s32(0);
      for (int64_t b = 0; b < nblk; b++) {
        int8x16x4_t t = vld1q_s8_x4(x + b * 64);
        uint64x2_t w = dup_word(ix + b * 8);
        int8x16_t g0 = vqtbl4q_s8(t, vorrq_u8(unpack2_half(w, 0), b0));
        int8x16_t g1 = vqtbl4q_s8(t, vorrq_u8(unpack2_half(w, 1), b1));
        s = vdotq_s32(s, vld1q_s8(v + b * 32), g0);
        s = vdotq_s32(s, vld1q_s8(v + b * 32 + 16), g1);
      }
      acc[m * N + n] = vaddvq_s32(s);
    }
  }
}

/* codes of 16 weights: slots 16*part .. of unit u (32 k) */
static inline int8x16_t codes16(const uint8_t *row, int bits, int64_t u, int part) {
  if (bits == 2) return vreinterpretq_s8_u8(unpack2_half(dup_word(row + u * 8), part));
  const uint8_t *c = row + (u >> 1) * 24;
  uint8x16_t lo = unpack2_half(dup_word(c + (u & 1) * 8), part);
  int64_t j0 = (int64_t)((u & 1) * 4 + part * 2);
  const int64x2_t sh = vcombine_s64(vcreate_s64((uint64_t)-j0), vcreate_s64((uint64_t)-(j0 + 1)));
  uint8x16_t hi = vandq_u8(vreinterpretq_u8_u64(vshlq_u64(dup_word(c + 16), sh)), vdupq_n_u8(1));
  return vreinterpretq_s8_u8(vorrq_u8(lo, vshlq_n_u8(hi, 2)));
}

static void lowbit_neon(int bits, int64_t M, int64_t N, int64_t Kp, int64_t G, const int8_t *xq,
                        const int32_t *xsum, const float *xs, const uint8_t *packed, const float *scales,
                        const uint8_t *zeros, float *y) {
  const int64_t ng = Kp / G, row_bytes = Kp * bits / 8, upg = G / 32;
  const int32_t zdef = 1 << (bits - 1);
  int8x16_t codes[4][16]; /* [row][half-unit of the group] */
  int64_t n0 = 0;
  for (; n0 + 4 <= N; n0 += 4) {
    for (int64_t m = 0; m < M; m++) vst1q_f32(y + m * N + n0, vdupq_n_f32(0.0f));
    for (int64_t g = 0; g < ng; g++) {
      int32_t zv[4];
      float sv[4];
      for (int r = 0; r < 4; r++) {
        const uint8_t *row = packed + (n0 + r) * row_bytes;
        for (int64_t u = 0; u < upg; u++) {
          codes[r][2 * u] = codes16(row, bits, g * upg + u, 0);
          codes[r][2 * u + 1] = codes16(row, bits, g * upg + u, 1);
        }
        zv[r] = zeros ? (int32_t)zeros[(n0 + r) * ng + g] : zdef;
        sv[r] = scales[(n0 + r) * ng + g];
      }
      const int32x4_t z = vld1q_s32(zv);
      const float32x4_t s = vld1q_f32(sv);
      for (int64_t m = 0; m < M; m++) {
        const int8_t *x = xq + m * Kp + g * G;
        int32x4_t d[4];
        for (int r = 0; r < 4; r++) {
          int32x4_t a = vdupq_n_s32(0);
          for (int64_t h = 0; h < 2 * upg; h++) a = vdotq_s32(a, codes[r][h], vld1q_s8(x + 16 * h));
          d[r] = a;
        }
        int32x4_t dot = vpaddq_s32(vpaddq_s32(d[0], d[1]), vpaddq_s32(d[2], d[3]));
        dot = vsubq_s32(dot, vmulq_n_s32(z, xsum[m * ng + g]));
        float32x4_t sc = vmulq_n_f32(s, xs[m * ng + g]);
        float32x4_t acc = vld1q_f32(y + m * N + n0);
        acc = vaddq_f32(acc, vmulq_f32(vcvtq_f32_s32(dot), sc));
        vst1q_f32(y + m * N + n0, acc);
      }
    }
  }
  for (int64_t n = n0; n < N; n++) {
    const uint8_t *row = packed + n * row_bytes;
    for (int64_t m = 0; m < M; m++) {
      float acc = 0.0f;
      for (int64_t g = 0; g < ng; g++) {
        const int8_t *x = xq + m * Kp + g * G;
        int32x4_t a = vdupq_n_s32(0);
        for (int64_t h = 0; h < 2 * upg; h++)
          a = vdotq_s32(a, codes16(row, bits, g * upg + h / 2, (int)(h & 1)), vld1q_s8(x + 16 * h));
        int32_t z = zeros ? (int32_t)zeros[n * ng + g] : zdef;
        int32_t dd = vaddvq_s32(a) - z * xsum[m * ng + g];
        acc = acc + (float)dd * (scales[n * ng + g] * xs[m * ng + g]);
      }
      y[m * N + n] = acc;
    }
  }
}

const dfk_isa dfk_isa_neon_dot = {"neon_dot", s24_neon, lowbit_neon};
#else
typedef int dfk_no_neon_here; /* keeps the translation unit non-empty off aarch64 */
#endif
