// cuda/linear.cu: placeholder, not written yet.
#include "cuda.cuh"
namespace MSD_CUDA_NS {
#define TODO(op) msd_fatal(__FILE__, __LINE__, "cuda: %s not written yet", op)
void cu_linear_forward(float *, const float *, const float *, const float *, int, int, int) { TODO("linear_forward"); }
void cu_linear_backward(float *, float *, float *, const float *, const float *, const float *, int, int, int) { TODO("linear_backward"); }
}
