/* The small part of onnxruntime's C ABI that devicefit's custom-op library uses, declared here.
 *
 * No package ships onnxruntime's C headers, so this file declares what the library needs itself:
 *   - OrtApiBase (two function pointers),
 *   - the OrtApi function table, used as an array of function pointers: the table is append-only
 *     and versioned, so an entry's index never changes once released (all indices used here are
 *     in the version-1 part of the table),
 *   - OrtCustomOp, the op descriptor onnxruntime reads up to the fields of the `version` it is given.
 *
 * DFK_ORT_API_VERSION = 16 (onnxruntime >= 1.16) is the first version whose OrtCustomOp has
 * CreateKernelV2 / KernelComputeV2, which return an OrtStatus (so a kernel can report bad shapes).
 */
#ifndef DFK_ORT_ABI_H
#define DFK_ORT_ABI_H

#include <stddef.h>
#include <stdint.h>

#define DFK_ORT_API_VERSION 16u

typedef struct OrtStatus OrtStatus;
typedef struct OrtApi OrtApi; /* opaque: used through dfk_ort_fn() below */
typedef struct OrtValue OrtValue;
typedef struct OrtSessionOptions OrtSessionOptions;
typedef struct OrtCustomOpDomain OrtCustomOpDomain;
typedef struct OrtKernelInfo OrtKernelInfo;
typedef struct OrtKernelContext OrtKernelContext;
typedef struct OrtTensorTypeAndShapeInfo OrtTensorTypeAndShapeInfo;
typedef struct OrtShapeInferContext OrtShapeInferContext;

/* ONNX TensorProto data types (the subset used) */
enum { DFK_T_UNDEFINED = 0, DFK_T_FLOAT = 1, DFK_T_UINT8 = 2, DFK_T_INT8 = 3 };
/* OrtErrorCode (subset) */
enum { DFK_ORT_OK = 0, DFK_ORT_FAIL = 1, DFK_ORT_INVALID_ARGUMENT = 2 };
/* OrtCustomOpInputOutputCharacteristic */
enum { DFK_IO_REQUIRED = 0, DFK_IO_OPTIONAL = 1 };

typedef struct OrtApiBase {
  const OrtApi *(*GetApi)(uint32_t version);
  const char *(*GetVersionString)(void);
} OrtApiBase;

/* OrtApi entries used, by their index in the function table (version-1 section, frozen). */
enum {
  DFK_IDX_CreateStatus = 0,
  DFK_IDX_CreateCustomOpDomain = 26,
  DFK_IDX_CustomOpDomain_Add = 27,
  DFK_IDX_AddCustomOpDomain = 28,
  DFK_IDX_GetTensorMutableData = 51,
  DFK_IDX_GetTensorElementType = 60,
  DFK_IDX_GetDimensionsCount = 61,
  DFK_IDX_GetDimensions = 62,
  DFK_IDX_GetTensorTypeAndShape = 65,
  DFK_IDX_KernelInfoGetAttribute_int64 = 86,
  DFK_IDX_KernelContext_GetInputCount = 88,
  DFK_IDX_KernelContext_GetInput = 90,
  DFK_IDX_KernelContext_GetOutput = 91,
  DFK_IDX_ReleaseTensorTypeAndShapeInfo = 99,
};

typedef void (*dfk_ort_generic_fn)(void);
/* entry `idx` of the OrtApi table (a C function pointer may be converted to another function pointer
 * type and back; callers convert to the entry's real type before calling) */
static inline dfk_ort_generic_fn dfk_ort_fn(const OrtApi *api, int idx) {
  return ((const dfk_ort_generic_fn *)(const void *)api)[idx];
}

typedef OrtStatus *(*dfk_CreateStatus_t)(int code, const char *msg);
typedef OrtStatus *(*dfk_CreateCustomOpDomain_t)(const char *domain, OrtCustomOpDomain **out);
typedef OrtStatus *(*dfk_CustomOpDomain_Add_t)(OrtCustomOpDomain *domain, const void *op);
typedef OrtStatus *(*dfk_AddCustomOpDomain_t)(OrtSessionOptions *options, OrtCustomOpDomain *domain);
typedef OrtStatus *(*dfk_GetTensorMutableData_t)(OrtValue *value, void **out);
typedef OrtStatus *(*dfk_GetTensorElementType_t)(const OrtTensorTypeAndShapeInfo *info, int *out);
typedef OrtStatus *(*dfk_GetDimensionsCount_t)(const OrtTensorTypeAndShapeInfo *info, size_t *out);
typedef OrtStatus *(*dfk_GetDimensions_t)(const OrtTensorTypeAndShapeInfo *info, int64_t *dims, size_t n);
typedef OrtStatus *(*dfk_GetTensorTypeAndShape_t)(const OrtValue *value, OrtTensorTypeAndShapeInfo **out);
typedef OrtStatus *(*dfk_KernelInfoGetAttribute_int64_t)(const OrtKernelInfo *info, const char *name, int64_t *out);
typedef OrtStatus *(*dfk_KernelContext_GetInputCount_t)(const OrtKernelContext *ctx, size_t *out);
typedef OrtStatus *(*dfk_KernelContext_GetInput_t)(const OrtKernelContext *ctx, size_t index, const OrtValue **out);
typedef OrtStatus *(*dfk_KernelContext_GetOutput_t)(OrtKernelContext *ctx, size_t index, const int64_t *dims,
                                                      size_t n, OrtValue **out);
typedef void (*dfk_ReleaseTensorTypeAndShapeInfo_t)(OrtTensorTypeAndShapeInfo *info);

/* OrtCustomOp, field order as onnxruntime defines it; onnxruntime reads the fields introduced up to
 * `version` (8: characteristics, 13: memory type, 14: variadic, 16: V2 kernels, 17: shape inference and
 * op versions, 18+: in-place / alias maps). Fields past our version are left NULL. */
typedef struct dfk_OrtCustomOp {
  uint32_t version;
  void *(*CreateKernel)(const struct dfk_OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info);
  const char *(*GetName)(const struct dfk_OrtCustomOp *op);
  const char *(*GetExecutionProviderType)(const struct dfk_OrtCustomOp *op);
  int (*GetInputType)(const struct dfk_OrtCustomOp *op, size_t index);
  size_t (*GetInputTypeCount)(const struct dfk_OrtCustomOp *op);
  int (*GetOutputType)(const struct dfk_OrtCustomOp *op, size_t index);
  size_t (*GetOutputTypeCount)(const struct dfk_OrtCustomOp *op);
  void (*KernelCompute)(void *kernel, OrtKernelContext *ctx);
  void (*KernelDestroy)(void *kernel);
  int (*GetInputCharacteristic)(const struct dfk_OrtCustomOp *op, size_t index);
  int (*GetOutputCharacteristic)(const struct dfk_OrtCustomOp *op, size_t index);
  int (*GetInputMemoryType)(const struct dfk_OrtCustomOp *op, size_t index);
  int (*GetVariadicInputMinArity)(const struct dfk_OrtCustomOp *op);
  int (*GetVariadicInputHomogeneity)(const struct dfk_OrtCustomOp *op);
  int (*GetVariadicOutputMinArity)(const struct dfk_OrtCustomOp *op);
  int (*GetVariadicOutputHomogeneity)(const struct dfk_OrtCustomOp *op);
  OrtStatus *(*CreateKernelV2)(const struct dfk_OrtCustomOp *op, const OrtApi *api, const OrtKernelInfo *info,
                               void **kernel);
  OrtStatus *(*KernelComputeV2)(void *kernel, OrtKernelContext *ctx);
  OrtStatus *(*InferOutputShapeFn)(const struct dfk_OrtCustomOp *op, OrtShapeInferContext *ctx);
  int (*GetStartVersion)(const struct dfk_OrtCustomOp *op);
  int (*GetEndVersion)(const struct dfk_OrtCustomOp *op);
  size_t (*GetMayInplace)(int **input_index, int **output_index);
  void (*ReleaseMayInplace)(int *input_index, int *output_index);
  size_t (*GetAliasMap)(int **input_index, int **output_index);
  void (*ReleaseAliasMap)(int *input_index, int *output_index);
} dfk_OrtCustomOp;

#endif
