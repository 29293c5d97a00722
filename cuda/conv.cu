// cuda/conv.cu: placeholder, not written yet.
#include "cuda.cuh"
namespace MSD_CUDA_NS {
#define TODO(op) msd_fatal(__FILE__, __LINE__, "cuda: %s not written yet", op)
void cu_conv2d_forward(float *, const float *, const float *, const float *, int, int, int, int, int, int) { TODO("conv2d_forward"); }
void cu_conv2d_backward(float *, float *, float *, const float *, const float *, const float *, int, int, int, int, int, int) { TODO("conv2d_backward"); }
}
