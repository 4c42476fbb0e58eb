// DeformableConv2D kernels: the geometry, the bilinear sampling helper shared by
// the CPU and CUDA kernels, and the GPU launchers the op kernel calls.
//
// Semantics (NHWC input, Keras kernel layout (kh, kw, C/groups, F), interleaved
// (dy, dx) offsets, optional DCNv2 mask) follow the project's deformable-conv note.
// This header includes no TensorFlow header so that nvcc compiles the .cu.cc file
// with plain CUDA.

#ifndef E2E_TF_CUSTOM_OPS_DEFORMABLE_CONV2D_KERNELS_H_
#define E2E_TF_CUSTOM_OPS_DEFORMABLE_CONV2D_KERNELS_H_

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define E2E_TF_HOST_DEVICE __host__ __device__
#define E2E_TF_ALWAYS_INLINE inline
#else
#define E2E_TF_HOST_DEVICE
// The per-sample helpers sit in the CPU kernels' innermost loops, where GCC does not
// always inline them on its own.
#define E2E_TF_ALWAYS_INLINE inline __attribute__((always_inline))
#endif

namespace e2e_tf {

// Sizes of one DeformableConv2D problem. Rows of the column buffer are output
// pixels r = (n * out_height + oy) * out_width + ox; its columns are ordered
// (group, tap, channel-in-group) so that group g's block is the (taps * C/groups)
// x (F/groups) slice of the Keras kernel reshaped to (kh * kw * C/groups, F).
struct DeformableConv2DGeometry {
  int64_t batch = 0;
  int64_t height = 0;
  int64_t width = 0;
  int64_t channels = 0;
  int64_t filters = 0;
  int64_t out_height = 0;
  int64_t out_width = 0;
  int kernel_h = 1;
  int kernel_w = 1;
  int stride_h = 1;
  int stride_w = 1;
  int pad_top = 0;
  int pad_left = 0;
  int dilation_h = 1;
  int dilation_w = 1;
  int groups = 1;
  int offset_groups = 1;
  bool use_mask = false;

  E2E_TF_HOST_DEVICE int64_t taps() const { return int64_t{kernel_h} * kernel_w; }
  E2E_TF_HOST_DEVICE int64_t channels_per_group() const { return channels / groups; }
  E2E_TF_HOST_DEVICE int64_t channels_per_offset_group() const {
    return channels / offset_groups;
  }
  E2E_TF_HOST_DEVICE int64_t filters_per_group() const { return filters / groups; }
  E2E_TF_HOST_DEVICE int64_t out_pixels() const { return out_height * out_width; }
  E2E_TF_HOST_DEVICE int64_t rows() const { return batch * out_pixels(); }
  // Width of the column buffer: kh * kw * C.
  E2E_TF_HOST_DEVICE int64_t col_width() const { return taps() * channels; }
  // Width of one group's block of columns: kh * kw * C / groups.
  E2E_TF_HOST_DEVICE int64_t group_col_width() const { return taps() * channels_per_group(); }
  // Column of channel c at tap t.
  E2E_TF_HOST_DEVICE int64_t column(int64_t tap, int64_t c) const {
    const int64_t cg = channels_per_group();
    const int64_t g = c / cg;
    return g * group_col_width() + tap * cg + (c - g * cg);
  }
  // Element of (dy, dx) of output row `row`, tap `tap`, offset group `og` in the
  // (N, Ho, Wo, 2 * offset_groups * taps) offsets (and their gradient).
  E2E_TF_HOST_DEVICE int64_t offset_index(int64_t row, int64_t tap, int64_t og) const {
    return row * 2 * offset_groups * taps() + og * 2 * taps() + 2 * tap;
  }
  // Element of the same sample in the (N, Ho, Wo, offset_groups * taps) mask.
  E2E_TF_HOST_DEVICE int64_t mask_index(int64_t row, int64_t tap, int64_t og) const {
    return (row * offset_groups + og) * taps() + tap;
  }
};

// Bilinear sample of one (row, tap, offset group): the element offsets of the four
// corner pixels (channel 0; -1 for corners outside the image) and their weights.
// Corners are ordered (y0, x0), (y0, x0 + 1), (y0 + 1, x0), (y0 + 1, x0 + 1).
template <typename A>
struct BilinearSample {
  int64_t index[4];
  A weight[4];
  A ly;  // y - floor(y)
  A lx;  // x - floor(x)
};

// Computes the corners of sampling point (y, x) of image `n`. Returns false (and
// leaves `s` untouched) when the point touches no pixel: outside [-1, H) x [-1, W),
// or not finite (NaN fails every comparison), so huge offsets never reach the
// integer conversion. Inside, out-of-range corners get index -1; at y = -1 the
// value is 0 but the right-hand derivative (the row-0 pixels) survives, as the
// note's convention asks.
template <typename A>
E2E_TF_HOST_DEVICE E2E_TF_ALWAYS_INLINE bool BilinearCorners(A y, A x, int64_t n,
                                                             int64_t height, int64_t width,
                                                             int64_t channels,
                                                             BilinearSample<A>* s) {
  if (!(y >= A(-1) && y < A(height) && x >= A(-1) && x < A(width))) return false;
  using std::floor;  // float and double overloads on the host and in CUDA device code
  const A fy = floor(y);
  const A fx = floor(x);
  const int64_t y0 = static_cast<int64_t>(fy);
  const int64_t x0 = static_cast<int64_t>(fx);
  s->ly = y - fy;
  s->lx = x - fx;
  const A hy = A(1) - s->ly;
  const A hx = A(1) - s->lx;
  const bool top = y0 >= 0;
  const bool bottom = y0 + 1 < height;
  const bool left = x0 >= 0;
  const bool right = x0 + 1 < width;
  const int64_t base = ((n * height + y0) * width + x0) * channels;
  s->index[0] = (top && left) ? base : -1;
  s->index[1] = (top && right) ? base + channels : -1;
  s->index[2] = (bottom && left) ? base + width * channels : -1;
  s->index[3] = (bottom && right) ? base + (width + 1) * channels : -1;
  s->weight[0] = hy * hx;
  s->weight[1] = hy * s->lx;
  s->weight[2] = s->ly * hx;
  s->weight[3] = s->ly * s->lx;
  return true;
}

// Sampling point of output pixel (oy, ox), tap (i, j) before the offset is added.
template <typename A>
E2E_TF_HOST_DEVICE inline A BaseY(const DeformableConv2DGeometry& g, int64_t oy, int i) {
  return A(oy * g.stride_h - g.pad_top + int64_t{i} * g.dilation_h);
}
template <typename A>
E2E_TF_HOST_DEVICE inline A BaseX(const DeformableConv2DGeometry& g, int64_t ox, int j) {
  return A(ox * g.stride_w - g.pad_left + int64_t{j} * g.dilation_w);
}

// Output pixel (n, oy, ox) of row `row` of the column buffer.
struct OutputPixel {
  int64_t n;
  int64_t oy;
  int64_t ox;
};

E2E_TF_HOST_DEVICE E2E_TF_ALWAYS_INLINE OutputPixel PixelOf(const DeformableConv2DGeometry& g,
                                                          int64_t row) {
  const int64_t n = row / g.out_pixels();
  const int64_t pixel = row - n * g.out_pixels();
  const int64_t oy = pixel / g.out_width;
  return {n, oy, pixel - oy * g.out_width};
}

// Corners of the deformed sampling point of output row `row` (at pixel `p`), tap
// (i, j) and offset group `og`; false when it touches no pixel (see BilinearCorners).
template <typename A>
E2E_TF_HOST_DEVICE E2E_TF_ALWAYS_INLINE bool SampleTap(const DeformableConv2DGeometry& g,
                                                       const A* offsets, int64_t row,
                                                       const OutputPixel& p, int i, int j,
                                                       int64_t og, BilinearSample<A>* s) {
  const A* d = offsets + g.offset_index(row, int64_t{i} * g.kernel_w + j, og);
  return BilinearCorners<A>(BaseY<A>(g, p.oy, i) + d[0], BaseX<A>(g, p.ox, j) + d[1], p.n,
                            g.height, g.width, g.channels, s);
}

// SampleTap for tap `tap` = i * kernel_w + j, decoding the row and tap itself.
template <typename A>
E2E_TF_HOST_DEVICE E2E_TF_ALWAYS_INLINE bool SampleAt(const DeformableConv2DGeometry& g,
                                                      const A* offsets, int64_t row,
                                                      int64_t tap, int64_t og,
                                                      BilinearSample<A>* s) {
  const int i = static_cast<int>(tap / g.kernel_w);
  const int j = static_cast<int>(tap - int64_t{i} * g.kernel_w);
  return SampleTap(g, offsets, row, PixelOf(g, row), i, j, og, s);
}

// The sample's modulation: 1 without a mask (DCNv1).
template <typename A>
E2E_TF_HOST_DEVICE E2E_TF_ALWAYS_INLINE A MaskAt(const DeformableConv2DGeometry& g,
                                                 const A* mask, int64_t row, int64_t tap,
                                                 int64_t og) {
  return mask == nullptr ? A(1) : mask[g.mask_index(row, tap, og)];
}

// Gradients of one sample w.r.t. (dy, dx) and the mask, given the dot products
// s_k = sum_c grad_col[c] * corner_k[c] over the offset group's channels. This is
// autodiff of (1-ly)(1-lx)v00 + (1-ly)lx v01 + ly(1-lx)v10 + ly lx v11 with
// floor() constant: the right-hand derivative at integer coordinates.
template <typename A>
E2E_TF_HOST_DEVICE inline void CoordinateGradients(const BilinearSample<A>& s, const A dots[4],
                                                   A mask, A* grad_dy, A* grad_dx,
                                                   A* grad_mask) {
  const A hy = A(1) - s.ly;
  const A hx = A(1) - s.lx;
  *grad_dy = mask * (hx * (dots[2] - dots[0]) + s.lx * (dots[3] - dots[1]));
  *grad_dx = mask * (hy * (dots[1] - dots[0]) + s.ly * (dots[3] - dots[2]));
  *grad_mask = s.weight[0] * dots[0] + s.weight[1] * dots[1] + s.weight[2] * dots[2] +
               s.weight[3] * dots[3];
}

// Writes one sample's offset gradients and, with a mask, its mask gradient.
template <typename A>
E2E_TF_HOST_DEVICE E2E_TF_ALWAYS_INLINE void StoreCoordinateGradients(
    const DeformableConv2DGeometry& g, int64_t row, int64_t tap, int64_t og, A grad_dy,
    A grad_dx, A grad_m, A* grad_offsets, A* grad_mask) {
  A* go = grad_offsets + g.offset_index(row, tap, og);
  go[0] = grad_dy;
  go[1] = grad_dx;
  if (grad_mask != nullptr) grad_mask[g.mask_index(row, tap, og)] = grad_m;
}

#if GOOGLE_CUDA
// GPU entry points (deformable_conv2d_kernels.cu.cc). Pointers are device memory,
// `stream` is the op's cudaStream_t. `T` is float or double; half and bfloat16 are
// converted to float by the op kernel with the Cast launchers. Each returns an
// empty string on success, else the CUDA error text.
namespace gpu {

template <typename T>
const char* DeformableConv2DForward(void* stream, const DeformableConv2DGeometry& geo,
                                    const T* input, const T* offsets, const T* kernel,
                                    const T* mask, T* output, T* col_buffer,
                                    int64_t chunk_rows);

template <typename T>
const char* DeformableConv2DBackward(void* stream, const DeformableConv2DGeometry& geo,
                                     const T* input, const T* offsets, const T* kernel,
                                     const T* mask, const T* grad_output, T* grad_input,
                                     T* grad_offsets, T* grad_mask, T* grad_kernel,
                                     T* col_buffer, T* kernel_t_buffer, int64_t chunk_rows);

// 16-bit float <-> float conversions; `is_bfloat16` picks the format.
const char* CastHalfToFloat(void* stream, const uint16_t* in, float* out, int64_t n,
                            bool is_bfloat16);
const char* CastFloatToHalf(void* stream, const float* in, uint16_t* out, int64_t n,
                            bool is_bfloat16);

}  // namespace gpu
#endif  // GOOGLE_CUDA

}  // namespace e2e_tf

#endif  // E2E_TF_CUSTOM_OPS_DEFORMABLE_CONV2D_KERNELS_H_
