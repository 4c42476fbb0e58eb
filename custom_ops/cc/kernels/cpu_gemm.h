// A packed, multi-threaded CPU matrix product for the DeformableConv2D kernels.
//
// Why not Eigen: custom ops must be compiled with exactly tf.sysconfig's flags,
// which do not enable AVX2/FMA, so Eigen's contraction in this library would run
// SSE2 code several times slower than the oneDNN convolution it is compared with.
// This GEMM selects an AVX-512 or AVX2+FMA micro-kernel at run time, whichever the CPU
// has (and a portable one otherwise), so the op's matrix products run at convolution
// speed.

#ifndef E2E_TF_CUSTOM_OPS_CPU_GEMM_H_
#define E2E_TF_CUSTOM_OPS_CPU_GEMM_H_

#include <cstdint>
#include <functional>

namespace e2e_tf {

// Runs work(begin, end) over [0, total) in parallel; cost_per_unit is in cycles.
using ParallelFor =
    std::function<void(int64_t total, int64_t cost_per_unit,
                       const std::function<void(int64_t, int64_t)>& work)>;

// A read-only matrix view: element (i, j) is data[i * row_stride + j * col_stride],
// so a transposed operand is the same memory with the strides swapped.
template <typename T>
struct MatrixView {
  const T* data;
  int64_t row_stride;
  int64_t col_stride;
};

// True when the CPU runs AVX2 and FMA: the build flags (tf.sysconfig's) enable
// neither, so the fast code paths are compiled with target attributes and chosen
// at run time.
bool CpuHasAvx2Fma();

// True when the CPU runs AVX-512F (chosen at run time in the same way).
bool CpuHasAvx512();

// C = A * B (or C += A * B when `accumulate`), A: (m, k), B: (k, n), C row-major
// with leading dimension ldc. Every element of C is summed in the same order
// whatever the number of threads.
template <typename T>
void Gemm(const ParallelFor& parallel_for, int64_t m, int64_t n, int64_t k,
          MatrixView<T> a, MatrixView<T> b, T* c, int64_t ldc, bool accumulate);

}  // namespace e2e_tf

#endif  // E2E_TF_CUSTOM_OPS_CPU_GEMM_H_
