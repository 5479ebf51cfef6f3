/* Test driver for the kernels without onnxruntime (used under qemu-aarch64 in CI):
 *   test_driver CASES_FILE
 * runs every case on every ISA path this CPU supports and compares the outputs byte for byte with the
 * expected ones (written by the numpy reference, see tests/kernels/test_aarch64_qemu.py).
 * File: "DFKT", u32 count, then per case: u32 op (0 = Sparse24, 1 = LowBit), i64 M K Kp N bits G,
 * u32 has_zeros has_bias, then x, the op's weight tensors, [zeros], [bias], expected y (raw LE). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dfk.h"

static FILE *f;
static void *read_n(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p || (n && fread(p, 1, n, f) != n)) {
    fprintf(stderr, "truncated case file\n");
    exit(2);
  }
  return p;
}
static uint32_t read_u32(void) { uint32_t v; void *p = read_n(4); memcpy(&v, p, 4); free(p); return v; }
static int64_t read_i64(void) { int64_t v; void *p = read_n(8); memcpy(&v, p, 8); free(p); return v; }

int main(int argc, char **argv) {
  if (argc != 2 || !(f = fopen(argv[1], "rb"))) {
    fprintf(stderr, "usage: %s CASES_FILE\n", argv[0]);
    return 2;
  }
  char magic[4];
  if (fread(magic, 1, 4, f) != 4 || memcmp(magic, "DFKT", 4)) return 2;
  uint32_t count = read_u32();
  static const char *names[] = {"scalar", "avx2", "neon_dot"};
  printf("isas: %s\n", dfk_isa_list());
  int failures = 0, runs = 0;
  for (uint32_t c = 0; c < count; c++) {
    uint32_t op = read_u32();
    int64_t M = read_i64(), K = read_i64(), Kp = read_i64(), N = read_i64(), bits = read_i64(), G = read_i64();
    uint32_t has_zeros = read_u32(), has_bias = read_u32();
    float *x = read_n(sizeof(float) * (size_t)(M * K));
    void *w0, *w1 = NULL, *sc;
    uint8_t *zeros = NULL;
    if (op == 0) {
      w0 = read_n((size_t)(N * Kp / 2));
      w1 = read_n((size_t)(N * Kp / 8));
      sc = read_n(sizeof(float) * (size_t)N);
    } else {
      w0 = read_n((size_t)(N * Kp * bits / 8));
      sc = read_n(sizeof(float) * (size_t)(N * (Kp / G)));
      if (has_zeros) zeros = read_n((size_t)(N * (Kp / G)));
    }
    float *bias = has_bias ? read_n(sizeof(float) * (size_t)N) : NULL;
    float *want = read_n(sizeof(float) * (size_t)(M * N));
    float *y = malloc(sizeof(float) * (size_t)(M * N) + 4);
    for (int i = 0; i < 3; i++) {
      if (!dfk_isa_supported(names[i])) continue;
      int rc = op == 0 ? dfk_sparse24_run(names[i], M, K, Kp, N, x, w0, w1, sc, bias, y)
                       : dfk_lowbit_run(names[i], (int)bits, G, M, K, Kp, N, x, w0, sc, zeros, bias, y);
      int ok = rc == 0 && memcmp(y, want, sizeof(float) * (size_t)(M * N)) == 0;
      runs++;
      if (!ok) {
        failures++;
        printf("FAIL case %u op=%u isa=%s M=%lld K=%lld N=%lld bits=%lld G=%lld rc=%d\n", c, op, names[i],
               (long long)M, (long long)K, (long long)N, (long long)bits, (long long)G, rc);
      }
    }
    free(x), free(w0), free(w1), free(sc), free(zeros), free(bias), free(want), free(y);
  }
  printf("%d runs, %d failures\n", runs, failures);
  return failures ? 1 : 0;
}
