/* AVX2 kernels (x86-64; this file is compiled with -mavx2 and only called when the CPU has AVX2).
 *
 * int8 x int8 products use the sign trick: maddubs(|x|, sign(w, x)) == x*w pairwise; with |x|, |w| <= 127
 * a pair sums to at most 32258, so the int16 step never saturates and the int32 result is exact. */
#if defined(__x86_64__)
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "dfk.h"

static inline __m256i bcast_word(const uint8_t *p) {
  int64_t w;
  memcpy(&w, p, 8);
  return _mm256_set1_epi64x(w);
}

/* the 32 2-bit fields of a 64-bit word, one per byte, in slot order (slot q = 8j + t at bits 8t + 2j) */
static inline __m256i unpack2(const uint8_t *p) {
  const __m256i sh = _mm256_setr_epi64x(0, 2, 4, 6);
  return _mm256_and_si256(_mm256_srlv_epi64(bcast_word(p), sh), _mm256_set1_epi8(3));
}

static inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

/* ---- 2:4 sparse int8 ----
 * Per block of 64 k the 32 kept weights need x[4*(q/2) + idx_q]. The activation row is rearranged once
 * per call so that one in-lane byte shuffle per half gathers them: XA = [x0..15 | x32..47],
 * XB = [x16..31 | x48..63]; slots 0-7 / 16-23 come from XA, slots 8-15 / 24-31 from XB. */
static void s24_avx2(int64_t M, int64_t N, int64_t Kp, const int8_t *xq, const int8_t *values,
                     const uint8_t *index, int32_t *acc, int8_t *scratch) {
  const int64_t nblk = Kp / 64;
  for (int64_t m = 0; m < M; m++) {
    const int8_t *x = xq + m * Kp;
    int8_t *a = scratch + m * Kp;
    for (int64_t b = 0; b < nblk; b++) {
      memcpy(a + b * 64 + 0, x + b * 64 + 0, 16);
      memcpy(a + b * 64 + 16, x + b * 64 + 32, 16);
      memcpy(a + b * 64 + 32, x + b * 64 + 16, 16);
      memcpy(a + b * 64 + 48, x + b * 64 + 48, 16);
    }
  }
  const __m256i base = _mm256_setr_epi8(0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12,
                                        12, 0, 0, 4, 4, 8, 8, 12, 12);
  const __m256i ones = _mm256_set1_epi16(1);
  int64_t m0 = 0;
  for (; m0 < M; m0 += 4) {
    const int64_t mb = M - m0 < 4 ? M - m0 : 4;
    const int8_t *a0 = scratch + m0 * Kp;
    for (int64_t n = 0; n < N; n++) {
      const int8_t *v = values + n * (Kp / 2);
      const uint8_t *ix = index + n * (Kp / 8);
      __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
      for (int64_t b = 0; b < nblk; b++) {
        const __m256i ctl = _mm256_or_si256(unpack2(ix + b * 8), base);
        const __m256i w = _mm256_loadu_si256((const __m256i *)(v + b * 32));
#define DFK_S24_ROW(r, s)                                                                                          \
  do {                                                                                                             \
    const int8_t *xa = a0 + (r) * Kp + b * 64;                                                                     \
    __m256i gx = _mm256_blend_epi32(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)xa), ctl),            \
                                    _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(xa + 32)), ctl), 0xCC); \
    s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_abs_epi8(gx), _mm256_sign_epi8(w, gx)), \
                                              ones));                                                              \
  } while (0)
        DFK_S24_ROW(0, s0);
        if (mb > 1) DFK_S24_ROW(1, s1);
        if (mb > 2) DFK_S24_ROW(2, s2);
        if (mb > 3) DFK_S24_ROW(3, s3);
#undef DFK_S24_ROW
      }
      acc[(m0 + 0) * N + n] = hsum_epi32(s0);
      if (mb > 1) acc[(m0 + 1) * N + n] = hsum_epi32(s1);
      if (mb > 2) acc[(m0 + 2) * N + n] = hsum_epi32(s2);
      if (mb > 3) acc[(m0 + 3) * N + n] = hsum_epi32(s3);
    }
  }
}

/* ---- 2/3-bit group-wise ---- */

/* codes (one per byte) of 32 consecutive weights starting at unit u (32 k) of a row */
static inline __m256i codes32(const uint8_t *row, int bits, int64_t u) {
  if (bits == 2) return unpack2(row + u * 8);
  const uint8_t *c = row + (u >> 1) * 24;
  const __m256i lo = unpack2(c + (u & 1) * 8);
  const __m256i sh = (u & 1) ? _mm256_setr_epi64x(4, 5, 6, 7) : _mm256_setr_epi64x(0, 1, 2, 3);
  const __m256i hi = _mm256_and_si256(_mm256_srlv_epi64(bcast_word(c + 16), sh), _mm256_set1_epi8(1));
  return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 2));
}

/* [hsum(v0), ..., hsum(v7)] */
static inline __m256i hsum8(const __m256i *v) {
  __m256i h01 = _mm256_hadd_epi32(v[0], v[1]), h23 = _mm256_hadd_epi32(v[2], v[3]);
  __m256i h45 = _mm256_hadd_epi32(v[4], v[5]), h67 = _mm256_hadd_epi32(v[6], v[7]);
  __m256i a = _mm256_hadd_epi32(h01, h23), b = _mm256_hadd_epi32(h45, h67);
  return _mm256_add_epi32(_mm256_permute2x128_si256(a, b, 0x20), _mm256_permute2x128_si256(a, b, 0x31));
}

/* 8 rows x all groups for one activation row; `bits` and `upg` are compile-time constants at every call */
static inline __attribute__((always_inline)) void lowbit_row8_m1(
    const int bits, const int upg, int64_t ng, int64_t G, int64_t n0, int64_t row_bytes, const int8_t *xq,
    const int32_t *xsum, const float *xs, const uint8_t *packed, const float *sT, const int32_t *zT, float *y) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc = _mm256_setzero_ps();
  for (int64_t g = 0; g < ng; g++) {
    __m256i xv[8], d[8];
    for (int u = 0; u < upg; u++) xv[u] = _mm256_loadu_si256((const __m256i *)(xq + g * G + 32 * u));
    for (int r = 0; r < 8; r++) {
      const uint8_t *row = packed + (n0 + r) * row_bytes;
      __m256i a16 = _mm256_maddubs_epi16(codes32(row, bits, g * upg), xv[0]);
      for (int u = 1; u < upg; u++)
        a16 = _mm256_add_epi16(a16, _mm256_maddubs_epi16(codes32(row, bits, g * upg + u), xv[u]));
      d[r] = _mm256_madd_epi16(a16, ones);
    }
    const __m256i z = _mm256_loadu_si256((const __m256i *)(zT + g * 8));
    __m256i dot = _mm256_sub_epi32(hsum8(d), _mm256_mullo_epi32(z, _mm256_set1_epi32(xsum[g])));
    __m256 sc = _mm256_mul_ps(_mm256_loadu_ps(sT + g * 8), _mm256_set1_ps(xs[g]));
    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(dot), sc));
  }
  _mm256_storeu_ps(y + n0, acc);
}

/* 8 rows x all groups for M activation rows (codes unpacked once per group, reused by every row) */
static inline __attribute__((always_inline)) void lowbit_row8(
    const int bits, const int upg, int64_t M, int64_t N, int64_t Kp, int64_t ng, int64_t G, int64_t n0,
    int64_t row_bytes, const int8_t *xq, const int32_t *xsum, const float *xs, const uint8_t *packed,
    const float *sT, const int32_t *zT, float *y) {
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i codes[8][8]; /* [row][unit of the group]; G <= 256 */
  for (int64_t m = 0; m < M; m++) _mm256_storeu_ps(y + m * N + n0, _mm256_setzero_ps());
  for (int64_t g = 0; g < ng; g++) {
    for (int r = 0; r < 8; r++) {
      const uint8_t *row = packed + (n0 + r) * row_bytes;
      for (int u = 0; u < upg; u++) codes[r][u] = codes32(row, bits, g * upg + u);
    }
    const __m256 s = _mm256_loadu_ps(sT + g * 8);
    const __m256i z = _mm256_loadu_si256((const __m256i *)(zT + g * 8));
    for (int64_t m = 0; m < M; m++) {
      const int8_t *x = xq + m * Kp + g * G;
      __m256i d[8];
      for (int r = 0; r < 8; r++) {
        __m256i a16 = _mm256_maddubs_epi16(codes[r][0], _mm256_loadu_si256((const __m256i *)x));
        for (int u = 1; u < upg; u++)
          a16 = _mm256_add_epi16(a16, _mm256_maddubs_epi16(codes[r][u],
                                                           _mm256_loadu_si256((const __m256i *)(x + 32 * u))));
        d[r] = _mm256_madd_epi16(a16, ones);
      }
      __m256i dot = _mm256_sub_epi32(hsum8(d), _mm256_mullo_epi32(z, _mm256_set1_epi32(xsum[m * ng + g])));
      __m256 sc = _mm256_mul_ps(s, _mm256_set1_ps(xs[m * ng + g]));
      __m256 acc = _mm256_loadu_ps(y + m * N + n0);
      acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(dot), sc));
      _mm256_storeu_ps(y + m * N + n0, acc);
    }
  }
}

static void lowbit_avx2(int bits, int64_t M, int64_t N, int64_t Kp, int64_t G, const int8_t *xq,
                        const int32_t *xsum, const float *xs, const uint8_t *packed, const float *scales,
                        const uint8_t *zeros, float *y) {
  const int64_t ng = Kp / G, row_bytes = Kp * bits / 8, upg = G / 32;
  const int32_t zdef = 1 << (bits - 1);
  const __m256i ones = _mm256_set1_epi16(1);
  /* scales / zero points of 8 rows, transposed to [group][row] once per chunk (one vector load per group) */
  float *sT = malloc(sizeof(float) * 8 * (size_t)ng);
  int32_t *zT = malloc(sizeof(int32_t) * 8 * (size_t)ng);
  int64_t n0 = 0;
  for (; sT && zT && n0 + 8 <= N; n0 += 8) {
    for (int r = 0; r < 8; r++)
      for (int64_t g = 0; g < ng; g++) {
        sT[g * 8 + r] = scales[(n0 + r) * ng + g];
        zT[g * 8 + r] = zeros ? (int32_t)zeros[(n0 + r) * ng + g] : zdef;
      }
    if (M == 1) { /* batch 1: unpack straight into the dot products, accumulator in a register */
      /* specialized per (bits, units per group) so the unit loops unroll and stay in registers */
#define DFK_LB1(B, U) lowbit_row8_m1(B, U, ng, G, n0, row_bytes, xq, xsum, xs, packed, sT, zT, y)
      switch (bits * 16 + (int)upg) {
      case 2 * 16 + 1: DFK_LB1(2, 1); break;
      case 2 * 16 + 2: DFK_LB1(2, 2); break;
      case 2 * 16 + 4: DFK_LB1(2, 4); break;
      case 2 * 16 + 8: DFK_LB1(2, 8); break;
      case 3 * 16 + 1: DFK_LB1(3, 1); break;
      case 3 * 16 + 2: DFK_LB1(3, 2); break;
      case 3 * 16 + 4: DFK_LB1(3, 4); break;
      default: DFK_LB1(3, 8); break;
      }
#undef DFK_LB1
      continue;
    }
#define DFK_LBM(B, U) lowbit_row8(B, U, M, N, Kp, ng, G, n0, row_bytes, xq, xsum, xs, packed, sT, zT, y)
    switch (bits * 16 + (int)upg) {
    case 2 * 16 + 1: DFK_LBM(2, 1); break;
    case 2 * 16 + 2: DFK_LBM(2, 2); break;
    case 2 * 16 + 4: DFK_LBM(2, 4); break;
    case 2 * 16 + 8: DFK_LBM(2, 8); break;
    case 3 * 16 + 1: DFK_LBM(3, 1); break;
    case 3 * 16 + 2: DFK_LBM(3, 2); break;
    case 3 * 16 + 4: DFK_LBM(3, 4); break;
    default: DFK_LBM(3, 8); break;
    }
#undef DFK_LBM
  }
  free(sT);
  free(zT);
  /* tail rows: one row at a time, same arithmetic and order */
  for (int64_t n = n0; n < N; n++) {
    const uint8_t *row = packed + n * row_bytes;
    for (int64_t m = 0; m < M; m++) {
      float acc = 0.0f;
      for (int64_t g = 0; g < ng; g++) {
        const int8_t *x = xq + m * Kp + g * G;
        __m256i a16 = _mm256_setzero_si256();
        for (int64_t u = 0; u < upg; u++)
          a16 = _mm256_add_epi16(a16, _mm256_maddubs_epi16(codes32(row, bits, g * upg + u),
                                                           _mm256_loadu_si256((const __m256i *)(x + 32 * u))));
        int32_t z = zeros ? (int32_t)zeros[n * ng + g] : zdef;
        int32_t d = hsum_epi32(_mm256_madd_epi16(a16, ones)) - z * xsum[m * ng + g];
        acc = acc + (float)d * (scales[n * ng + g] * xs[m * ng + g]);
      }
      y[m * N + n] = acc;
    }
  }
}

const dfk_isa dfk_isa_avx2 = {"avx2", s24_avx2, lowbit_avx2};
#else
typedef int dfk_no_avx2_here; /* keeps the translation unit non-empty off x86-64 */
#endif
