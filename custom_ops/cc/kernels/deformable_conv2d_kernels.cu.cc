// DeformableConv2D CUDA kernels: deformable im2col, the coordinate (offset and
// mask) gradients, col2im (atomic scatter into the input gradient) and a tiled
// GEMM, launched on the op's stream. Plain CUDA with raw pointers: no TensorFlow or
// Eigen GPU header is compiled by nvcc, so the file builds with any nvcc whose host
// compiler accepts C++17, whatever CUDA version the TensorFlow wheel was built with.

#if GOOGLE_CUDA

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "deformable_conv2d_kernels.h"

namespace e2e_tf {
namespace gpu {
namespace {

constexpr int kThreads = 256;

inline int Blocks(int64_t n) {
  return static_cast<int>(std::min<int64_t>((n + kThreads - 1) / kThreads, int64_t{1} << 20));
}

#define E2E_TF_GRID_LOOP(i, n)                                                   \
  for (int64_t i = blockIdx.x * int64_t{blockDim.x} + threadIdx.x; i < (n);      \
       i += int64_t{blockDim.x} * gridDim.x)

inline const char* LastError() {
  const cudaError_t error = cudaGetLastError();
  return error == cudaSuccess ? "" : cudaGetErrorString(error);
}

// Entry e = (r * taps + tap) * C + c of the chunk starting at row0: channels
// innermost, so that neighbouring threads read neighbouring input channels.
struct ColumnEntry {
  int64_t row;  // output row (n, oy, ox)
  int64_t tap;
  int64_t c;    // input channel
  int64_t og;   // offset group of c
  int64_t col;  // element of the chunk's column buffer
};

__device__ inline ColumnEntry ColumnEntryAt(const DeformableConv2DGeometry& g, int64_t row0,
                                            int64_t e) {
  ColumnEntry x;
  x.c = e % g.channels;
  x.tap = (e / g.channels) % g.taps();
  const int64_t r = e / (g.channels * g.taps());
  x.row = row0 + r;
  x.og = x.c / g.channels_per_offset_group();
  x.col = r * g.col_width() + g.column(x.tap, x.c);
  return x;
}

// One thread per column entry (row, tap, channel).
template <typename T>
__global__ void Im2ColKernel(DeformableConv2DGeometry g, const T* input, const T* offsets,
                             const T* mask, int64_t row0, int64_t rows, T* col) {
  E2E_TF_GRID_LOOP(e, rows * g.col_width()) {
    const ColumnEntry x = ColumnEntryAt(g, row0, e);
    BilinearSample<T> s;
    T value = T(0);
    if (SampleAt(g, offsets, x.row, x.tap, x.og, &s)) {
      for (int k = 0; k < 4; ++k) {
        if (s.index[k] >= 0) value += s.weight[k] * input[s.index[k] + x.c];
      }
      value *= MaskAt(g, mask, x.row, x.tap, x.og);
    }
    col[x.col] = value;
  }
}

// One thread per (row, tap, offset group): reduces its channels into the offset
// and mask gradients (single writer, no atomics).
template <typename T>
__global__ void CoordinateGradKernel(DeformableConv2DGeometry g, const T* input,
                                     const T* offsets, const T* mask, const T* grad_col,
                                     int64_t row0, int64_t rows, T* grad_offsets,
                                     T* grad_mask) {
  const int64_t total = rows * g.taps() * g.offset_groups;
  const int64_t cog = g.channels_per_offset_group();
  E2E_TF_GRID_LOOP(e, total) {
    const int64_t og = e % g.offset_groups;
    const int64_t tap = (e / g.offset_groups) % g.taps();
    const int64_t r = e / (g.offset_groups * g.taps());
    const int64_t row = row0 + r;
    BilinearSample<T> s;
    T grad_dy = T(0), grad_dx = T(0), grad_m = T(0);
    if (SampleAt(g, offsets, row, tap, og, &s)) {
      T dots[4] = {T(0), T(0), T(0), T(0)};
      const T* gc_row = grad_col + r * g.col_width();
      for (int64_t c = og * cog; c < (og + 1) * cog; ++c) {
        const T gc = gc_row[g.column(tap, c)];
        for (int k = 0; k < 4; ++k) {
          if (s.index[k] >= 0) dots[k] += gc * input[s.index[k] + c];
        }
      }
      CoordinateGradients(s, dots, MaskAt(g, mask, row, tap, og), &grad_dy, &grad_dx, &grad_m);
    }
    StoreCoordinateGradients(g, row, tap, og, grad_dy, grad_dx, grad_m, grad_offsets, grad_mask);
  }
}

// One thread per column-gradient entry, scattering into up to four input pixels.
template <typename T>
__global__ void Col2ImKernel(DeformableConv2DGeometry g, const T* offsets, const T* mask,
                             const T* grad_col, int64_t row0, int64_t rows, T* grad_input) {
  E2E_TF_GRID_LOOP(e, rows * g.col_width()) {
    const ColumnEntry x = ColumnEntryAt(g, row0, e);
    BilinearSample<T> s;
    if (!SampleAt(g, offsets, x.row, x.tap, x.og, &s)) continue;
    const T gc = grad_col[x.col] * MaskAt(g, mask, x.row, x.tap, x.og);
    for (int k = 0; k < 4; ++k) {
      if (s.index[k] >= 0) atomicAdd(grad_input + s.index[k] + x.c, s.weight[k] * gc);
    }
  }
}

// C (+)= A * B with strided operands, 64 x 64 tiles, 4 x 4 outputs per thread.
constexpr int kTile = 64;
constexpr int kTileK = 16;

template <typename T>
__global__ void GemmKernel(int64_t m, int64_t n, int64_t k, const T* a, int64_t a_rs,
                           int64_t a_cs, const T* b, int64_t b_rs, int64_t b_cs, T* c,
                           int64_t ldc, bool accumulate) {
  __shared__ T tile_a[kTileK][kTile + 1];
  __shared__ T tile_b[kTileK][kTile + 1];
  const int tx = threadIdx.x % 16;
  const int ty = threadIdx.x / 16;
  const int64_t i0 = int64_t{blockIdx.x} * kTile;
  const int64_t j0 = int64_t{blockIdx.y} * kTile;
  T acc[4][4] = {};
  for (int64_t p0 = 0; p0 < k; p0 += kTileK) {
    for (int l = threadIdx.x; l < kTile * kTileK; l += blockDim.x) {
      const int ii = l % kTile;
      const int pp = l / kTile;
      const int64_t i = i0 + ii, j = j0 + ii, p = p0 + pp;
      tile_a[pp][ii] = (i < m && p < k) ? a[i * a_rs + p * a_cs] : T(0);
      tile_b[pp][ii] = (j < n && p < k) ? b[p * b_rs + j * b_cs] : T(0);
    }
    __syncthreads();
    for (int pp = 0; pp < kTileK; ++pp) {
      T av[4], bv[4];
      for (int q = 0; q < 4; ++q) {
        av[q] = tile_a[pp][ty + 16 * q];
        bv[q] = tile_b[pp][tx + 16 * q];
      }
      for (int qi = 0; qi < 4; ++qi) {
        for (int qj = 0; qj < 4; ++qj) acc[qi][qj] += av[qi] * bv[qj];
      }
    }
    __syncthreads();
  }
  for (int qi = 0; qi < 4; ++qi) {
    const int64_t i = i0 + ty + 16 * qi;
    if (i >= m) continue;
    for (int qj = 0; qj < 4; ++qj) {
      const int64_t j = j0 + tx + 16 * qj;
      if (j >= n) continue;
      T* out = c + i * ldc + j;
      *out = accumulate ? *out + acc[qi][qj] : acc[qi][qj];
    }
  }
}

template <typename T>
void Gemm(cudaStream_t stream, int64_t m, int64_t n, int64_t k, const T* a, int64_t a_rs,
          int64_t a_cs, const T* b, int64_t b_rs, int64_t b_cs, T* c, int64_t ldc,
          bool accumulate) {
  if (m <= 0 || n <= 0) return;
  const dim3 grid(static_cast<unsigned>((m + kTile - 1) / kTile),
                  static_cast<unsigned>((n + kTile - 1) / kTile));
  GemmKernel<T><<<grid, kThreads, 0, stream>>>(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, ldc,
                                               accumulate);
}

__global__ void HalfToFloatKernel(const uint16_t* in, float* out, int64_t n, bool bf16) {
  E2E_TF_GRID_LOOP(i, n) {
    const uint32_t h = in[i];
    if (bf16) {
      out[i] = __uint_as_float(h << 16);
    } else {
      // IEEE binary16 -> binary32, subnormals and inf/NaN included.
      const uint32_t sign = (h & 0x8000u) << 16;
      const uint32_t exponent = (h >> 10) & 0x1fu;
      const uint32_t mantissa = h & 0x3ffu;
      float value;
      if (exponent == 0) {
        value = ldexpf(static_cast<float>(mantissa), -24);
      } else if (exponent == 31) {
        value = __uint_as_float(0x7f800000u | (mantissa << 13));
      } else {
        value = __uint_as_float(((exponent + 112) << 23) | (mantissa << 13));
      }
      out[i] = __uint_as_float(__float_as_uint(value) | sign);
    }
  }
}

__global__ void FloatToHalfKernel(const float* in, uint16_t* out, int64_t n, bool bf16) {
  E2E_TF_GRID_LOOP(i, n) {
    const float f = in[i];
    const uint32_t bits = __float_as_uint(f);
    if (bf16) {
      // Round to nearest even; NaN stays NaN.
      out[i] = (f != f) ? static_cast<uint16_t>((bits >> 16) | 0x40u)
                        : static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
    } else {
      const uint32_t sign = (bits >> 16) & 0x8000u;
      const float a = fabsf(f);
      uint32_t h;
      if (a != a) {
        h = 0x7e00u;
      } else if (a >= 65520.0f) {
        h = 0x7c00u;  // overflow to inf
      } else if (a < 6.103515625e-05f) {
        h = static_cast<uint32_t>(rintf(a * 16777216.0f));  // subnormal: multiples of 2^-24
      } else {
        const uint32_t ab = __float_as_uint(a);
        const uint32_t rounded = ab + 0xfffu + ((ab >> 13) & 1u);
        h = ((rounded >> 13) - (112u << 10)) & 0xffffu;
      }
      out[i] = static_cast<uint16_t>(h | sign);
    }
  }
}

template <typename T>
__global__ void TransposeKernel(const T* in, T* out, int64_t rows, int64_t cols) {
  E2E_TF_GRID_LOOP(e, rows * cols) {
    const int64_t r = e / cols;
    const int64_t c = e - r * cols;
    out[c * rows + r] = in[e];
  }
}

}  // namespace

template <typename T>
const char* DeformableConv2DForward(void* stream_handle, const DeformableConv2DGeometry& g,
                                    const T* input, const T* offsets, const T* kernel,
                                    const T* mask, T* output, T* col, int64_t chunk_rows) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  const int64_t kg = g.group_col_width();
  const int64_t fg = g.filters_per_group();
  if (kg == 0) {  // no input channels: the output is zero
    cudaMemsetAsync(output, 0, sizeof(T) * g.rows() * g.filters, stream);
    return LastError();
  }
  for (int64_t row0 = 0; row0 < g.rows(); row0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, g.rows() - row0);
    const int64_t entries = rows * g.col_width();
    Im2ColKernel<T><<<Blocks(entries), kThreads, 0, stream>>>(g, input, offsets, mask, row0, rows,
                                                              col);
    for (int grp = 0; grp < g.groups; ++grp) {
      Gemm<T>(stream, rows, fg, kg, col + grp * kg, g.col_width(), 1, kernel + grp * fg,
              g.filters, 1, output + row0 * g.filters + grp * fg, g.filters, false);
    }
  }
  return LastError();
}

template <typename T>
const char* DeformableConv2DBackward(void* stream_handle, const DeformableConv2DGeometry& g,
                                     const T* input, const T* offsets, const T* kernel,
                                     const T* mask, const T* grad_output, T* grad_input,
                                     T* grad_offsets, T* grad_mask, T* grad_kernel, T* col,
                                     T* kernel_t, int64_t chunk_rows) {
  cudaStream_t stream = static_cast<cudaStream_t>(stream_handle);
  const int64_t kg = g.group_col_width();
  const int64_t fg = g.filters_per_group();
  const int64_t input_size = g.batch * g.height * g.width * g.channels;
  if (input_size > 0) cudaMemsetAsync(grad_input, 0, sizeof(T) * input_size, stream);
  if (kg * g.filters > 0) cudaMemsetAsync(grad_kernel, 0, sizeof(T) * kg * g.filters, stream);
  // The column-gradient product reads the kernel transposed: (F, kg).
  if (kg * g.filters > 0) {
    TransposeKernel<T><<<Blocks(kg * g.filters), kThreads, 0, stream>>>(kernel, kernel_t, kg,
                                                                         g.filters);
  }
  for (int64_t row0 = 0; row0 < g.rows() && kg > 0; row0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, g.rows() - row0);
    const T* go = grad_output + row0 * g.filters;
    const int64_t entries = rows * g.col_width();
    Im2ColKernel<T><<<Blocks(entries), kThreads, 0, stream>>>(g, input, offsets, mask, row0,
                                                              rows, col);
    for (int grp = 0; grp < g.groups; ++grp) {
      Gemm<T>(stream, kg, fg, rows, col + grp * kg, 1, g.col_width(), go + grp * fg, g.filters, 1,
              grad_kernel + grp * fg, g.filters, true);
    }
    for (int grp = 0; grp < g.groups; ++grp) {
      Gemm<T>(stream, rows, kg, fg, go + grp * fg, g.filters, 1, kernel_t + grp * fg * kg, kg, 1,
              col + grp * kg, g.col_width(), false);
    }
    const int64_t samples = rows * g.taps() * g.offset_groups;
    CoordinateGradKernel<T><<<Blocks(samples), kThreads, 0, stream>>>(
        g, input, offsets, mask, col, row0, rows, grad_offsets, grad_mask);
    Col2ImKernel<T><<<Blocks(entries), kThreads, 0, stream>>>(g, offsets, mask, col, row0, rows,
                                                              grad_input);
  }
  if (kg == 0) {
    // No channels: nothing is sampled, so the offset and mask gradients are zero.
    const int64_t offset_size = g.rows() * 2 * g.offset_groups * g.taps();
    if (offset_size > 0) cudaMemsetAsync(grad_offsets, 0, sizeof(T) * offset_size, stream);
    if (grad_mask != nullptr && offset_size > 0) {
      cudaMemsetAsync(grad_mask, 0, sizeof(T) * offset_size / 2, stream);
    }
  }
  return LastError();
}

namespace {

// Runs an elementwise conversion kernel over n elements.
template <typename In, typename Out>
const char* LaunchCast(void (*kernel)(const In*, Out*, int64_t, bool), void* stream,
                       const In* in, Out* out, int64_t n, bool is_bfloat16) {
  if (n > 0) {
    kernel<<<Blocks(n), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(in, out, n,
                                                                          is_bfloat16);
  }
  return LastError();
}

}  // namespace

const char* CastHalfToFloat(void* stream, const uint16_t* in, float* out, int64_t n,
                            bool is_bfloat16) {
  return LaunchCast(HalfToFloatKernel, stream, in, out, n, is_bfloat16);
}

const char* CastFloatToHalf(void* stream, const float* in, uint16_t* out, int64_t n,
                            bool is_bfloat16) {
  return LaunchCast(FloatToHalfKernel, stream, in, out, n, is_bfloat16);
}

#define E2E_TF_INSTANTIATE(T)                                                               \
  template const char* DeformableConv2DForward<T>(void*, const DeformableConv2DGeometry&,    \
                                                  const T*, const T*, const T*, const T*,    \
                                                  T*, T*, int64_t);                          \
  template const char* DeformableConv2DBackward<T>(void*, const DeformableConv2DGeometry&,   \
                                                   const T*, const T*, const T*, const T*,   \
                                                   const T*, T*, T*, T*, T*, T*, T*,         \
                                                   int64_t);

E2E_TF_INSTANTIATE(float)
E2E_TF_INSTANTIATE(double)
#undef E2E_TF_INSTANTIATE

}  // namespace gpu
}  // namespace e2e_tf

#endif  // GOOGLE_CUDA
