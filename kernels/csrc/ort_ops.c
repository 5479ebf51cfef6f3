/* onnxruntime custom-op glue: domain "ai.devicefit", ops Sparse24MatMul and LowBitMatMul.
 * Entry point: RegisterCustomOps (called by SessionOptions.register_custom_ops_library). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dfk.h"
#include "ort_abi.h"

#define DFK_DOMAIN "ai.devicefit"

typedef struct {
  const OrtApi *api;
  const dfk_isa *isa;
  int op; /* 0 = Sparse24MatMul, 1 = LowBitMatMul */
  int64_t bits, group_size;
} dfk_kernel;

#define ORT(api, name) ((dfk_##name##_t)dfk_ort_fn((api), DFK_IDX_##name))

static OrtStatus *fail(const OrtApi *api, const char *fmt, const char *a, long long b, long long c) {
  char msg[512];
  snprintf(msg, sizeof msg, fmt, a, b, c);
  return ORT(api, CreateStatus)(DFK_ORT_INVALID_ARGUMENT, msg);
}

/* ---- schema callbacks ---- */
static const char *name_s24(const dfk_OrtCustomOp *op) { (void)op; return "Sparse24MatMul"; }
static const char *name_lowbit(const dfk_OrtCustomOp *op) { (void)op; return "LowBitMatMul"; }
static const char *provider(const dfk_OrtCustomOp *op) { (void)op; return NULL; /* CPU */ }
static size_t s24_in_count(const dfk_OrtCustomOp *op) { (void)op; return 5; }
static size_t lowbit_in_count(const dfk_OrtCustomOp *op) { (void)op; return 5; }
static int s24_in_type(const dfk_OrtCustomOp *op, size_t i) {
  (void)op; /* X, values, index, scales, bias */
  static const int t[5] = {DFK_T_FLOAT, DFK_T_INT8, DFK_T_UINT8, DFK_T_FLOAT, DFK_T_FLOAT};
  return i < 5 ? t[i] : DFK_T_UNDEFINED;
}
static int lowbit_in_type(const dfk_OrtCustomOp *op, size_t i) {
  (void)op; /* X, packed, scales, zero_points, bias */
  static const int t[5] = {DFK_T_FLOAT, DFK_T_UINT8, DFK_T_FLOAT, DFK_T_UINT8, DFK_T_FLOAT};
  return i < 5 ? t[i] : DFK_T_UNDEFINED;
}
static int s24_in_char(const dfk_OrtCustomOp *op, size_t i) { (void)op; return i >= 4 ? DFK_IO_OPTIONAL : DFK_IO_REQUIRED; }
static int lowbit_in_char(const dfk_OrtCustomOp *op, size_t i) { (void)op; return i >= 3 ? DFK_IO_OPTIONAL : DFK_IO_REQUIRED; }
static size_t out_count(const dfk_OrtCustomOp *op) { (void)op; return 1; }
static int out_type(const dfk_OrtCustomOp *op, size_t i) { (void)op, (void)i; return DFK_T_FLOAT; }
static int out_char(const dfk_OrtCustomOp *op, size_t i) { (void)op, (void)i; return DFK_IO_REQUIRED; }
static int mem_type(const dfk_OrtCustomOp *op, size_t i) { (void)op, (void)i; return 0; /* OrtMemTypeDefault */ }
static int variadic_min(const dfk_OrtCustomOp *op) { (void)op; return 1; }
static int variadic_homog(const dfk_OrtCustomOp *op) { (void)op; return 1; }

/* ---- kernels ---- */
static OrtStatus *create(const OrtApi *api, const OrtKernelInfo *info, int opk, void **out) {
  const char *err = "unknown";
  const dfk_isa *isa = dfk_isa_select(NULL, &err);
  if (!isa) return fail(api, "devicefit kernels: %s", err, 0, 0);
  dfk_kernel *k = calloc(1, sizeof *k);
  if (!k) return ORT(api, CreateStatus)(DFK_ORT_FAIL, "devicefit kernels: out of memory");
  k->api = api, k->isa = isa, k->op = opk;
  if (opk == 1) {
    OrtStatus *st = ORT(api, KernelInfoGetAttribute_int64)(info, "bits", &k->bits);
    if (!st) st = ORT(api, KernelInfoGetAttribute_int64)(info, "group_size", &k->group_size);
    if (st) {
      free(k);
      return st;
    }
    if ((k->bits != 2 && k->bits != 3) || k->group_size < 32 || k->group_size > 256 || k->group_size % 32) {
      long long b = k->bits, g = k->group_size;
      free(k);
      return fail(api, "LowBitMatMul%s: bits must be 2 or 3 and group_size 32..256 in steps of 32, got bits=%lld "
                  "group_size=%lld", "", b, g);
    }
  }
  *out = k;
  return NULL;
}
static OrtStatus *create_s24(const dfk_OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info, void **out) {
  (void)op;
  return create(api, info, 0, out);
}
static OrtStatus *create_lowbit(const dfk_OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info,
                                void **out) {
  (void)op;
  return create(api, info, 1, out);
}
static void destroy(void *k) { free(k); }

typedef struct {
  const OrtValue *v;
  void *data;
  int64_t dims[8];
  size_t nd;
} tensor;

static OrtStatus *get_input(const OrtApi *api, OrtKernelContext *ctx, size_t count, size_t i, tensor *t) {
  memset(t, 0, sizeof *t);
  if (i >= count) return NULL;
  OrtStatus *st = ORT(api, KernelContext_GetInput)(ctx, i, &t->v);
  if (st || !t->v) return st;
  OrtTensorTypeAndShapeInfo *info = NULL;
  if ((st = ORT(api, GetTensorTypeAndShape)(t->v, &info))) return st;
  st = ORT(api, GetDimensionsCount)(info, &t->nd);
  if (!st && t->nd > 8) st = ORT(api, CreateStatus)(DFK_ORT_INVALID_ARGUMENT, "devicefit kernels: rank > 8");
  if (!st) st = ORT(api, GetDimensions)(info, t->dims, t->nd);
  ORT(api, ReleaseTensorTypeAndShapeInfo)(info);
  if (!st) st = ORT(api, GetTensorMutableData)((OrtValue *)t->v, &t->data);
  return st;
}

static OrtStatus *compute(void *kp, OrtKernelContext *ctx) {
  dfk_kernel *k = kp;
  const OrtApi *api = k->api;
  const char *opname = k->op == 0 ? "Sparse24MatMul" : "LowBitMatMul";
  size_t count = 0;
  OrtStatus *st = ORT(api, KernelContext_GetInputCount)(ctx, &count);
  tensor in[5];
  for (size_t i = 0; i < 5 && !st; i++) st = get_input(api, ctx, count, i, &in[i]);
  if (st) return st;
  tensor *x = &in[0], *w = &in[1];
  if (!x->v || x->nd < 1) return fail(api, "%s: X must have rank >= 1 (got %lld)", opname, (long long)x->nd, 0);
  if (w->nd != 2) return fail(api, "%s: weight tensor must be 2-D (got rank %lld)", opname, (long long)w->nd, 0);
  const int64_t K = x->dims[x->nd - 1], N = w->dims[0];
  int64_t M = 1;
  for (size_t i = 0; i + 1 < x->nd; i++) M *= x->dims[i];
  int64_t ydims[8];
  memcpy(ydims, x->dims, sizeof(int64_t) * x->nd);
  ydims[x->nd - 1] = N;
  const float *bias = NULL;
  tensor *b = &in[4];
  if (b->v) {
    if (b->nd != 1 || b->dims[0] != N) return fail(api, "%s: bias must have shape [N=%lld]", opname, N, 0) ;
    bias = b->data;
  }
  int rc;
  OrtValue *yv = NULL;
  void *ydata = NULL;
  if (k->op == 0) {
    tensor *ix = &in[2], *sc = &in[3];
    const int64_t Kp = w->dims[1] * 2;
    if (Kp % 64 || K > Kp || K <= Kp - 64)
      return fail(api, "%s: values [N, Kp/2] need Kp a multiple of 64 with Kp-64 < K <= Kp; got Kp=%lld, K=%lld",
                  opname, Kp, K);
    if (ix->nd != 2 || ix->dims[0] != N || ix->dims[1] != Kp / 8)
      return fail(api, "%s: index must have shape [N, Kp/8] = [%lld, %lld]", opname, N, Kp / 8);
    if (sc->nd != 1 || sc->dims[0] != N) return fail(api, "%s: scales must have shape [N=%lld]", opname, N, 0);
    if ((st = ORT(api, KernelContext_GetOutput)(ctx, 0, ydims, x->nd, &yv))) return st;
    if ((st = ORT(api, GetTensorMutableData)(yv, &ydata))) return st;
    rc = dfk_sparse24_with(k->isa, M, K, Kp, N, x->data, w->data, ix->data, sc->data, bias, ydata);
  } else {
    tensor *sc = &in[2], *zp = &in[3];
    const int64_t bits = k->bits, G = k->group_size;
    const int64_t Kp = w->dims[1] * 8 / bits;
    if (w->dims[1] * 8 % bits || Kp % 64 || Kp % G || K > Kp)
      return fail(api, "%s: packed [N, Kp*bits/8] gives Kp=%lld; need Kp a multiple of 64 and group_size, K=%lld <= Kp",
                  opname, Kp, K);
    if (sc->nd != 2 || sc->dims[0] != N || sc->dims[1] != Kp / G)
      return fail(api, "%s: scales must have shape [N, Kp/group_size] = [%lld, %lld]", opname, N, Kp / G);
    if (zp->v && (zp->nd != 2 || zp->dims[0] != N || zp->dims[1] != Kp / G))
      return fail(api, "%s: zero_points must have shape [N, Kp/group_size] = [%lld, %lld]", opname, N, Kp / G);
    if ((st = ORT(api, KernelContext_GetOutput)(ctx, 0, ydims, x->nd, &yv))) return st;
    if ((st = ORT(api, GetTensorMutableData)(yv, &ydata))) return st;
    rc = dfk_lowbit_with(k->isa, (int)bits, G, M, K, Kp, N, x->data, w->data, sc->data,
                         zp->v ? zp->data : NULL, bias, ydata);
  }
  if (rc == 2) return ORT(api, CreateStatus)(DFK_ORT_FAIL, "devicefit kernels: out of memory");
  if (rc) return fail(api, "%s: invalid arguments (code %lld)", opname, rc, 0);
  return NULL;
}

#define DFK_OP(NAME_FN, CREATE_FN, IN_COUNT, IN_TYPE, IN_CHAR)                                                    \
  {                                                                                                              \
    .version = DFK_ORT_API_VERSION, .GetName = NAME_FN, .GetExecutionProviderType = provider,                    \
    .GetInputType = IN_TYPE, .GetInputTypeCount = IN_COUNT, .GetOutputType = out_type,                          \
    .GetOutputTypeCount = out_count, .KernelDestroy = destroy, .GetInputCharacteristic = IN_CHAR,                \
    .GetOutputCharacteristic = out_char, .GetInputMemoryType = mem_type,                                         \
    .GetVariadicInputMinArity = variadic_min, .GetVariadicInputHomogeneity = variadic_homog,                     \
    .GetVariadicOutputMinArity = variadic_min, .GetVariadicOutputHomogeneity = variadic_homog,                   \
    .CreateKernelV2 = CREATE_FN, .KernelComputeV2 = compute,                                                     \
  }

static dfk_OrtCustomOp OPS[2] = {
    DFK_OP(name_s24, create_s24, s24_in_count, s24_in_type, s24_in_char),
    DFK_OP(name_lowbit, create_lowbit, lowbit_in_count, lowbit_in_type, lowbit_in_char),
};

DFK_EXPORT OrtStatus *RegisterCustomOps(OrtSessionOptions *options, const OrtApiBase *base) {
  const OrtApi *api = base->GetApi(DFK_ORT_API_VERSION);
  if (!api) {
    const OrtApi *v1 = base->GetApi(1);
    return v1 ? ORT(v1, CreateStatus)(DFK_ORT_FAIL, "devicefit kernels need onnxruntime >= 1.16 (C API version 16)")
              : NULL;
  }
  OrtCustomOpDomain *domain = NULL; /* lives as long as the process: sessions may outlive this call */
  OrtStatus *st = ORT(api, CreateCustomOpDomain)(DFK_DOMAIN, &domain);
  for (int i = 0; i < 2 && !st; i++) st = ORT(api, CustomOpDomain_Add)(domain, &OPS[i]);
  if (!st) st = ORT(api, AddCustomOpDomain)(options, domain);
  return st;
}
