/* AVX-512 VNNI kernels (x86-64; compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vnni and only called when
 * the CPU and the OS support all four).
 *
 * vpdpbusd multiplies unsigned by signed bytes and adds each group of 4 products to an int32 lane, without
 * saturation, so every product is exact:
 * - 2:4 int8 x int8: the activations are offset to unsigned (x + 128, i.e. x ^ 0x80) and 128 * sum(w) is
 *   subtracted at the end (accumulated by a second vpdpbusd of 0x80 bytes with the same weights);
 * - 2/3-bit: the codes are already unsigned (0..7) and the activations signed: one vpdpbusd, as is.
 * Integer results equal the AVX2 / scalar paths bit for bit; the float epilogue is the same operations in the same
 * order (see dfk.h). Batches other than 1 of the 2/3-bit op, and group size 32, use the AVX2 path. */
#if defined(__x86_64__)
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>

#include "dfk.h"

/* 64 2-bit fields of two consecutive 64-bit words, one per byte in slot order (word w, slot q = 8j + t at bits
 * 8t + 2j -> byte 32w + q), not yet masked to 2 bits */
static inline __m512i spread2x2(const uint8_t *p) {
  const __m512i words = _mm512_permutexvar_epi64(_mm512_set_epi64(1, 1, 1, 1, 0, 0, 0, 0),
                                                 _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)p)));
  return _mm512_srlv_epi64(words, _mm512_set_epi64(6, 4, 2, 0, 6, 4, 2, 0));
}

/* (a & b) | c in one instruction */
#define DFK_AND_OR(a, b, c) _mm512_ternarylogic_epi32((a), (b), (c), 0xEA)

/* ---- 2:4 sparse int8 ----
 * The activation row is rearranged once per call (and offset to unsigned) so that an in-lane byte shuffle gathers
 * the activations of 64 kept weights (two blocks of 64 k): per pair of blocks b, b + 1 the row holds
 * XA2 = [XA_b | XA_b+1], XB2 = [XB_b | XB_b+1] with XA = [x0..15 | x32..47], XB = [x16..31 | x48..63] of each
 * block (the AVX2 layout); an odd last block keeps [XA | XB]. Slots 0-7 / 16-23 of a block come from XA, slots
 * 8-15 / 24-31 from XB: dwords 2, 3 of every 128-bit lane. */
static inline int32_t hsum256(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
  return _mm_cvtsi128_si32(s);
}

static inline int64_t load_word(const uint8_t *p) {
  int64_t w;
  memcpy(&w, p, 8);
  return w;
}

/* one output channel n for `mb` (1..4, a compile-time constant at every call) activation rows from a0 */
static inline __attribute__((always_inline)) void s24_row_vnni(const int mb, int64_t N, int64_t Kp, int64_t n,
                                                              const int8_t *a0, const int8_t *v, const uint8_t *ix,
                                                              int32_t *acc) {
  const int64_t nblk = Kp / 64, npair = nblk / 2;
  const __m512i base = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12));
  const __m512i three = _mm512_set1_epi8(3), off = _mm512_set1_epi8((char)0x80);
  /* two accumulator sets (even / odd pairs) halve the vpdpbusd dependency chains */
  __m512i s[2][4], sw[2];
  for (int h = 0; h < 2; h++) {
    sw[h] = _mm512_setzero_si512();
    for (int r = 0; r < mb; r++) s[h][r] = _mm512_setzero_si512();
  }
  for (int64_t p = 0; p < npair; p++) {
    const int h = (int)(p & 1);
    const __m512i ctl = DFK_AND_OR(spread2x2(ix + p * 16), three, base);
    const __m512i w = _mm512_loadu_si512(v + p * 64);
    sw[h] = _mm512_dpbusd_epi32(sw[h], off, w);
    for (int r = 0; r < mb; r++) {
      const int8_t *xa = a0 + r * Kp + p * 128;
      const __m512i g = _mm512_mask_blend_epi32((__mmask16)0xCCCC, _mm512_shuffle_epi8(_mm512_loadu_si512(xa), ctl),
                                                _mm512_shuffle_epi8(_mm512_loadu_si512(xa + 64), ctl));
      s[h][r] = _mm512_dpbusd_epi32(s[h][r], g, w);
    }
  }
  int32_t tot[4], totw = _mm512_reduce_add_epi32(_mm512_add_epi32(sw[0], sw[1]));
  for (int r = 0; r < mb; r++) tot[r] = _mm512_reduce_add_epi32(_mm512_add_epi32(s[0][r], s[1][r]));
  if (nblk % 2) { /* the odd last block, 256 bits wide */
    const int64_t b = nblk - 1;
    const __m256i ctl = _mm256_or_si256(
        _mm256_and_si256(_mm256_srlv_epi64(_mm256_set1_epi64x(load_word(ix + b * 8)), _mm256_setr_epi64x(0, 2, 4, 6)),
                         _mm256_set1_epi8(3)),
        _mm512_castsi512_si256(base));
    const __m256i w = _mm256_loadu_si256((const __m256i *)(v + b * 32));
    totw += hsum256(_mm256_dpbusd_epi32(_mm256_setzero_si256(), _mm256_set1_epi8((char)0x80), w));
    for (int r = 0; r < mb; r++) {
      const int8_t *xa = a0 + r * Kp + npair * 128;
      const __m256i g = _mm256_blend_epi32(_mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)xa), ctl),
                                           _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)(xa + 32)), ctl),
                                           0xCC);
      tot[r] += hsum256(_mm256_dpbusd_epi32(_mm256_setzero_si256(), g, w));
    }
  }
  for (int r = 0; r < mb; r++) acc[r * N + n] = tot[r] - totw;
}

/* [hsum(v0), hsum(v1), hsum(v2), hsum(v3)] of 4 int32x16 vectors */
static inline __m128i hsum4x16(const __m512i *v) {
  __m256i h[4];
  for (int r = 0; r < 4; r++)
    h[r] = _mm256_add_epi32(_mm512_castsi512_si256(v[r]), _mm512_extracti64x4_epi64(v[r], 1));
  const __m256i a = _mm256_hadd_epi32(_mm256_hadd_epi32(h[0], h[1]), _mm256_hadd_epi32(h[2], h[3]));
  return _mm_add_epi32(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
}

/* batch 1: four output channels n0..n0+3 at a time (independent chains; one shared activation load per pair; the
 * offset correction subtracted per lane and the four sums reduced together); Kp a multiple of 128 */
static void s24_rows4_m1(int64_t Kp, int64_t n0, const int8_t *a, const int8_t *values, const uint8_t *index,
                         int32_t *acc) {
  const int64_t npair = Kp / 128;
  const __m512i base = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 4, 4, 8, 8, 12, 12, 0, 0, 4, 4, 8, 8, 12, 12));
  const __m512i three = _mm512_set1_epi8(3), off = _mm512_set1_epi8((char)0x80);
  __m512i s[4], sw[4];
  for (int r = 0; r < 4; r++) s[r] = sw[r] = _mm512_setzero_si512();
  for (int64_t p = 0; p < npair; p++) {
    const __m512i xa = _mm512_loadu_si512(a + p * 128), xb = _mm512_loadu_si512(a + p * 128 + 64);
    for (int r = 0; r < 4; r++) {
      const __m512i ctl = DFK_AND_OR(spread2x2(index + (n0 + r) * (Kp / 8) + p * 16), three, base);
      const __m512i w = _mm512_loadu_si512(values + (n0 + r) * (Kp / 2) + p * 64);
      const __m512i g = _mm512_mask_blend_epi32((__mmask16)0xCCCC, _mm512_shuffle_epi8(xa, ctl),
                                                _mm512_shuffle_epi8(xb, ctl));
      s[r] = _mm512_dpbusd_epi32(s[r], g, w);
      sw[r] = _mm512_dpbusd_epi32(sw[r], off, w);
    }
  }
  for (int r = 0; r < 4; r++) s[r] = _mm512_sub_epi32(s[r], sw[r]);
  _mm_storeu_si128((__m128i *)(acc + n0), hsum4x16(s));
}

static int s24_dense_ok(int64_t M);
static void s24_dense(int64_t M, int64_t N, int64_t Kp, const int8_t *xq, const int8_t *values, const uint8_t *index,
                      int32_t *acc, int8_t *scratch);

static void s24_avx512(int64_t M, int64_t N, int64_t Kp, const int8_t *xq, const int8_t *values,
                       const uint8_t *index, int32_t *acc, int8_t *scratch) {
  if (s24_dense_ok(M)) {
    s24_dense(M, N, Kp, xq, values, index, acc, scratch);
    return;
  }
  const int64_t nblk = Kp / 64, npair = nblk / 2;
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  for (int64_t m = 0; m < M; m++) {
    const int8_t *x = xq + m * Kp;
    int8_t *a = scratch + m * Kp;
    for (int64_t b = 0; b < nblk; b++) {
      int8_t *xa = b < 2 * npair ? a + (b / 2) * 128 + (b % 2) * 32 : a + npair * 128;
      int8_t *xb = b < 2 * npair ? xa + 64 : xa + 32;
      memcpy(xa, x + b * 64 + 0, 16);
      memcpy(xa + 16, x + b * 64 + 32, 16);
      memcpy(xb, x + b * 64 + 16, 16);
      memcpy(xb + 16, x + b * 64 + 48, 16);
    }
    for (int64_t i = 0; i < Kp; i += 64)
      _mm512_storeu_si512(a + i, _mm512_xor_si512(_mm512_loadu_si512(a + i), flip));
  }
  int64_t n_done = 0;
  if (M == 1 && nblk % 2 == 0)
    for (; n_done + 4 <= N; n_done += 4) s24_rows4_m1(Kp, n_done, scratch, values, index, acc);
  for (int64_t m0 = 0; m0 < M; m0 += 4) {
    const int8_t *a0 = scratch + m0 * Kp;
    int32_t *acc0 = acc + m0 * N;
    for (int64_t n = n_done; n < N; n++) {
      const int8_t *v = values + n * (Kp / 2);
      const uint8_t *ix = index + n * (Kp / 8);
      switch (M - m0 < 4 ? M - m0 : 4) {
      case 1: s24_row_vnni(1, N, Kp, n, a0, v, ix, acc0); break;
      case 2: s24_row_vnni(2, N, Kp, n, a0, v, ix, acc0); break;
      case 3: s24_row_vnni(3, N, Kp, n, a0, v, ix, acc0); break;
      default: s24_row_vnni(4, N, Kp, n, a0, v, ix, acc0); break;
      }
    }
  }
}

/* ---- 2/3-bit group-wise, batch 1 ---- */

/* Batch 1 reads the activations of each 64-k chunk in "lane order": position 8i + t (i = 0..7, t = 0..7) holds
 * k = 32 (i % 2) + 8 (i / 2) + t. The codes of two 32-k units then unpack with a broadcast, one shift and one mask
 * (no cross-lane permute): qword i of the broadcast pair (w0, w1) shifted right by 2 (i / 2) holds, in byte t,
 * field (j = i / 2, t) of word i % 2, the code of exactly that k. A group's dot product sums the same products. */
static void to_lane_order(const int8_t *x, int64_t Kp, int8_t *out) {
  for (int64_t c = 0; c < Kp; c += 64)
    for (int i = 0; i < 8; i++) memcpy(out + c + 8 * i, x + c + 32 * (i % 2) + 8 * (i / 2), 8);
}

/* codes (one per byte, lane order) of the 64 weights of units u, u + 1 (u even) of a row */
static inline __m512i codes64(const uint8_t *row, int bits, int64_t u) {
  const __m512i three = _mm512_set1_epi8(3), lo_shift = _mm512_set_epi64(6, 6, 4, 4, 2, 2, 0, 0);
  if (bits == 2)
    return _mm512_and_si512(_mm512_srlv_epi64(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(row + u * 8))),
                                              lo_shift),
                            three);
  const uint8_t *c = row + (u >> 1) * 24; /* one whole 64-k block */
  const __m512i lo = _mm512_srlv_epi64(_mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)c)), lo_shift);
  /* high bit of k = 8j + t at bit 8t + j; qword i holds j = 4 (i % 2) + i / 2 */
  const __m512i hi = _mm512_slli_epi64(
      _mm512_srlv_epi64(_mm512_set1_epi64(load_word(c + 16)), _mm512_set_epi64(7, 3, 6, 2, 5, 1, 4, 0)), 2);
  return DFK_AND_OR(hi, _mm512_set1_epi8(4), _mm512_and_si512(lo, three));
}

/* [hsum(v0), ..., hsum(v7)] of 8 int32x16 vectors: a transposing add tree in zmm registers */
static inline __m256i hsum8x16(const __m512i *v) {
  __m512i t[4], u[2];
  for (int i = 0; i < 4; i++) /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
    t[i] = _mm512_add_epi32(_mm512_unpacklo_epi32(v[2 * i], v[2 * i + 1]),
                            _mm512_unpackhi_epi32(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 2; i++) /* per lane: partial sums of rows 4i..4i+3 */
    u[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * i], t[2 * i + 1]),
                            _mm512_unpackhi_epi64(t[2 * i], t[2 * i + 1]));
  /* lanes: [rows 0-3, rows 0-3, rows 4-7, rows 4-7] */
  const __m512i w = _mm512_add_epi32(_mm512_shuffle_i32x4(u[0], u[1], 0x88), _mm512_shuffle_i32x4(u[0], u[1], 0xDD));
  return _mm512_castsi512_si256(_mm512_add_epi32(_mm512_shuffle_i32x4(w, w, 0x08), _mm512_shuffle_i32x4(w, w, 0x0D)));
}

/* codes64 with one VBMI byte-window select per 64 codes (vpmultishiftqb, port 5) instead of a shift (port 0, which
 * vpdpbusd also needs): `lo` / `hi` hold the bit offsets of each byte's field (see lowbit_avx512) */
static inline __attribute__((always_inline, target("avx512vbmi"))) __m512i codes64_vbmi(
    const uint8_t *row, int bits, int64_t u, __m512i lo_ctl, __m512i hi_ctl) {
  const __m512i three = _mm512_set1_epi8(3);
  if (bits == 2)
    return _mm512_and_si512(
        _mm512_multishift_epi64_epi8(lo_ctl, _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(row + u * 8)))),
        three);
  const uint8_t *c = row + (u >> 1) * 24;
  const __m512i lo = _mm512_multishift_epi64_epi8(lo_ctl, _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)c)));
  const __m512i hi = _mm512_multishift_epi64_epi8(hi_ctl, _mm512_set1_epi64(load_word(c + 16)));
  return DFK_AND_OR(hi, _mm512_set1_epi8(4), _mm512_and_si512(lo, three));
}

/* 8 rows x all groups of one activation row (lane order); `bits` and `upg` (units of 32 k per group, even) are
 * compile-time constants at every expansion; CODES(row, u) gives the codes of units u, u + 1 */
#define DFK_ROW8_M1_BODY(CODES)                                                                                     \
  __m256 acc = _mm256_setzero_ps();                                                                                \
  for (int64_t g = 0; g < ng; g++) {                                                                               \
    __m512i xv[4], d[8];                                                                                           \
    for (int u = 0; u < upg; u += 2) xv[u / 2] = _mm512_loadu_si512(xq + g * G + 32 * u);                          \
    for (int r = 0; r < 8; r++) {                                                                                  \
      const uint8_t *row = packed + (n0 + r) * row_bytes;                                                          \
      __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), CODES(row, g * upg), xv[0]);                         \
      for (int u = 2; u < upg; u += 2) s = _mm512_dpbusd_epi32(s, CODES(row, g * upg + u), xv[u / 2]);            \
      d[r] = s;                                                                                                    \
    }                                                                                                              \
    const __m256i z = _mm256_loadu_si256((const __m256i *)(zT + g * 8));                                           \
    __m256i dot = _mm256_sub_epi32(hsum8x16(d), _mm256_mullo_epi32(z, _mm256_set1_epi32(xsum[g])));               \
    __m256 sc = _mm256_mul_ps(_mm256_loadu_ps(sT + g * 8), _mm256_set1_ps(xs[g]));                                 \
    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_cvtepi32_ps(dot), sc));                                          \
  }                                                                                                                \
  _mm256_storeu_ps(y + n0, acc)

#define DFK_ROW8_ARGS                                                                                               \
  const int bits, const int upg, int64_t ng, int64_t G, int64_t n0, int64_t row_bytes, const int8_t *xq,          \
      const int32_t *xsum, const float *xs, const uint8_t *packed, const float *sT, const int32_t *zT, float *y,   \
      __m512i lo_ctl, __m512i hi_ctl

static inline __attribute__((always_inline)) void row8_m1(DFK_ROW8_ARGS) {
  (void)lo_ctl, (void)hi_ctl;
#define DFK_CODES(row, u) codes64(row, bits, u)
  DFK_ROW8_M1_BODY(DFK_CODES);
#undef DFK_CODES
}

static inline __attribute__((always_inline, target("avx512vbmi"))) void row8_m1_vbmi(DFK_ROW8_ARGS) {
#define DFK_CODES(row, u) codes64_vbmi(row, bits, u, lo_ctl, hi_ctl)
  DFK_ROW8_M1_BODY(DFK_CODES);
#undef DFK_CODES
}

/* every (bits, units per group) the batch-1 loop unrolls for, as one switch */
#define DFK_ROW8_SWITCH(FN, ...)                                                                                    \
  switch (bits * 16 + (int)upg) {                                                                                  \
  case 2 * 16 + 2: FN(2, 2, __VA_ARGS__); break;                                                                   \
  case 2 * 16 + 4: FN(2, 4, __VA_ARGS__); break;                                                                   \
  case 2 * 16 + 8: FN(2, 8, __VA_ARGS__); break;                                                                   \
  case 3 * 16 + 2: FN(3, 2, __VA_ARGS__); break;                                                                   \
  case 3 * 16 + 4: FN(3, 4, __VA_ARGS__); break;                                                                   \
  default: FN(3, 8, __VA_ARGS__); break;                                                                           \
  }

static void row8_blocks(int bits, int64_t upg, int64_t ng, int64_t G, int64_t n0, int64_t row_bytes,
                        const int8_t *xl, const int32_t *xsum, const float *xs, const uint8_t *packed, const float *sT,
                        const int32_t *zT, float *y) {
  DFK_ROW8_SWITCH(row8_m1, ng, G, n0, row_bytes, xl, xsum, xs, packed, sT, zT, y, _mm512_setzero_si512(),
                  _mm512_setzero_si512())
}

static __attribute__((target("avx512vbmi"))) void row8_blocks_vbmi(
    int bits, int64_t upg, int64_t ng, int64_t G, int64_t n0, int64_t row_bytes, const int8_t *xl,
    const int32_t *xsum, const float *xs, const uint8_t *packed, const float *sT, const int32_t *zT, float *y,
    const uint8_t *lo_bytes, const uint8_t *hi_bytes) {
  const __m512i lo_ctl = _mm512_loadu_si512(lo_bytes), hi_ctl = _mm512_loadu_si512(hi_bytes);
  DFK_ROW8_SWITCH(row8_m1_vbmi, ng, G, n0, row_bytes, xl, xsum, xs, packed, sT, zT, y, lo_ctl, hi_ctl)
}

/* VBMI is used where the CPU has it (Ice Lake, Sapphire Rapids, Zen 4; not Cascade Lake), unless
 * DEVICEFIT_KERNELS_NO_VBMI=1 (tests run both variants on one machine) */
static int has_vbmi(void) {
  static volatile int cpu; /* 0 = unknown, 1 = no, 2 = yes; a benign race */
  if (!cpu) {
    __builtin_cpu_init();
    cpu = __builtin_cpu_supports("avx512vbmi") ? 2 : 1;
  }
  const char *off = getenv("DEVICEFIT_KERNELS_NO_VBMI");
  return cpu == 2 && !(off && off[0] == '1');
}

/* out = the transpose of the 16x16 matrix of 32-bit elements whose rows are r[0..15] */
static inline __attribute__((always_inline)) void transpose16x16(const __m512 *r, __m512 *out) {
  __m512 t[16], q[16];
  for (int i = 0; i < 8; i++) { /* per 128-bit lane: [a0 b0 a1 b1], [a2 b2 a3 b3] */
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; i++) { /* q[4i + j], lane L: column 4L + j of rows 4i..4i+3 */
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    q[4 * i + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    q[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    q[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    q[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int j = 0; j < 4; j++) { /* column 4L + j: lane L of q[j], q[4 + j], q[8 + j], q[12 + j] */
    const __m512 u0 = _mm512_shuffle_f32x4(q[j], q[4 + j], 0x44), u1 = _mm512_shuffle_f32x4(q[j], q[4 + j], 0xEE);
    const __m512 u2 = _mm512_shuffle_f32x4(q[8 + j], q[12 + j], 0x44);
    const __m512 u3 = _mm512_shuffle_f32x4(q[8 + j], q[12 + j], 0xEE);
    out[j] = _mm512_shuffle_f32x4(u0, u2, 0x88);
    out[4 + j] = _mm512_shuffle_f32x4(u0, u2, 0xDD);
    out[8 + j] = _mm512_shuffle_f32x4(u1, u3, 0x88);
    out[12 + j] = _mm512_shuffle_f32x4(u1, u3, 0xDD);
  }
}

/* ---- 2:4 sparse int8, batches >= S24_DENSE_MIN_M (AVX512-VBMI2) ----
 * Per tile of 16 * S24_NC output channels the 2:4 weights are densified once per call into the VNNI dense layout
 * (one zmm per group of 4 k: 32-bit lane i = the 4 weights of channel n0 + i, zeros included) and a dense int8
 * GEMM microkernel runs S24_MR activation rows x S24_NC zmm of channels: per group one broadcast of each row's 4
 * activation bytes (offset to unsigned, as above) and one vpdpbusd per row and zmm. Densifying a 64-k block of
 * one channel is one vpexpandb (the 32 kept bytes into the 64 dense ones, under a 64-bit mask with the 2 bits of
 * each group's positions set) and, per 16 channels, a 16x16 transpose of 32-bit elements; 128 * sum(w) per
 * channel is accumulated on the way. The same integer products, summed exactly: results equal the other paths. */
#define S24_NC 2
#define S24_MR 8
#define S24_DENSE_MIN_M 6

/* vpexpandb is AVX512-VBMI2 (Ice Lake, Sapphire Rapids, Zen 4; not Cascade Lake): used where the CPU has it, unless
 * DEVICEFIT_KERNELS_NO_VBMI2=1 (tests run both variants on one machine); without it every batch takes the row path */
static int has_vbmi2(void) {
  static volatile int cpu; /* 0 = unknown, 1 = no, 2 = yes; a benign race */
  if (!cpu) {
    __builtin_cpu_init();
    cpu = __builtin_cpu_supports("avx512vbmi2") ? 2 : 1;
  }
  const char *off = getenv("DEVICEFIT_KERNELS_NO_VBMI2");
  return cpu == 2 && !(off && off[0] == '1');
}

static int s24_dense_ok(int64_t M) { return M >= S24_DENSE_MIN_M && has_vbmi2(); }

/* channels n0..n0+15 (those >= N as zeros), all Kp: group g's zmm at d + g * gstride; colsum = 128 * sum(w) */
static __attribute__((target("avx512vbmi2"))) void s24_densify16(int64_t N, int64_t Kp, int64_t n0,
                                                                  const int8_t *values, const uint8_t *index,
                                                                  int8_t *d, int64_t gstride, int32_t *colsum) {
  /* lane L holds, in bytes 0-7, the 2-bit fields (j = L, t = 0..7) of the block's index word: slots 8L..8L+7,
   * the positions of groups 4L..4L+3 (not yet masked to 2 bits); byte 4h + p of the lane is compared with p */
  const __m512i shifts = _mm512_set_epi64(6, 6, 4, 4, 2, 2, 0, 0);
  const __m512i ctl_a = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6));
  const __m512i ctl_b = _mm512_broadcast_i32x4(_mm_setr_epi8(1, 1, 1, 1, 3, 3, 3, 3, 5, 5, 5, 5, 7, 7, 7, 7));
  const __m512i pos = _mm512_set1_epi32(0x03020100);
  const __m512i three = _mm512_set1_epi8(3), off = _mm512_set1_epi8((char)0x80);
  __m512i sw = _mm512_setzero_si512();
  for (int64_t b = 0; b < Kp / 64; b++) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) {
      const int64_t n = n0 + i;
      if (n >= N) {
        r[i] = _mm512_setzero_ps();
        continue;
      }
      const __m512i f = _mm512_srlv_epi64(_mm512_set1_epi64(load_word(index + n * (Kp / 8) + b * 8)), shifts);
      const __mmask64 k =
          _mm512_cmpeq_epi8_mask(_mm512_and_si512(_mm512_shuffle_epi8(f, ctl_a), three), pos) |
          _mm512_cmpeq_epi8_mask(_mm512_and_si512(_mm512_shuffle_epi8(f, ctl_b), three), pos);
      r[i] = _mm512_castsi512_ps(_mm512_maskz_expandloadu_epi8(k, values + n * (Kp / 2) + b * 32));
    }
    transpose16x16(r, t);
    for (int h = 0; h < 16; h++) {
      const __m512i w = _mm512_castps_si512(t[h]);
      _mm512_store_si512(d + (b * 16 + h) * gstride, w);
      sw = _mm512_dpbusd_epi32(sw, off, w);
    }
  }
  _mm512_storeu_si512(colsum, sw);
}

/* rows a[0..mr) (unsigned, row stride Kp) x the densified tile d (S24_NC zmm per group): acc[r, n0 + c] for the
 * nvalid channels of the tile */
static inline __attribute__((always_inline)) void s24_dense_mk(const int mr, int64_t Kp, const uint8_t *a,
                                                              const int8_t *d, const int32_t *colsum, int32_t *acc,
                                                              int64_t N, int64_t nvalid) {
  __m512i c[S24_MR][S24_NC];
  for (int r = 0; r < mr; r++)
    for (int j = 0; j < S24_NC; j++) c[r][j] = _mm512_setzero_si512();
  for (int64_t g = 0; g < Kp / 4; g++) {
    __m512i w[S24_NC];
    for (int j = 0; j < S24_NC; j++) w[j] = _mm512_load_si512(d + (g * S24_NC + j) * 64);
    for (int r = 0; r < mr; r++) {
      int32_t x4;
      memcpy(&x4, a + r * Kp + 4 * g, 4);
      const __m512i x = _mm512_set1_epi32(x4);
      for (int j = 0; j < S24_NC; j++) c[r][j] = _mm512_dpbusd_epi32(c[r][j], x, w[j]);
    }
  }
  for (int j = 0; j < S24_NC; j++) {
    const int64_t left = nvalid - 16 * j;
    if (left <= 0) break;
    const __mmask16 km = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
    const __m512i cs = _mm512_loadu_si512(colsum + 16 * j);
    for (int r = 0; r < mr; r++) _mm512_mask_storeu_epi32(acc + r * N + 16 * j, km, _mm512_sub_epi32(c[r][j], cs));
  }
}

static void s24_dense(int64_t M, int64_t N, int64_t Kp, const int8_t *xq, const int8_t *values, const uint8_t *index,
                      int32_t *acc, int8_t *scratch) {
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  for (int64_t i = 0; i < M * Kp; i += 64)
    _mm512_storeu_si512(scratch + i, _mm512_xor_si512(_mm512_loadu_si512(xq + i), flip));
  const uint8_t *xu = (const uint8_t *)scratch;
  int8_t *d = aligned_alloc(64, (size_t)(Kp * 16 * S24_NC));
  int32_t colsum[16 * S24_NC];
  if (!d) abort();
  for (int64_t n0 = 0; n0 < N; n0 += 16 * S24_NC) {
    const int64_t nvalid = N - n0 < 16 * S24_NC ? N - n0 : 16 * S24_NC;
    for (int j = 0; j < S24_NC; j++) {
      if (16 * j < nvalid)
        s24_densify16(N, Kp, n0 + 16 * j, values, index, d + 64 * j, 64 * S24_NC, colsum + 16 * j);
      else
        memset(colsum + 16 * j, 0, 64);
    }
    /* padding zmm of the last tile: zero weights (their results are not stored) */
    for (int j = 0; j < S24_NC; j++)
      if (16 * j >= nvalid)
        for (int64_t g = 0; g < Kp / 4; g++) memset(d + (g * S24_NC + j) * 64, 0, 64);
    int64_t m0 = 0;
    for (; m0 + S24_MR <= M; m0 += S24_MR)
      s24_dense_mk(S24_MR, Kp, xu + m0 * Kp, d, colsum, acc + m0 * N + n0, N, nvalid);
    switch (M - m0) {
    case 0: break;
    case 1: s24_dense_mk(1, Kp, xu + m0 * Kp, d, colsum, acc + m0 * N + n0, N, nvalid); break;
    case 2: s24_dense_mk(2, Kp, xu + m0 * Kp, d, colsum, acc + m0 * N + n0, N, nvalid); break;
    case 3: s24_dense_mk(3, Kp, xu + m0 * Kp, d, colsum, acc + m0 * N + n0, N, nvalid); break;
    case 4: s24_dense_mk(4, Kp, xu + m0 * Kp, d, colsum, acc + m0 * N + n0, N, nvalid); break;
    case 5: s24_dense_mk(5, Kp, xu + m0 * Kp, d, colsum, acc + m0 * N + n0, N, nvalid); break;
    case 6: s24_dense_mk(6, Kp, xu + m0 * Kp, d, colsum, acc + m0 * N + n0, N, nvalid); break;
    default: s24_dense_mk(7, Kp, xu + m0 * Kp, d, colsum, acc + m0 * N + n0, N, nvalid); break;
    }
  }
  free(d);
}

/* below this many groups the epilogue factors are transposed in scalar code (measured: 1536x384, 3 groups, 20% faster
 * in all; 6 groups already faster with the vector transposes) */
#define DFK_EPI_SCALAR_BELOW 4

/* the epilogue factors of 16 rows n0.. for every group, transposed to [group][row] (sc, zx: 16 * ng rounded up to
 * a multiple of 16 groups; the padding is written with zeros): sc = s * xs (the same float
 * product every path computes) and zx = z * xsum (exact: |xsum| <= 127 * 256 fits int16, so one vpmaddwd) */
static void epilogue16(int64_t ng, int64_t n0, const float *scales, const uint8_t *zeros, int32_t zdef,
                       const float *xs, const int32_t *xsum, float *sc, int32_t *zx) {
  if (ng < DFK_EPI_SCALAR_BELOW) { /* few groups: two 16x16 transposes would mostly move padding */
    for (int r = 0; r < 16; r++)
      for (int64_t g = 0; g < ng; g++) {
        sc[g * 16 + r] = scales[(n0 + r) * ng + g] * xs[g];
        zx[g * 16 + r] = (zeros ? (int32_t)zeros[(n0 + r) * ng + g] : zdef) * xsum[g];
      }
    return;
  }
  for (int64_t g0 = 0; g0 < ng; g0 += 16) {
    const int64_t cnt = ng - g0 < 16 ? ng - g0 : 16;
    const __mmask16 m = (__mmask16)((1u << cnt) - 1);
    __m512 a[16], at[16];
    const __m512 xsv = _mm512_maskz_loadu_ps(m, xs + g0);
    for (int r = 0; r < 16; r++) a[r] = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, scales + (n0 + r) * ng + g0), xsv);
    transpose16x16(a, at);
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(sc + (g0 + i) * 16, at[i]);
    const __m512i xsumv = _mm512_maskz_loadu_epi32(m, xsum + g0);
    for (int r = 0; r < 16; r++) {
      const __m512i z = zeros ? _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, zeros + (n0 + r) * ng + g0))
                              : _mm512_set1_epi32(zdef);
      a[r] = _mm512_castsi512_ps(_mm512_madd_epi16(z, xsumv));
    }
    transpose16x16(a, at);
    for (int i = 0; i < 16; i++) _mm512_storeu_ps((float *)(zx + (g0 + i) * 16), at[i]);
  }
}

/* ---- 2-bit, batch 1, 16 rows at a time ----
 * One 64-byte load of a row holds the codes of 256 k (a "quad": four 64-k chunks, one per 128-bit lane: lane L,
 * qword w = code word of k = 64L + 32w .. +31). Field j of every byte is isolated by one 64-bit shift (none for
 * j = 0) and one mask: byte t of qword w then holds the code of k = 64L + 32w + 8j + t. The activations are
 * rearranged once per call into that order (four vectors per quad, one per j), so a quad costs per row one load,
 * three shifts, four masks and four vpdpbusd. Each int32 lane then sums 4 products of one 64-k chunk; a group
 * (64, 128 or 256 k) is 1, 2 or 4 lanes, so the add tree reduces 16 rows x 4 chunks together. */

/* xa[quad][j][64]: byte 16L + 8w + t of vector j = x[256 quad + 64L + 32w + 8j + t]; zeros past Kp */
static void to_quad_order(const int8_t *x, int64_t Kp, int8_t *xa) {
  const int64_t nq = (Kp + 255) / 256;
  memset(xa, 0, (size_t)(256 * nq));
  for (int64_t c = 0; c < Kp / 64; c++) /* chunk c = lane c % 4 of quad c / 4 */
    for (int j = 0; j < 4; j++)
      for (int w = 0; w < 2; w++)
        memcpy(xa + (c / 4) * 256 + j * 64 + (c % 4) * 16 + 8 * w, x + 64 * c + 32 * w + 8 * j, 8);
  if (Kp % 256 == 128) /* a half last quad: lanes 2, 3 repeat lanes 0, 1 (two rows per vector, see row16_half) */
    for (int j = 0; j < 4; j++) memcpy(xa + (nq - 1) * 256 + j * 64 + 32, xa + (nq - 1) * 256 + j * 64, 32);
}

/* int32 lanes of one row's quad: lane 4L + i sums 4 products of chunk L */
static inline __attribute__((always_inline)) __m512i quad_dot(__m512i v, const __m512i *xa, __m512i three) {
  __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v, three), xa[0]);
  s = _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi64(v, 2), three), xa[1]);
  s = _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi64(v, 4), three), xa[2]);
  return _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi64(v, 6), three), xa[3]);
}

/* software prefetch distance of the 16 row streams, in bytes (two quads ahead; measured best on Sapphire Rapids
 * with the weights in L3: 64, 192, 256 and one block ahead were all slower; the hardware prefetchers alone, 15%) */
#define DFK_Q2_PREFETCH 128

/* the 16 rows' sums of each 64-k chunk of quad q (c[L] lane i: row n0 + i, chunk L) */
static inline __attribute__((always_inline)) void row16_quad(int64_t q, int64_t n0, int64_t row_bytes,
                                                             const int8_t *xa, const uint8_t *packed, __m512i *c) {
  const __m512i three = _mm512_set1_epi8(3);
  const __m512i xv[4] = {_mm512_loadu_si512(xa + q * 256), _mm512_loadu_si512(xa + q * 256 + 64),
                         _mm512_loadu_si512(xa + q * 256 + 128), _mm512_loadu_si512(xa + q * 256 + 192)};
  const uint8_t *p = packed + n0 * row_bytes + q * 64;
  __m512i t[8];
  for (int r = 0; r < 16; r += 2) { /* two rows, then the first level of the add tree */
    const __m512i v0 = _mm512_loadu_si512(p + r * row_bytes), v1 = _mm512_loadu_si512(p + (r + 1) * row_bytes);
    _mm_prefetch((const char *)(p + r * row_bytes + DFK_Q2_PREFETCH), _MM_HINT_T0);
    _mm_prefetch((const char *)(p + (r + 1) * row_bytes + DFK_Q2_PREFETCH), _MM_HINT_T0);
    const __m512i d0 = quad_dot(v0, xv, three), d1 = quad_dot(v1, xv, three);
    /* per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3] */
    t[r / 2] = _mm512_add_epi32(_mm512_unpacklo_epi32(d0, d1), _mm512_unpackhi_epi32(d0, d1));
  }
  __m512i u[4];
  for (int i = 0; i < 4; i++) /* lane L of u[i]: rows 4i..4i+3, chunk L */
    u[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * i], t[2 * i + 1]),
                            _mm512_unpackhi_epi64(t[2 * i], t[2 * i + 1]));
  /* 4x4 transpose of 128-bit lanes */
  const __m512i p01 = _mm512_shuffle_i32x4(u[0], u[1], 0x44), p23 = _mm512_shuffle_i32x4(u[2], u[3], 0x44);
  const __m512i q01 = _mm512_shuffle_i32x4(u[0], u[1], 0xEE), q23 = _mm512_shuffle_i32x4(u[2], u[3], 0xEE);
  c[0] = _mm512_shuffle_i32x4(p01, p23, 0x88), c[1] = _mm512_shuffle_i32x4(p01, p23, 0xDD);
  c[2] = _mm512_shuffle_i32x4(q01, q23, 0x88), c[3] = _mm512_shuffle_i32x4(q01, q23, 0xDD);
}

/* a half last quad (128 k: one group of 128 or two of 64, `gpq` = 2 or 4 per whole quad): two rows per vector
 * (row r in lanes 0, 1, row r + 1 in lanes 2, 3); c[h] = the 16 rows' sums of half-quad group h */
static inline __attribute__((always_inline)) void row16_half(const int gpq, int64_t q, int64_t n0, int64_t row_bytes,
                                                             const int8_t *xa, const uint8_t *packed, __m512i *c) {
  const __m512i three = _mm512_set1_epi8(3);
  const __m512i xv[4] = {_mm512_loadu_si512(xa + q * 256), _mm512_loadu_si512(xa + q * 256 + 64),
                         _mm512_loadu_si512(xa + q * 256 + 128), _mm512_loadu_si512(xa + q * 256 + 192)};
  const uint8_t *p = packed + n0 * row_bytes + q * 64;
  __m512i t[4];
  for (int r = 0; r < 16; r += 4) {
    __m512i e[2];
    for (int h = 0; h < 2; h++) {
      const uint8_t *a = p + (r + 2 * h) * row_bytes;
      const __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                                           _mm256_loadu_si256((const __m256i *)(a + row_bytes)), 1);
      e[h] = quad_dot(v, xv, three);
    }
    t[r / 4] = _mm512_add_epi32(_mm512_unpacklo_epi32(e[0], e[1]), _mm512_unpackhi_epi32(e[0], e[1]));
  }
  __m512i u[2]; /* lane 2 * (row parity) + chunk of u[i]: rows 8i + parity + 0, 2, 4, 6 */
  for (int i = 0; i < 2; i++)
    u[i] = _mm512_add_epi32(_mm512_unpacklo_epi64(t[2 * i], t[2 * i + 1]),
                            _mm512_unpackhi_epi64(t[2 * i], t[2 * i + 1]));
  /* per chunk: rows 0 2 4 6 1 3 5 7 8 10 12 14 9 11 13 15, put back in order */
  const __m512i k0 = _mm512_shuffle_i32x4(u[0], u[1], 0x88), k1 = _mm512_shuffle_i32x4(u[0], u[1], 0xDD);
  const __m512i order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
  if (gpq == 2) {
    c[0] = _mm512_permutexvar_epi32(order, _mm512_add_epi32(k0, k1));
  } else {
    c[0] = _mm512_permutexvar_epi32(order, k0);
    c[1] = _mm512_permutexvar_epi32(order, k1);
  }
}

/* the groups g0 .. g0 + gpq - 1 of one quad's chunk sums c, in order, into acc */
static inline __attribute__((always_inline)) __m512 quad_epilogue(const int gpq, __m512i *c, int64_t g0,
                                                                  const float *sc, const int32_t *zx, __m512 acc) {
  if (gpq == 2) c[0] = _mm512_add_epi32(c[0], c[1]), c[1] = _mm512_add_epi32(c[2], c[3]);
  if (gpq == 1) c[0] = _mm512_add_epi32(_mm512_add_epi32(c[0], c[1]), _mm512_add_epi32(c[2], c[3]));
  for (int h = 0; h < gpq; h++) {
    const __m512i dot = _mm512_sub_epi32(c[h], _mm512_loadu_si512(zx + (g0 + h) * 16));
    acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_loadu_ps(sc + (g0 + h) * 16)));
  }
  return acc;
}

/* 16 rows x all groups; `gpq` (groups per quad: 4, 2, 1 for G = 64, 128, 256) a compile-time constant; nq quads,
 * the last one `last_chunks` (4, or 2: a half quad) chunks long */
static inline __attribute__((always_inline)) void row16_q2(const int gpq, int64_t nq, int64_t last_chunks,
                                                           int64_t n0, int64_t row_bytes, const int8_t *xa,
                                                           const uint8_t *packed, const float *sc,
                                                           const int32_t *zx, float *y, const char *pf_s,
                                                           const char *pf_z) {
  __m512 acc = _mm512_setzero_ps();
  const int64_t nfull = last_chunks == 4 ? nq : nq - 1;
  __m512i c[4];
  for (int64_t q = 0; q < nfull; q++) {
    /* 16 rows x gpq groups of scales (64 bytes per group) and of zero points (16 bytes) per quad */
    for (int h = 0; h < gpq; h++) _mm_prefetch(pf_s + (q * gpq + h) * 64, _MM_HINT_T0);
    _mm_prefetch(pf_z + q * gpq * 16, _MM_HINT_T0);
    row16_quad(q, n0, row_bytes, xa, packed, c);
    acc = quad_epilogue(gpq, c, q * gpq, sc, zx, acc);
  }
  if (nfull < nq) { /* last_chunks == 2 here (lowbit2_rows16 takes K a multiple of 128 only) */
    row16_half(gpq, nfull, n0, row_bytes, xa, packed, c);
    for (int h = 0; h < gpq / 2; h++) {
      const int64_t g = nfull * gpq + h;
      const __m512i dot = _mm512_sub_epi32(c[h], _mm512_loadu_si512(zx + g * 16));
      acc = _mm512_add_ps(acc, _mm512_mul_ps(_mm512_cvtepi32_ps(dot), _mm512_loadu_ps(sc + g * 16)));
    }
  }
  _mm512_storeu_ps(y + n0, acc);
}

static void row16_q2_blocks(int64_t G, int64_t nq, int64_t last_chunks, int64_t n0, int64_t row_bytes,
                            const int8_t *xa, const uint8_t *packed, const float *sc, const int32_t *zx, float *y,
                            const char *pf_s, const char *pf_z) {
  if (G == 64)
    row16_q2(4, nq, last_chunks, n0, row_bytes, xa, packed, sc, zx, y, pf_s, pf_z);
  else if (G == 128)
    row16_q2(2, nq, last_chunks, n0, row_bytes, xa, packed, sc, zx, y, pf_s, pf_z);
  else
    row16_q2(1, nq, last_chunks, n0, row_bytes, xa, packed, sc, zx, y, pf_s, pf_z);
}

/* 2-bit batch 1, G in {64, 128, 256}: rows 0 .. 16 * floor(N / 16) - 1; returns how many rows it did (0 when out
 * of memory: the caller then does them all) */
static int64_t lowbit2_rows16(int64_t N, int64_t Kp, int64_t G, const int8_t *xq, const int32_t *xsum,
                              const float *xs, const uint8_t *packed, const float *scales, const uint8_t *zeros,
                              float *y) {
  const int64_t ng = Kp / G, row_bytes = Kp / 4, nq = (Kp + 255) / 256, last_chunks = (Kp / 64) - 4 * (nq - 1);
  const int64_t ng16 = (ng + 15) / 16 * 16;
  /* one buffer: sc [ng16][16] floats, zx [ng16][16] int32, the activations in quad order */
  uint8_t *buf = malloc(sizeof(float) * 32 * (size_t)ng16 + 256 * (size_t)nq);
  if (!buf) return 0;
  float *sc = (float *)buf;
  int32_t *zx = (int32_t *)(buf + sizeof(float) * 16 * (size_t)ng16);
  int8_t *xa = (int8_t *)(buf + sizeof(float) * 32 * (size_t)ng16);
  to_quad_order(xq, Kp, xa);
  int64_t n0 = 0;
  for (; n0 + 16 <= N; n0 += 16) {
    epilogue16(ng, n0, scales, zeros, 2, xs, xsum, sc, zx);
    /* the next block's scales / zero points are prefetched along this block's quads (the last block: its own) */
    const int64_t pf = n0 + 32 <= N ? n0 + 16 : n0;
    row16_q2_blocks(G, nq, last_chunks, n0, row_bytes, xa, packed, sc, zx, y, (const char *)(scales + pf * ng),
                    zeros ? (const char *)(zeros + pf * ng) : (const char *)(scales + pf * ng));
  }
  free(buf);
  return n0;
}

static void lowbit_rows8(int bits, int64_t M, int64_t N, int64_t Kp, int64_t G, const int8_t *xq,
                          const int32_t *xsum, const float *xs, const uint8_t *packed, const float *scales,
                          const uint8_t *zeros, float *y) {
  const int64_t ng = Kp / G, row_bytes = Kp * bits / 8, upg = G / 32;
  if (M != 1 || upg < 2 || N < 8) {
    dfk_isa_avx2.lowbit(bits, M, N, Kp, G, xq, xsum, xs, packed, scales, zeros, y);
    return;
  }
  const int32_t zdef = 1 << (bits - 1);
  float *sT = malloc(sizeof(float) * 8 * (size_t)ng);
  int32_t *zT = malloc(sizeof(int32_t) * 8 * (size_t)ng);
  if (!sT || !zT) {
    free(sT), free(zT);
    dfk_isa_avx2.lowbit(bits, M, N, Kp, G, xq, xsum, xs, packed, scales, zeros, y);
    return;
  }
  int8_t *xl = malloc((size_t)Kp);
  if (xl) to_lane_order(xq, Kp, xl);
  /* vpmultishiftqb bit offsets, lane order: byte t of qword i takes field (j = i / 2, t) of its word (bit 8t + 2j);
   * the high bits (3-bit) sit at bit 8t + j' of one word, j' = 4 (i % 2) + i / 2, moved to bit 2 (mod 64) */
  const int vbmi = has_vbmi();
  uint8_t lo_bytes[64], hi_bytes[64];
  for (int i = 0; i < 8; i++)
    for (int t = 0; t < 8; t++) {
      lo_bytes[8 * i + t] = (uint8_t)(8 * t + 2 * (i / 2));
      hi_bytes[8 * i + t] = (uint8_t)((8 * t + 4 * (i % 2) + i / 2 + 62) % 64);
    }
  int64_t n0 = 0;
  for (; xl && n0 + 8 <= N; n0 += 8) {
    for (int r = 0; r < 8; r++)
      for (int64_t g = 0; g < ng; g++) {
        sT[g * 8 + r] = scales[(n0 + r) * ng + g];
        zT[g * 8 + r] = zeros ? (int32_t)zeros[(n0 + r) * ng + g] : zdef;
      }
if (vbmi)
      row8_blocks_vbmi(bits, upg, ng, G, n0, row_bytes, xl, xsum, xs, packed, sT, zT, y, lo_bytes, hi_bytes);
    else
      row8_blocks(bits, upg, ng, G, n0, row_bytes, xl, xsum, xs, packed, sT, zT, y);
  }
  free(sT), free(zT), free(xl);
  if (n0 < N) /* tail rows (batch 1: contiguous in y): the AVX2 path, same arithmetic and order */
    dfk_isa_avx2.lowbit(bits, 1, N - n0, Kp, G, xq, xsum, xs, packed + n0 * row_bytes, scales + n0 * ng,
                        zeros ? zeros + n0 * ng : NULL, y + n0);
}

static void lowbit_avx512(int bits, int64_t M, int64_t N, int64_t Kp, int64_t G, const int8_t *xq,
                          const int32_t *xsum, const float *xs, const uint8_t *packed, const float *scales,
                          const uint8_t *zeros, float *y) {
  int64_t n0 = 0;
  /* a last quad of 64 or 192 k would waste lanes: such K stay on the 8-row path (faster there) */
  if (bits == 2 && M == 1 && G >= 64 && Kp % 128 == 0) n0 = lowbit2_rows16(N, Kp, G, xq, xsum, xs, packed, scales, zeros, y);
  if (n0 == N) return;
  const int64_t ng = Kp / G, row_bytes = Kp * bits / 8;
  lowbit_rows8(bits, M, N - n0, Kp, G, xq, xsum, xs, packed + n0 * row_bytes, scales + n0 * ng,
               zeros ? zeros + n0 * ng : NULL, y + n0);
}

float dfk_quantize_block_avx512(const float *x, int64_t n, int64_t np, int8_t *q) {
  return dfk_quantize_block(x, n, np, q);
}

const dfk_isa dfk_isa_avx512vnni = {"avx512vnni", s24_avx512, lowbit_avx512};
#else
typedef int dfk_no_avx512_here; /* keeps the translation unit non-empty off x86-64 */
#endif
