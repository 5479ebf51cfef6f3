/* Portable scalar kernels: the fallback path and the C reference the SIMD paths are tested against. */
#include "dfk.h"

static void s24_scalar(int64_t M, int64_t N, int64_t Kp, const int8_t *xq, const int8_t *values,
                       const uint8_t *index, int32_t *acc, int8_t *scratch) {
  (void)scratch;
  const int64_t nblk = Kp / 64;
  for (int64_t m = 0; m < M; m++) {
    const int8_t *x = xq + m * Kp;
    for (int64_t n = 0; n < N; n++) {
      const int8_t *v = values + n * (Kp / 2);
      const uint8_t *ix = index + n * (Kp / 8);
      int32_t s = 0;
      for (int64_t b = 0; b < nblk; b++) {
        for (int q = 0; q < 32; q++) {
          int64_t k = b * 64 + 4 * (q >> 1) + (int64_t)dfk_field2(ix + b * 8, q);
          s += (int32_t)v[b * 32 + q] * (int32_t)x[k];
        }
      }
      acc[m * N + n] = s;
    }
  }
}

static void lowbit_scalar(int bits, int64_t M, int64_t N, int64_t Kp, int64_t G, const int8_t *xq,
                          const int32_t *xsum, const float *xs, const uint8_t *packed, const float *scales,
                          const uint8_t *zeros, float *y) {
  const int64_t ng = Kp / G, row_bytes = Kp * bits / 8;
  const int32_t zdef = 1 << (bits - 1);
  for (int64_t m = 0; m < M; m++) {
    for (int64_t n = 0; n < N; n++) {
      const uint8_t *row = packed + n * row_bytes;
      float acc = 0.0f;
      for (int64_t g = 0; g < ng; g++) {
        int32_t d = 0;
        for (int64_t k = g * G; k < (g + 1) * G; k++) d += (int32_t)dfk_code(row, bits, k) * xq[m * Kp + k];
        int32_t z = zeros ? (int32_t)zeros[n * ng + g] : zdef;
        d -= z * xsum[m * ng + g];
        acc = acc + (float)d * (scales[n * ng + g] * xs[m * ng + g]);
      }
      y[m * N + n] = acc;
    }
  }
}

const dfk_isa dfk_isa_scalar = {"scalar", s24_scalar, lowbit_scalar};
