/* ISA selection (runtime CPU features + DEVICEFIT_KERNELS_ISA) and the op drivers shared by every path:
 * activation quantization, padding and the float epilogue are computed here once, in scalar C, so all
 * paths produce bit-identical outputs. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "dfk.h"

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#endif

DFK_EXPORT const char *dfk_version(void) { return "devicefit-kernels 1"; }

static int cpu_has_probe(int isa) {
  switch (isa) {
  case DFK_ISA_SCALAR:
    return 1;
#if defined(__x86_64__)
  case DFK_ISA_AVX2:
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2");
  case DFK_ISA_AVX512VNNI: /* libgcc also checks that the OS saves the zmm state */
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__aarch64__) && defined(__linux__)
  case DFK_ISA_NEON_DOT:
    return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0;
#endif
  default:
    return 0;
  }
}

/* CPUID can trap to the hypervisor in a VM (microseconds): probe each feature once */
static int cpu_has(int isa) {
  static volatile int cache[DFK_ISA_COUNT]; /* 0 = unknown, 1 = no, 2 = yes; a benign race */
  if (isa < 0 || isa >= DFK_ISA_COUNT) return 0;
  if (!cache[isa]) cache[isa] = cpu_has_probe(isa) ? 2 : 1;
  return cache[isa] == 2;
}

static const dfk_isa *isa_table(int isa) {
  switch (isa) {
  case DFK_ISA_SCALAR:
    return &dfk_isa_scalar;
#if defined(__x86_64__)
  case DFK_ISA_AVX2:
    return &dfk_isa_avx2;
  case DFK_ISA_AVX512VNNI:
    return &dfk_isa_avx512vnni;
#endif
#if defined(__aarch64__)
  case DFK_ISA_NEON_DOT:
    return &dfk_isa_neon_dot;
#endif
  default:
    return NULL;
  }
}

static const char *const ISA_NAMES[DFK_ISA_COUNT] = {"scalar", "avx2", "neon_dot", "avx512vnni"};
static const int PREFERENCE[DFK_ISA_COUNT] = {DFK_ISA_AVX512VNNI, DFK_ISA_AVX2, DFK_ISA_NEON_DOT, DFK_ISA_SCALAR};

const dfk_isa *dfk_isa_select(const char *requested, const char **err) {
  if (requested == NULL || requested[0] == '\0') requested = getenv("DEVICEFIT_KERNELS_ISA");
  if (requested == NULL || requested[0] == '\0' || strcmp(requested, "auto") == 0) {
    for (int i = 0; i < DFK_ISA_COUNT; i++)
      if (isa_table(PREFERENCE[i]) && cpu_has(PREFERENCE[i])) return isa_table(PREFERENCE[i]);
    return &dfk_isa_scalar;
  }
  for (int i = 0; i < DFK_ISA_COUNT; i++) {
    if (strcmp(requested, ISA_NAMES[i]) == 0) {
      if (isa_table(i) && cpu_has(i)) return isa_table(i);
      if (err) *err = "the requested ISA (DEVICEFIT_KERNELS_ISA) is not supported by this CPU or build";
      return NULL;
    }
  }
  if (err) *err = "unknown ISA in DEVICEFIT_KERNELS_ISA (valid: auto, scalar, avx2, avx512vnni, neon_dot)";
  return NULL;
}

DFK_EXPORT const char *dfk_isa_name(void) {
  const dfk_isa *isa = dfk_isa_select(NULL, NULL);
  return isa ? isa->name : NULL;
}

DFK_EXPORT int dfk_isa_supported(const char *name) {
  for (int i = 0; i < DFK_ISA_COUNT; i++)
    if (strcmp(name, ISA_NAMES[i]) == 0) return isa_table(i) != NULL && cpu_has(i);
  return 0;
}

DFK_EXPORT const char *dfk_isa_list(void) {
  static char buf[64];
  buf[0] = '\0';
  for (int i = 0; i < DFK_ISA_COUNT; i++) {
    int isa = PREFERENCE[i];
    if (isa_table(isa) && cpu_has(isa)) {
      if (buf[0]) strcat(buf, ",");
      strcat(buf, ISA_NAMES[isa]);
    }
  }
  return buf;
}

/* activation quantization (dfk.h), the copy compiled for the ISA in use (the same C: the same results) */
static float quantize_block(const dfk_isa *isa, const float *x, int64_t n, int64_t np, int8_t *q) {
#if defined(__x86_64__)
  if (isa == &dfk_isa_avx512vnni) return dfk_quantize_block_avx512(x, n, np, q);
#endif
  (void)isa;
  return dfk_quantize_block(x, n, np, q);
}

int dfk_sparse24_with(const dfk_isa *isa, int64_t M, int64_t K, int64_t Kp, int64_t N, const float *x,
                      const int8_t *values, const uint8_t *index, const float *scales, const float *bias,
                      float *y) {
  if (M < 0 || N < 0 || K < 0 || Kp % 64 != 0 || K > Kp) return 1;
  if (M == 0 || N == 0) return 0;
  int8_t *xq = malloc((size_t)(2 * M * Kp) + 64);
  float *sx = malloc(sizeof(float) * (size_t)M);
  int32_t *acc = malloc(sizeof(int32_t) * (size_t)(M * N));
  if (!xq || !sx || !acc) {
    free(xq), free(sx), free(acc);
    return 2;
  }
  for (int64_t m = 0; m < M; m++) sx[m] = quantize_block(isa, x + m * K, K, Kp, xq + m * Kp);
  isa->s24(M, N, Kp, xq, values, index, acc, xq + M * Kp);
  for (int64_t m = 0; m < M; m++)
    for (int64_t n = 0; n < N; n++) {
      float v = (float)acc[m * N + n] * (sx[m] * scales[n]);
      y[m * N + n] = bias ? v + bias[n] : v;
    }
  free(xq), free(sx), free(acc);
  return 0;
}

int dfk_lowbit_with(const dfk_isa *isa, int bits, int64_t G, int64_t M, int64_t K, int64_t Kp, int64_t N,
                    const float *x, const uint8_t *packed, const float *scales, const uint8_t *zeros,
                    const float *bias, float *y) {
  if ((bits != 2 && bits != 3) || G < 32 || G > 256 || G % 32 != 0 || Kp % 64 != 0 || Kp % G != 0 || K > Kp ||
      M < 0 || N < 0 || K < 0)
    return 1;
  if (M == 0 || N == 0) return 0;
  const int64_t ng = Kp / G;
  int8_t *xq = malloc((size_t)(M * Kp));
  float *xs = malloc(sizeof(float) * (size_t)(M * ng));
  int32_t *xsum = malloc(sizeof(int32_t) * (size_t)(M * ng));
  if (!xq || !xs || !xsum) {
    free(xq), free(xs), free(xsum);
    return 2;
  }
  for (int64_t m = 0; m < M; m++)
    for (int64_t g = 0; g < ng; g++) {
      int64_t lo = g * G, n_in = K - lo < 0 ? 0 : (K - lo > G ? G : K - lo);
      int8_t *q = xq + m * Kp + lo;
      xs[m * ng + g] = quantize_block(isa, x + m * K + lo, n_in, G, q);
      int32_t s = 0;
      for (int64_t i = 0; i < G; i++) s += q[i];
      xsum[m * ng + g] = s;
    }
  isa->lowbit(bits, M, N, Kp, G, xq, xsum, xs, packed, scales, zeros, y);
  if (bias)
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) y[m * N + n] = y[m * N + n] + bias[n];
  free(xq), free(xs), free(xsum);
  return 0;
}

DFK_EXPORT int dfk_sparse24_run(const char *name, int64_t M, int64_t K, int64_t Kp, int64_t N, const float *x,
                                const int8_t *values, const uint8_t *index, const float *scales,
                                const float *bias, float *y) {
  const dfk_isa *isa = dfk_isa_select(name, NULL);
  return isa ? dfk_sparse24_with(isa, M, K, Kp, N, x, values, index, scales, bias, y) : 3;
}

DFK_EXPORT int dfk_lowbit_run(const char *name, int bits, int64_t G, int64_t M, int64_t K, int64_t Kp, int64_t N,
                              const float *x, const uint8_t *packed, const float *scales, const uint8_t *zeros,
                              const float *bias, float *y) {
  const dfk_isa *isa = dfk_isa_select(name, NULL);
  return isa ? dfk_lowbit_with(isa, bits, G, M, K, Kp, N, x, packed, scales, zeros, bias, y) : 3;
}
