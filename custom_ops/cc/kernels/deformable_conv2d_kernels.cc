// DeformableConv2D op kernels: the CPU implementation and the device-generic
// OpKernel classes (the CUDA kernels live in deformable_conv2d_kernels.cu.cc).
//
// Structure (as in a convolution by im2col): for a chunk of output pixels, sample
// the deformed taps into a (rows, kh*kw*C) column buffer, then one GEMM per group.
// Backward computes the column gradient (a GEMM), then one sampling pass reads each
// sample's corners once to recompute its columns, reduce the column gradient into
// the offset and mask gradients and scatter it into the input gradient (when a
// chunk holds an image per thread; else the scatter is a second pass through a
// sampling plan), then accumulates the kernel gradient (a GEMM on the columns).
// The sampling loops run as AVX2+FMA code where the CPU has it. Every loop is
// parallel on the CPU device's thread pool and each output element has a single
// writer: no atomics, and results are the same on every run. They depend on the
// thread count only through the chunk size (CpuChunkBudget), which groups the
// kernel gradient's sum by chunk; the other outputs do not depend on it.

#define EIGEN_USE_THREADS

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cpu_gemm.h"
#include "deformable_conv2d_kernels.h"
#include "tensorflow/core/framework/op_kernel.h"
#include "tensorflow/core/framework/tensor.h"
#include "tensorflow/core/util/work_sharder.h"
#include "unsupported/Eigen/CXX11/Tensor"

#if GOOGLE_CUDA
#include "xla/stream_executor/stream.h"
#endif

namespace e2e_tf {

using ::tensorflow::DataTypeToEnum;
using ::tensorflow::OpKernel;
using ::tensorflow::OpKernelConstruction;
using ::tensorflow::OpKernelContext;
using ::tensorflow::Tensor;
using ::tensorflow::TensorShape;

template <typename... Args>
absl::Status InvalidArgument(const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(args...));
}

struct CpuTag {};
struct GpuTag {};

namespace {

// Column buffers (plus, backward, the sampling plan) per chunk: bounded so that
// memory does not grow with the batch. On the CPU a chunk is small, so that its
// buffers stay in the cache from the sampling pass to the GEMM and the allocator
// hands back the same pages each call, yet at least kCpuMinChunkRows rows and an
// image per thread (up to kCpuMaxChunkBytes): a large kernel gradient is not
// re-accumulated every few rows, and the backward pass splits whole images between
// the threads (its fused path, see CpuBackward).
constexpr int64_t kCpuChunkBytes = int64_t{8} << 20;
constexpr int64_t kCpuMaxChunkBytes = int64_t{64} << 20;
constexpr int64_t kCpuMinChunkRows = 512;
constexpr int64_t kGpuChunkBytes = int64_t{512} << 20;

// The CPU budget of a chunk whose rows take `bytes_per_row`, on `threads` threads.
int64_t CpuChunkBudget(const DeformableConv2DGeometry& g, int threads, int64_t bytes_per_row) {
  const int64_t rows = std::max(kCpuMinChunkRows, threads * g.out_pixels());
  return std::max(kCpuChunkBytes, std::min(rows * bytes_per_row, kCpuMaxChunkBytes));
}

int CpuThreads(OpKernelContext* ctx) {
  return ctx->device()->tensorflow_cpu_worker_threads()->num_threads;
}

struct ConvAttrs {
  std::vector<int32_t> strides;
  std::vector<int32_t> pads;
  std::vector<int32_t> dilations;
  int groups = 1;
  int offset_groups = 1;
  bool use_mask = false;
  int64_t chunk_rows = 0;
};

absl::Status ReadAttrs(OpKernelConstruction* ctx, ConvAttrs* attrs) {
  TF_RETURN_IF_ERROR(ctx->GetAttr("strides", &attrs->strides));
  TF_RETURN_IF_ERROR(ctx->GetAttr("pads", &attrs->pads));
  TF_RETURN_IF_ERROR(ctx->GetAttr("dilations", &attrs->dilations));
  TF_RETURN_IF_ERROR(ctx->GetAttr("groups", &attrs->groups));
  TF_RETURN_IF_ERROR(ctx->GetAttr("offset_groups", &attrs->offset_groups));
  TF_RETURN_IF_ERROR(ctx->GetAttr("use_mask", &attrs->use_mask));
  TF_RETURN_IF_ERROR(ctx->GetAttr("chunk_rows", &attrs->chunk_rows));
  // The shape function has validated the attribute values already.
  return absl::OkStatus();
}

// Builds the geometry from the run-time shapes; the shape function may have seen
// unknown dimensions, so every relation the kernels rely on is checked again here.
absl::Status MakeGeometry(const ConvAttrs& a, const TensorShape& input,
                          const TensorShape& offsets, const TensorShape& kernel,
                          const TensorShape& mask, DeformableConv2DGeometry* g) {
  if (input.dims() != 4 || offsets.dims() != 4 || kernel.dims() != 4 ||
      (a.use_mask && mask.dims() != 4)) {
    return InvalidArgument("input ", input.DebugString(), ", offsets ", offsets.DebugString(),
                           ", kernel ", kernel.DebugString(), (a.use_mask ? " and mask " : ""),
                           (a.use_mask ? mask.DebugString() : ""), " must all have rank 4");
  }
  g->batch = input.dim_size(0);
  g->height = input.dim_size(1);
  g->width = input.dim_size(2);
  g->channels = input.dim_size(3);
  g->kernel_h = static_cast<int>(kernel.dim_size(0));
  g->kernel_w = static_cast<int>(kernel.dim_size(1));
  g->filters = kernel.dim_size(3);
  g->stride_h = a.strides[0];
  g->stride_w = a.strides[1];
  g->pad_top = a.pads[0];
  g->pad_left = a.pads[2];
  g->dilation_h = a.dilations[0];
  g->dilation_w = a.dilations[1];
  g->groups = a.groups;
  g->offset_groups = a.offset_groups;
  g->use_mask = a.use_mask;
  if (kernel.dim_size(2) * a.groups != g->channels || g->filters % a.groups != 0 ||
      g->channels % a.offset_groups != 0 || g->kernel_h < 1 || g->kernel_w < 1) {
    return InvalidArgument("input ", input.DebugString(), " and kernel ", kernel.DebugString(),
                           " do not fit groups=", a.groups, ", offset_groups=",
                           a.offset_groups);
  }
  const int64_t span_h = int64_t{a.dilations[0]} * (g->kernel_h - 1) + 1;
  const int64_t span_w = int64_t{a.dilations[1]} * (g->kernel_w - 1) + 1;
  const int64_t padded_h = g->height + a.pads[0] + a.pads[1];
  const int64_t padded_w = g->width + a.pads[2] + a.pads[3];
  if (padded_h < span_h || padded_w < span_w) {
    return InvalidArgument("input ", input.DebugString(), " plus padding is smaller than the ",
                           "dilated kernel ", span_h, "x", span_w);
  }
  g->out_height = (padded_h - span_h) / a.strides[0] + 1;
  g->out_width = (padded_w - span_w) / a.strides[1] + 1;
  const TensorShape want_offsets(
      {g->batch, g->out_height, g->out_width, 2 * a.offset_groups * g->taps()});
  if (offsets != want_offsets) {
    return InvalidArgument("offsets has shape ", offsets.DebugString(), " but input ",
                           input.DebugString(), " and kernel ", kernel.DebugString(),
                           " need ", want_offsets.DebugString());
  }
  if (a.use_mask) {
    const TensorShape want_mask(
        {g->batch, g->out_height, g->out_width, a.offset_groups * g->taps()});
    if (mask != want_mask) {
      return InvalidArgument("mask has shape ", mask.DebugString(), " but input ",
                             input.DebugString(), " and kernel ", kernel.DebugString(),
                             " need ", want_mask.DebugString());
    }
  }
  return absl::OkStatus();
}

// Output pixels per chunk: the attribute when set, else what fits the budget, cut
// at image boundaries (whole images, or equal parts of one) so that the passes that
// split a chunk by image between the threads get balanced work.
int64_t ChunkRows(const DeformableConv2DGeometry& g, int64_t attr_rows, int64_t bytes_per_row,
                  int64_t budget) {
  const int64_t rows = std::max<int64_t>(g.rows(), 1);
  if (attr_rows > 0) return std::min(attr_rows, rows);
  const int64_t fit = std::clamp<int64_t>(budget / std::max<int64_t>(bytes_per_row, 1), 1, rows);
  const int64_t image = std::max<int64_t>(g.out_pixels(), 1);
  if (fit >= image) return fit / image * image;
  return (image + (image + fit - 1) / fit - 1) / ((image + fit - 1) / fit);
}

// ---------------------------------------------------------------------------- CPU

ParallelFor CpuParallelFor(OpKernelContext* ctx) {
  const auto* threads = ctx->device()->tensorflow_cpu_worker_threads();
  return [threads](int64_t total, int64_t cost,
                   const std::function<void(int64_t, int64_t)>& work) {
    ::tensorflow::Shard(threads->num_threads, threads->workers, total, cost, work);
  };
}

// A maximal run of channels [begin, end) in one offset group and one group.
// Its columns are precomputed: the geometry's column() divides, and the sampling
// passes need them for every sample.
struct ChannelRun {
  int64_t offset_group;
  int64_t begin;
  int64_t end;
  int64_t column0;     // column of channel `begin` at tap 0
  int64_t tap_stride;  // columns between consecutive taps

  // g.column(tap, begin).
  int64_t Column(int64_t tap) const { return column0 + tap * tap_stride; }
};

std::vector<ChannelRun> ChannelRuns(const DeformableConv2DGeometry& g, int64_t begin,
                                    int64_t end) {
  std::vector<ChannelRun> runs;
  const int64_t cog = g.channels_per_offset_group();
  const int64_t cg = g.channels_per_group();
  while (begin < end) {
    const int64_t og = begin / cog;
    const int64_t stop = std::min({end, (og + 1) * cog, (begin / cg + 1) * cg});
    runs.push_back({og, begin, stop, g.column(0, begin), cg});
    begin = stop;
  }
  return runs;
}

// The channel runs of each offset group: the inner loops of every sampling pass.
std::vector<std::vector<ChannelRun>> OffsetGroupRuns(const DeformableConv2DGeometry& g) {
  std::vector<std::vector<ChannelRun>> runs(g.offset_groups);
  const int64_t cog = g.channels_per_offset_group();
  for (int og = 0; og < g.offset_groups; ++og) runs[og] = ChannelRuns(g, og * cog, (og + 1) * cog);
  return runs;
}

// The images that rows [row0, row0 + rows) of a chunk belong to.
struct ChunkImages {
  int64_t first;
  int64_t count;
};

ChunkImages ImagesOf(const DeformableConv2DGeometry& g, int64_t row0, int64_t rows) {
  const int64_t first = row0 / g.out_pixels();
  return {first, (row0 + rows - 1) / g.out_pixels() - first + 1};
}

// The chunk-relative rows [begin, end) of image n.
struct RowRange {
  int64_t begin;
  int64_t end;
};

RowRange ImageRows(const DeformableConv2DGeometry& g, int64_t row0, int64_t rows, int64_t n) {
  return {std::max(row0, n * g.out_pixels()) - row0,
          std::min(row0 + rows, (n + 1) * g.out_pixels()) - row0};
}

// Marks the lambdas of the sampling passes: they must inline into ParallelSampling's
// AVX2 wrapper to be compiled for it.
#define E2E_TF_SAMPLING_BODY __attribute__((always_inline))

// A sample's corners with the mask folded into the weights (backward scatter plan).
template <typename T>
struct PlanEntry {
  int64_t index[4];
  T weight[4];
};

// weight[k] = the sample's corner weight k times its mask value.
template <typename T>
E2E_TF_ALWAYS_INLINE void MaskedWeights(const BilinearSample<T>& s, T m, T weight[4]) {
  for (int k = 0; k < 4; ++k) weight[k] = s.weight[k] * m;
}

// corner_k[c] += weight[k] * gc[c] for c in [0, len): one sample's col2im.
template <typename T>
E2E_TF_ALWAYS_INLINE void ScatterAdd(const T* __restrict__ gc, const int64_t index[4],
                                     const T weight[4], int64_t c0, int64_t len,
                                     T* grad_input) {
  for (int k = 0; k < 4; ++k) {
    if (index[k] < 0) continue;
    T* __restrict__ dst = grad_input + index[k] + c0;
    const T w = weight[k];
    for (int64_t c = 0; c < len; ++c) dst[c] += w * gc[c];
  }
}

// dst[c] = sum_k w_k * corner_k[c] for c in [0, len): the deformed im2col entry.
template <typename T>
E2E_TF_ALWAYS_INLINE void Interpolate(const T* input, const int64_t index[4], const T weight[4],
                                      int64_t c0, int64_t len, T* __restrict__ dst) {
  const T zero = T(0);
  const T* __restrict__ p0 = index[0] >= 0 ? input + index[0] + c0 : nullptr;
  const T* __restrict__ p1 = index[1] >= 0 ? input + index[1] + c0 : nullptr;
  const T* __restrict__ p2 = index[2] >= 0 ? input + index[2] + c0 : nullptr;
  const T* __restrict__ p3 = index[3] >= 0 ? input + index[3] + c0 : nullptr;
  if (p0 && p1 && p2 && p3) {
    const T w0 = weight[0], w1 = weight[1], w2 = weight[2], w3 = weight[3];
    for (int64_t c = 0; c < len; ++c) dst[c] = w0 * p0[c] + w1 * p1[c] + w2 * p2[c] + w3 * p3[c];
    return;
  }
  std::fill(dst, dst + len, zero);
  const T* corners[4] = {p0, p1, p2, p3};
  for (int k = 0; k < 4; ++k) {
    const T* __restrict__ p = corners[k];
    if (p == nullptr) continue;
    const T w = weight[k];
    for (int64_t c = 0; c < len; ++c) dst[c] += w * p[c];
  }
}

// dots[k] += sum_c gc[c] * corner_k[c], in 8 fixed lanes: vectorised, yet summed in
// the same order on every run.
template <typename T>
E2E_TF_ALWAYS_INLINE void CornerDots(const T* __restrict__ gc, const T* input,
                                     const int64_t index[4], int64_t c0, int64_t len,
                                     T dots[4]) {
  constexpr int kLanes = 8;
  for (int k = 0; k < 4; ++k) {
    if (index[k] < 0) continue;
    const T* __restrict__ v = input + index[k] + c0;
    T lanes[kLanes] = {};
    int64_t c = 0;
    for (; c + kLanes <= len; c += kLanes) {
      for (int l = 0; l < kLanes; ++l) lanes[l] += gc[c + l] * v[c + l];
    }
    T dot = T(0);
    for (; c < len; ++c) dot += gc[c] * v[c];
    for (int l = 0; l < kLanes; ++l) dot += lanes[l];
    dots[k] += dot;
  }
}

// Eight lanes of T as one GCC vector (CornerDots' lanes): it compiles to the widest
// registers the enclosing function's target has (one AVX register of floats).
template <typename T>
struct EightLanes;
template <>
struct EightLanes<float> {
  typedef float Type __attribute__((vector_size(8 * sizeof(float))));
};
template <>
struct EightLanes<double> {
  typedef double Type __attribute__((vector_size(8 * sizeof(double))));
};

// One pass over channels [c0, c0 + len) of a sample whose four corners are all in
// the image: col[c] = sum_k weight[k] * corner_k[c] (as Interpolate), dots[k] +=
// sum_c gc[c] * corner_k[c] (in CornerDots' lanes and order) and, when `grad_input` is
// not null, corner_k[c] of it += weight[k] * gc[c] (as ScatterAdd). Each corner and
// the column gradient are read once for all three (the four corners of the input
// gradient are distinct pixels, so each of its elements is still added once).
template <typename T>
E2E_TF_ALWAYS_INLINE void InteriorSampleChannels(const T* __restrict__ gc, const T* input,
                                                 const int64_t index[4], const T weight[4],
                                                 int64_t c0, int64_t len,
                                                 T* __restrict__ col, T dots[4],
                                                 T* grad_input) {
  constexpr int kLanes = 8;
  using Lanes = typename EightLanes<T>::Type;
  const auto load = [](const T* p) E2E_TF_SAMPLING_BODY {
    Lanes v;
    std::memcpy(&v, p, sizeof(v));
    return v;
  };
  const T* __restrict__ v[4];
  for (int k = 0; k < 4; ++k) v[k] = input + index[k] + c0;
  const T w0 = weight[0], w1 = weight[1], w2 = weight[2], w3 = weight[3];
  Lanes acc[4] = {};
  int64_t c = 0;
  const auto sample = [&](auto scatter) E2E_TF_SAMPLING_BODY {
    T* dst[4];
    if constexpr (decltype(scatter)::value) {
      for (int k = 0; k < 4; ++k) dst[k] = grad_input + index[k] + c0;
    }
    for (; c + kLanes <= len; c += kLanes) {
      const Lanes g = load(gc + c);
      const Lanes a0 = load(v[0] + c), a1 = load(v[1] + c), a2 = load(v[2] + c),
                  a3 = load(v[3] + c);
      const Lanes out = w0 * a0 + w1 * a1 + w2 * a2 + w3 * a3;
      std::memcpy(col + c, &out, sizeof(out));
      acc[0] += g * a0;
      acc[1] += g * a1;
      acc[2] += g * a2;
      acc[3] += g * a3;
      if constexpr (decltype(scatter)::value) {
        for (int k = 0; k < 4; ++k) {
          const Lanes sum = load(dst[k] + c) + weight[k] * g;
          std::memcpy(dst[k] + c, &sum, sizeof(sum));
        }
      }
    }
    if constexpr (decltype(scatter)::value) {
      for (int64_t t = c; t < len; ++t) {
        for (int k = 0; k < 4; ++k) dst[k][t] += weight[k] * gc[t];
      }
    }
  };
  if (grad_input != nullptr) {
    sample(std::true_type{});
  } else {
    sample(std::false_type{});
  }
  T tail[4] = {T(0), T(0), T(0), T(0)};
  for (; c < len; ++c) {
    col[c] = w0 * v[0][c] + w1 * v[1][c] + w2 * v[2][c] + w3 * v[3][c];
    for (int k = 0; k < 4; ++k) tail[k] += gc[c] * v[k][c];
  }
  for (int k = 0; k < 4; ++k) {
    T dot = tail[k];
    for (int l = 0; l < kLanes; ++l) dot += acc[k][l];
    dots[k] += dot;
  }
}

#if defined(__x86_64__) || defined(__i386__)
// Runs body(begin, end) compiled for AVX2+FMA: the body and every helper it calls are
// inlined here, so its loops over channels use 256-bit vectors.
template <typename Body>
__attribute__((target("avx2,fma"))) void RunAvx2(const Body& body, int64_t begin, int64_t end) {
  body(begin, end);
}
#endif

// parallel_for for a sampling pass: its body (marked E2E_TF_SAMPLING_BODY) runs as
// AVX2+FMA code where the CPU has it, as the build flags' SSE2 code elsewhere.
template <typename Body>
void ParallelSampling(const ParallelFor& parallel_for, int64_t total, int64_t cost,
                      const Body& body) {
#if defined(__x86_64__) || defined(__i386__)
  if (CpuHasAvx2Fma()) {
    parallel_for(total, cost, [&body](int64_t begin, int64_t end) { RunAvx2(body, begin, end); });
    return;
  }
#endif
  parallel_for(total, cost, body);
}

// Calls visit(r, tap, og, s, m) for every sample (tap, offset group) of chunk rows
// [begin, end): `s` is its bilinear sample (null when it touches no pixel), `m` its
// mask value. Decodes each row once, not once per sample.
template <typename T, typename Visit>
E2E_TF_ALWAYS_INLINE void ForEachSample(const DeformableConv2DGeometry& g, const T* offsets,
                                        const T* mask, int64_t row0, int64_t begin,
                                        int64_t end, const Visit& visit) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t row = row0 + r;
    const OutputPixel pixel = PixelOf(g, row);
    int64_t tap = 0;
    for (int i = 0; i < g.kernel_h; ++i) {
      for (int j = 0; j < g.kernel_w; ++j, ++tap) {
        for (int og = 0; og < g.offset_groups; ++og) {
          BilinearSample<T> s;
          const bool inside = SampleTap(g, offsets, row, pixel, i, j, og, &s);
          visit(r, tap, og, inside ? &s : nullptr, MaskAt(g, mask, row, tap, og));
        }
      }
    }
  }
}

// Writes one sample's entries of a row of the column buffer: the interpolated
// channels of `runs` (one offset group's), zero when the sample touches no pixel.
template <typename T>
E2E_TF_ALWAYS_INLINE void WriteColumns(const DeformableConv2DGeometry& g,
                                       const std::vector<ChannelRun>& runs, const T* input,
                                       const BilinearSample<T>* s, const T weight[4],
                                       int64_t tap, T* col_row) {
  for (const ChannelRun& run : runs) {
    T* dst = col_row + run.Column(tap);
    if (s != nullptr) {
      Interpolate(input, s->index, weight, run.begin, run.end - run.begin, dst);
    } else {
      std::fill(dst, dst + (run.end - run.begin), T(0));
    }
  }
}

// ForEachSample over all rows of the chunk, the rows split between the threads;
// `cost_per_row` in cycles.
template <typename T, typename Visit>
void ParallelForEachSample(const ParallelFor& parallel_for, const DeformableConv2DGeometry& g,
                           const T* offsets, const T* mask, int64_t row0, int64_t rows,
                           int64_t cost_per_row, const Visit& visit) {
  ParallelSampling(parallel_for, rows, cost_per_row,
                   [&](int64_t begin, int64_t end) E2E_TF_SAMPLING_BODY {
    ForEachSample(g, offsets, mask, row0, begin, end, visit);
  });
}

// Fills the column buffer for rows [row0, row0 + rows).
template <typename T>
void CpuIm2Col(const ParallelFor& parallel_for, const DeformableConv2DGeometry& g,
               const T* input, const T* offsets, const T* mask, int64_t row0, int64_t rows,
               T* col) {
  const std::vector<std::vector<ChannelRun>> runs = OffsetGroupRuns(g);
  ParallelForEachSample(parallel_for, g, offsets, mask, row0, rows, g.col_width() * 6,
                        [&](int64_t r, int64_t tap, int og, const BilinearSample<T>* s,
                            T m) E2E_TF_SAMPLING_BODY {
    T weight[4] = {T(0), T(0), T(0), T(0)};
    if (s != nullptr) MaskedWeights(*s, m, weight);
    WriteColumns(g, runs[og], input, s, weight, tap, col + r * g.col_width());
  });
}

// The backward work of one sample that needs no other sample: its columns (for the
// kernel gradient), its offset and mask gradients from the column gradient `gc_row`,
// its masked corner weights and, when `grad_input` is not null, its share of the
// input gradient.
template <typename T>
E2E_TF_ALWAYS_INLINE void SampleBackward(const DeformableConv2DGeometry& g,
                                         const std::vector<ChannelRun>& runs, const T* input,
                                         const T* gc_row, int64_t row0, int64_t r,
                                         int64_t tap, int og, const BilinearSample<T>* s,
                                         T m, T* col_row, T weight[4], T* grad_offsets,
                                         T* grad_mask, T* grad_input) {
  std::fill(weight, weight + 4, T(0));
  if (s == nullptr) {
    WriteColumns(g, runs, input, s, weight, tap, col_row);
    StoreCoordinateGradients(g, row0 + r, tap, og, T(0), T(0), T(0), grad_offsets, grad_mask);
    return;
  }
  MaskedWeights(*s, m, weight);
  const bool interior = s->index[0] >= 0 && s->index[1] >= 0 && s->index[2] >= 0 &&
                        s->index[3] >= 0;
  T dots[4] = {T(0), T(0), T(0), T(0)};
  for (const ChannelRun& run : runs) {
    const T* gc = gc_row + run.Column(tap);
    const int64_t len = run.end - run.begin;
    if (interior) {
      InteriorSampleChannels(gc, input, s->index, weight, run.begin, len,
                             col_row + run.Column(tap), dots, grad_input);
    } else {
      CornerDots(gc, input, s->index, run.begin, len, dots);
      if (grad_input != nullptr) ScatterAdd(gc, s->index, weight, run.begin, len, grad_input);
    }
  }
  if (!interior) WriteColumns(g, runs, input, s, weight, tap, col_row);
  T grad_dy, grad_dx, grad_m;
  CoordinateGradients(*s, dots, m, &grad_dy, &grad_dx, &grad_m);
  StoreCoordinateGradients(g, row0 + r, tap, og, grad_dy, grad_dx, grad_m, grad_offsets,
                           grad_mask);
}

// Columns, offset and mask gradients of rows [row0, row0 + rows) (one writer per
// row) and the scatter plan for the input gradient.
template <typename T>
void CpuCoordinateGrad(const ParallelFor& parallel_for, const DeformableConv2DGeometry& g,
                       const T* input, const T* offsets, const T* mask, const T* grad_col,
                       int64_t row0, int64_t rows, T* col, T* grad_offsets, T* grad_mask,
                       PlanEntry<T>* plan) {
  const std::vector<std::vector<ChannelRun>> runs = OffsetGroupRuns(g);
  ParallelForEachSample(parallel_for, g, offsets, mask, row0, rows, g.col_width() * 12,
                        [&](int64_t r, int64_t tap, int og, const BilinearSample<T>* s,
                            T m) E2E_TF_SAMPLING_BODY {
    PlanEntry<T>& entry = plan[(r * g.taps() + tap) * g.offset_groups + og];
    SampleBackward(g, runs[og], input, grad_col + r * g.col_width(), row0, r, tap, og, s, m,
                   col + r * g.col_width(), entry.weight, grad_offsets, grad_mask,
                   static_cast<T*>(nullptr));
    for (int k = 0; k < 4; ++k) entry.index[k] = s != nullptr ? s->index[k] : -1;
  });
}

// Scatters the column gradient of rows [row0, row0 + rows) into the input gradient.
// A sample only touches its own image, so threads own disjoint (image, channel
// block) units: no races, and every element is summed in row order.
template <typename T>
void CpuCol2Im(const ParallelFor& parallel_for, int threads, const DeformableConv2DGeometry& g,
               const T* grad_col, const PlanEntry<T>* plan, int64_t row0, int64_t rows,
               T* grad_input) {
  const ChunkImages images = ImagesOf(g, row0, rows);
  // Channel blocks only when there are fewer images than threads: each re-reads the plan.
  const int64_t blocks = std::clamp<int64_t>((threads + images.count - 1) / images.count, 1,
                                             std::max<int64_t>(g.channels / 8, 1));
  const int64_t cost = std::min(rows, g.out_pixels()) * g.taps() * (g.channels / blocks) * 8;
  ParallelSampling(parallel_for, images.count * blocks, cost,
                   [&](int64_t u0, int64_t u1) E2E_TF_SAMPLING_BODY {
    for (int64_t u = u0; u < u1; ++u) {
      const int64_t b = u % blocks;
      const std::vector<ChannelRun> runs =
          ChannelRuns(g, g.channels * b / blocks, g.channels * (b + 1) / blocks);
      const RowRange image_rows = ImageRows(g, row0, rows, images.first + u / blocks);
      for (int64_t r = image_rows.begin; r < image_rows.end; ++r) {
        const T* gc_row = grad_col + r * g.col_width();
        for (int64_t tap = 0; tap < g.taps(); ++tap) {
          const PlanEntry<T>* entries = plan + (r * g.taps() + tap) * g.offset_groups;
          for (const ChannelRun& run : runs) {
            const PlanEntry<T>& e = entries[run.offset_group];
            ScatterAdd(gc_row + run.Column(tap), e.index, e.weight, run.begin,
                       run.end - run.begin, grad_input);
          }
        }
      }
    }
  });
}

// CpuCoordinateGrad and CpuCol2Im in one pass, for chunks holding at least one image
// per thread: threads own whole images, so each reads the column gradient once and
// needs no plan. Sums in the same order as the two passes.
template <typename T>
void CpuFusedSamplingGrad(const ParallelFor& parallel_for, const DeformableConv2DGeometry& g,
                          const T* input, const T* offsets, const T* mask, const T* grad_col,
                          int64_t row0, int64_t rows, T* col, T* grad_input, T* grad_offsets,
                          T* grad_mask) {
  const std::vector<std::vector<ChannelRun>> runs = OffsetGroupRuns(g);
  const ChunkImages images = ImagesOf(g, row0, rows);
  const int64_t cost = std::min(rows, g.out_pixels()) * g.col_width() * 20;
  ParallelSampling(parallel_for, images.count, cost,
                   [&](int64_t u0, int64_t u1) E2E_TF_SAMPLING_BODY {
    for (int64_t n = images.first + u0; n < images.first + u1; ++n) {
      const RowRange image_rows = ImageRows(g, row0, rows, n);
      ForEachSample(g, offsets, mask, row0, image_rows.begin, image_rows.end,
                    [&](int64_t r, int64_t tap, int og, const BilinearSample<T>* s,
                        T m) E2E_TF_SAMPLING_BODY {
        T weight[4];
        SampleBackward(g, runs[og], input, grad_col + r * g.col_width(), row0, r, tap, og, s,
                       m, col + r * g.col_width(), weight, grad_offsets, grad_mask, grad_input);
      });
    }
  });
}

template <typename T>
void CpuForward(const ParallelFor& pf, const DeformableConv2DGeometry& g, const T* input,
                const T* offsets, const T* kernel, const T* mask, T* output, T* col,
                int64_t chunk_rows) {
  const int64_t kg = g.group_col_width();
  const int64_t fg = g.filters_per_group();
  for (int64_t row0 = 0; row0 < g.rows(); row0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, g.rows() - row0);
    CpuIm2Col(pf, g, input, offsets, mask, row0, rows, col);
    for (int grp = 0; grp < g.groups; ++grp) {
      Gemm<T>(pf, rows, fg, kg, {col + grp * kg, g.col_width(), 1},
              {kernel + grp * fg, g.filters, 1}, output + row0 * g.filters + grp * fg,
              g.filters, /*accumulate=*/false);
    }
  }
}

// Per chunk: the column gradient (a GEMM), then one sampling pass that writes the
// columns, the offset, mask and input gradients, then the kernel gradient (a GEMM
// on the columns). `col` and `grad_col` each hold `chunk_rows` rows.
template <typename T>
void CpuBackward(const ParallelFor& pf, int threads, const DeformableConv2DGeometry& g,
                 const T* input, const T* offsets, const T* kernel, const T* mask,
                 const T* grad_output, T* grad_input, T* grad_offsets, T* grad_mask,
                 T* grad_kernel, T* col, T* grad_col, T* kernel_t, PlanEntry<T>* plan,
                 int64_t chunk_rows) {
  const int64_t kg = g.group_col_width();
  const int64_t fg = g.filters_per_group();
  const int64_t kernel_size = kg * g.filters;
  std::fill(grad_input, grad_input + g.batch * g.height * g.width * g.channels, T(0));
  std::fill(grad_kernel, grad_kernel + kernel_size, T(0));
  // kernel_t[f][k] = kernel[k][f]: B of the column-gradient product, contiguous.
  for (int64_t k = 0; k < kg; ++k) {
    for (int64_t f = 0; f < g.filters; ++f) kernel_t[f * kg + k] = kernel[k * g.filters + f];
  }
  for (int64_t row0 = 0; row0 < g.rows(); row0 += chunk_rows) {
    const int64_t rows = std::min(chunk_rows, g.rows() - row0);
    const T* go = grad_output + row0 * g.filters;
    for (int grp = 0; grp < g.groups; ++grp) {
      // grad_col_g = grad_output_g * kernel_g^T
      Gemm<T>(pf, rows, kg, fg, {go + grp * fg, g.filters, 1}, {kernel_t + grp * fg * kg, kg, 1},
              grad_col + grp * kg, g.col_width(), /*accumulate=*/false);
    }
    if (ImagesOf(g, row0, rows).count >= threads) {
      CpuFusedSamplingGrad(pf, g, input, offsets, mask, grad_col, row0, rows, col, grad_input,
                           grad_offsets, grad_mask);
    } else {
      CpuCoordinateGrad(pf, g, input, offsets, mask, grad_col, row0, rows, col, grad_offsets,
                        grad_mask, plan);
      CpuCol2Im(pf, threads, g, grad_col, plan, row0, rows, grad_input);
    }
    for (int grp = 0; grp < g.groups; ++grp) {
      // grad_kernel_g += col_g^T * grad_output_g
      Gemm<T>(pf, kg, fg, rows, {col + grp * kg, 1, g.col_width()}, {go + grp * fg, g.filters, 1},
              grad_kernel + grp * fg, g.filters, /*accumulate=*/true);
    }
  }
}

// ------------------------------------------------------------ per-device launchers

// A temporary of n elements of T: a column buffer, the transposed kernel, the plan.
template <typename T>
absl::Status AllocateBuffer(OpKernelContext* ctx, int64_t n, Tensor* buffer) {
  return ctx->allocate_temp(DataTypeToEnum<T>::value, TensorShape({n}), buffer);
}

// The column buffer of one chunk, whose rows (`*chunk`) fit `budget` together with
// `extra_bytes_per_row` of other per-row scratch.
template <typename T>
absl::Status AllocateColumns(OpKernelContext* ctx, const DeformableConv2DGeometry& g,
                             int64_t attr_rows, int64_t budget, int64_t extra_bytes_per_row,
                             int64_t* chunk, Tensor* col) {
  *chunk = ChunkRows(g, attr_rows, g.col_width() * sizeof(T) + extra_bytes_per_row, budget);
  return AllocateBuffer<T>(ctx, *chunk * g.col_width(), col);
}

template <typename Device, typename T>
struct Launcher;

template <typename T>
struct Launcher<CpuTag, T> {
  static absl::Status Forward(OpKernelContext* ctx, const DeformableConv2DGeometry& g,
                              int64_t attr_rows, const T* input, const T* offsets,
                              const T* kernel, const T* mask, T* output) {
    int64_t chunk = 0;
    Tensor col;
    const int64_t budget = CpuChunkBudget(g, CpuThreads(ctx), g.col_width() * sizeof(T));
    TF_RETURN_IF_ERROR(AllocateColumns<T>(ctx, g, attr_rows, budget, 0, &chunk, &col));
    CpuForward(CpuParallelFor(ctx), g, input, offsets, kernel, mask, output, col.flat<T>().data(),
               chunk);
    return absl::OkStatus();
  }

  static absl::Status Backward(OpKernelContext* ctx, const DeformableConv2DGeometry& g,
                               int64_t attr_rows, const T* input, const T* offsets,
                               const T* kernel, const T* mask, const T* grad_output,
                               T* grad_input, T* grad_offsets, T* grad_mask, T* grad_kernel) {
    const int64_t plan_row = g.taps() * g.offset_groups * sizeof(PlanEntry<T>);
    int64_t chunk = 0;
    Tensor col, grad_col, kernel_t, plan;
    // The column gradient is a second column buffer.
    const int64_t extra_row = g.col_width() * sizeof(T) + plan_row;
    const int64_t budget =
        CpuChunkBudget(g, CpuThreads(ctx), g.col_width() * sizeof(T) + extra_row);
    TF_RETURN_IF_ERROR(
        AllocateColumns<T>(ctx, g, attr_rows, budget, extra_row, &chunk, &col));
    TF_RETURN_IF_ERROR(AllocateBuffer<T>(ctx, chunk * g.col_width(), &grad_col));
    TF_RETURN_IF_ERROR(AllocateBuffer<T>(ctx, g.group_col_width() * g.filters, &kernel_t));
    TF_RETURN_IF_ERROR(AllocateBuffer<int8_t>(ctx, chunk * plan_row, &plan));
    CpuBackward(CpuParallelFor(ctx), CpuThreads(ctx), g, input, offsets, kernel, mask,
                grad_output, grad_input, grad_offsets, grad_mask, grad_kernel, col.flat<T>().data(),
                grad_col.flat<T>().data(), kernel_t.flat<T>().data(),
                reinterpret_cast<PlanEntry<T>*>(plan.flat<int8_t>().data()), chunk);
    return absl::OkStatus();
  }

  template <typename Half>
  static void ToFloat(OpKernelContext* ctx, const Tensor& in, Tensor* out) {
    out->flat<float>().device(ctx->eigen_device<Eigen::ThreadPoolDevice>()) =
        in.flat<Half>().template cast<float>();
  }
  template <typename Half>
  static void FromFloat(OpKernelContext* ctx, const Tensor& in, Tensor* out) {
    out->flat<Half>().device(ctx->eigen_device<Eigen::ThreadPoolDevice>()) =
        in.flat<float>().template cast<Half>();
  }
};

#if GOOGLE_CUDA
void* GpuStream(OpKernelContext* ctx) {
  return ctx->op_device_context()->stream()->platform_specific_handle().stream;
}

absl::Status CudaStatus(const char* error) {
  if (error == nullptr || error[0] == '\0') return absl::OkStatus();
  return absl::InternalError(absl::StrCat("DeformableConv2D CUDA kernel failed: ", error));
}

template <typename T>
struct Launcher<GpuTag, T> {
  static absl::Status Forward(OpKernelContext* ctx, const DeformableConv2DGeometry& g,
                              int64_t attr_rows, const T* input, const T* offsets,
                              const T* kernel, const T* mask, T* output) {
    int64_t chunk = 0;
    Tensor col;
    TF_RETURN_IF_ERROR(AllocateColumns<T>(ctx, g, attr_rows, kGpuChunkBytes, 0, &chunk, &col));
    return CudaStatus(gpu::DeformableConv2DForward<T>(GpuStream(ctx), g, input, offsets, kernel,
                                                      mask, output, col.flat<T>().data(),
                                                      chunk));
  }

  static absl::Status Backward(OpKernelContext* ctx, const DeformableConv2DGeometry& g,
                               int64_t attr_rows, const T* input, const T* offsets,
                               const T* kernel, const T* mask, const T* grad_output,
                               T* grad_input, T* grad_offsets, T* grad_mask, T* grad_kernel) {
    int64_t chunk = 0;
    Tensor col, kernel_t;
    TF_RETURN_IF_ERROR(AllocateColumns<T>(ctx, g, attr_rows, kGpuChunkBytes, 0, &chunk, &col));
    TF_RETURN_IF_ERROR(AllocateBuffer<T>(ctx, g.group_col_width() * g.filters, &kernel_t));
    return CudaStatus(gpu::DeformableConv2DBackward<T>(
        GpuStream(ctx), g, input, offsets, kernel, mask, grad_output, grad_input, grad_offsets,
        grad_mask, grad_kernel, col.flat<T>().data(), kernel_t.flat<T>().data(), chunk));
  }

  template <typename Half>
  static void ToFloat(OpKernelContext* ctx, const Tensor& in, Tensor* out) {
    const auto* bits = reinterpret_cast<const uint16_t*>(in.flat<Half>().data());
    OP_REQUIRES_OK(ctx, CudaStatus(gpu::CastHalfToFloat(GpuStream(ctx), bits,
                                                        out->flat<float>().data(),
                                                        in.NumElements(),
                                                        std::is_same_v<Half, Eigen::bfloat16>)));
  }
  template <typename Half>
  static void FromFloat(OpKernelContext* ctx, const Tensor& in, Tensor* out) {
    OP_REQUIRES_OK(ctx, CudaStatus(gpu::CastFloatToHalf(
                            GpuStream(ctx), in.flat<float>().data(),
                            reinterpret_cast<uint16_t*>(out->flat<Half>().data()),
                            in.NumElements(), std::is_same_v<Half, Eigen::bfloat16>)));
  }
};
#endif  // GOOGLE_CUDA

// float and double run natively; half and bfloat16 run the float kernels on
// float copies (the column buffer and GEMMs need float accumulation anyway).
template <typename T>
constexpr bool kNative = std::is_same_v<T, float> || std::is_same_v<T, double>;

template <typename T>
using ComputeType = std::conditional_t<kNative<T>, T, float>;

template <typename T>
const ComputeType<T>* DataOf(const Tensor& t) {
  return t.NumElements() == 0 ? nullptr : t.flat<ComputeType<T>>().data();
}
template <typename T>
ComputeType<T>* MutableDataOf(Tensor* t) {
  return t->NumElements() == 0 ? nullptr : t->flat<ComputeType<T>>().data();
}

// Returns `in` itself for native types, else a float copy.
template <typename Device, typename T>
absl::Status ComputeInput(OpKernelContext* ctx, const Tensor& in, Tensor* out) {
  if constexpr (kNative<T>) {
    *out = in;
  } else {
    TF_RETURN_IF_ERROR(ctx->allocate_temp(tensorflow::DT_FLOAT, in.shape(), out));
    if (in.NumElements() > 0) Launcher<Device, float>::template ToFloat<T>(ctx, in, out);
  }
  return absl::OkStatus();
}

// Returns the output tensor itself for native types, else a float temporary that
// FinishOutput converts into it.
template <typename Device, typename T>
absl::Status ComputeOutput(OpKernelContext* ctx, Tensor* output, Tensor* out) {
  if constexpr (kNative<T>) {
    *out = *output;
    return absl::OkStatus();
  } else {
    return ctx->allocate_temp(tensorflow::DT_FLOAT, output->shape(), out);
  }
}

template <typename Device, typename T>
void FinishOutput(OpKernelContext* ctx, const Tensor& computed, Tensor* output) {
  if constexpr (!kNative<T>) {
    if (output->NumElements() > 0) {
      Launcher<Device, float>::template FromFloat<T>(ctx, computed, output);
    }
  }
}

}  // namespace

// The four operands of both ops in the compute type (the tensors own the float copies
// of half and bfloat16 inputs); mask is null without one.
template <typename T>
struct Operands {
  Tensor tensors[4];
  const ComputeType<T>* input = nullptr;
  const ComputeType<T>* offsets = nullptr;
  const ComputeType<T>* kernel = nullptr;
  const ComputeType<T>* mask = nullptr;
};

// What both op kernels share: the attributes, the geometry of the inputs' run-time
// shapes, and the inputs (input, offsets, kernel, mask) in the compute type.
template <typename Device, typename T>
class DeformableConv2DOpBase : public OpKernel {
 public:
  explicit DeformableConv2DOpBase(OpKernelConstruction* ctx) : OpKernel(ctx) {
    OP_REQUIRES_OK(ctx, ReadAttrs(ctx, &attrs_));
  }

 protected:
  absl::Status Geometry(OpKernelContext* ctx, DeformableConv2DGeometry* g) const {
    return MakeGeometry(attrs_, ctx->input(0).shape(), ctx->input(1).shape(),
                        ctx->input(2).shape(), ctx->input(3).shape(), g);
  }

  static absl::Status ReadOperands(OpKernelContext* ctx, const DeformableConv2DGeometry& g,
                                   Operands<T>* in) {
    for (int i = 0; i < 4; ++i) {
      const Tensor& tensor = (i < 3 || g.use_mask) ? ctx->input(i) : Tensor();
      TF_RETURN_IF_ERROR((ComputeInput<Device, T>(ctx, tensor, &in->tensors[i])));
    }
    in->input = DataOf<T>(in->tensors[0]);
    in->offsets = DataOf<T>(in->tensors[1]);
    in->kernel = DataOf<T>(in->tensors[2]);
    in->mask = g.use_mask ? DataOf<T>(in->tensors[3]) : nullptr;
    return absl::OkStatus();
  }

  ConvAttrs attrs_;
};

template <typename Device, typename T>
class DeformableConv2DOp : public DeformableConv2DOpBase<Device, T> {
 public:
  using DeformableConv2DOpBase<Device, T>::DeformableConv2DOpBase;

  void Compute(OpKernelContext* ctx) override {
    DeformableConv2DGeometry g;
    OP_REQUIRES_OK(ctx, this->Geometry(ctx, &g));
    Tensor* output = nullptr;
    OP_REQUIRES_OK(ctx, ctx->allocate_output(
                            0, TensorShape({g.batch, g.out_height, g.out_width, g.filters}),
                            &output));
    if (output->NumElements() == 0) return;
    Operands<T> in;
    Tensor y;
    OP_REQUIRES_OK(ctx, this->ReadOperands(ctx, g, &in));
    OP_REQUIRES_OK(ctx, (ComputeOutput<Device, T>(ctx, output, &y)));
    OP_REQUIRES_OK(ctx, (Launcher<Device, ComputeType<T>>::Forward(
                            ctx, g, this->attrs_.chunk_rows, in.input, in.offsets, in.kernel,
                            in.mask, MutableDataOf<T>(&y))));
    FinishOutput<Device, T>(ctx, y, output);
  }
};

template <typename Device, typename T>
class DeformableConv2DGradOp : public DeformableConv2DOpBase<Device, T> {
 public:
  using DeformableConv2DOpBase<Device, T>::DeformableConv2DOpBase;

  void Compute(OpKernelContext* ctx) override {
    const Tensor& input = ctx->input(0);
    const Tensor& offsets = ctx->input(1);
    const Tensor& kernel = ctx->input(2);
    const Tensor& mask = ctx->input(3);
    const Tensor& grad_output = ctx->input(4);
    DeformableConv2DGeometry g;
    OP_REQUIRES_OK(ctx, this->Geometry(ctx, &g));
    const TensorShape out_shape({g.batch, g.out_height, g.out_width, g.filters});
    OP_REQUIRES(ctx, grad_output.shape() == out_shape,
                InvalidArgument("grad_output has shape ", grad_output.shape().DebugString(),
                                " but the forward output has shape ", out_shape.DebugString()));
    Tensor* outputs[4] = {nullptr, nullptr, nullptr, nullptr};
    OP_REQUIRES_OK(ctx, ctx->allocate_output(0, input.shape(), &outputs[0]));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(1, offsets.shape(), &outputs[1]));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(2, g.use_mask ? mask.shape() : TensorShape({0}),
                                             &outputs[2]));
    OP_REQUIRES_OK(ctx, ctx->allocate_output(3, kernel.shape(), &outputs[3]));
    if (input.NumElements() == 0 && kernel.NumElements() == 0) return;
    Operands<T> in;
    Tensor dy;
    OP_REQUIRES_OK(ctx, this->ReadOperands(ctx, g, &in));
    OP_REQUIRES_OK(ctx, (ComputeInput<Device, T>(ctx, grad_output, &dy)));
    Tensor grads[4];
    for (int i = 0; i < 4; ++i) {
      OP_REQUIRES_OK(ctx, (ComputeOutput<Device, T>(ctx, outputs[i], &grads[i])));
    }
    OP_REQUIRES_OK(ctx, (Launcher<Device, ComputeType<T>>::Backward(
                            ctx, g, this->attrs_.chunk_rows, in.input, in.offsets, in.kernel,
                            in.mask, DataOf<T>(dy), MutableDataOf<T>(&grads[0]),
                            MutableDataOf<T>(&grads[1]),
                            g.use_mask ? MutableDataOf<T>(&grads[2]) : nullptr,
                            MutableDataOf<T>(&grads[3]))));
    for (int i = 0; i < 4; ++i) FinishOutput<Device, T>(ctx, grads[i], outputs[i]);
  }
};

#define E2E_TF_REGISTER_KERNELS(DEVICE, TAG, T)                                        \
  REGISTER_KERNEL_BUILDER(                                                            \
      Name("E2eTf>DeformableConv2D").Device(DEVICE).TypeConstraint<T>("T"),           \
      DeformableConv2DOp<TAG, T>);                                                    \
  REGISTER_KERNEL_BUILDER(                                                            \
      Name("E2eTf>DeformableConv2DGrad").Device(DEVICE).TypeConstraint<T>("T"),       \
      DeformableConv2DGradOp<TAG, T>);

E2E_TF_REGISTER_KERNELS(::tensorflow::DEVICE_CPU, CpuTag, float)
E2E_TF_REGISTER_KERNELS(::tensorflow::DEVICE_CPU, CpuTag, double)
E2E_TF_REGISTER_KERNELS(::tensorflow::DEVICE_CPU, CpuTag, Eigen::half)
E2E_TF_REGISTER_KERNELS(::tensorflow::DEVICE_CPU, CpuTag, Eigen::bfloat16)
#if GOOGLE_CUDA
E2E_TF_REGISTER_KERNELS(::tensorflow::DEVICE_GPU, GpuTag, float)
E2E_TF_REGISTER_KERNELS(::tensorflow::DEVICE_GPU, GpuTag, double)
E2E_TF_REGISTER_KERNELS(::tensorflow::DEVICE_GPU, GpuTag, Eigen::half)
E2E_TF_REGISTER_KERNELS(::tensorflow::DEVICE_GPU, GpuTag, Eigen::bfloat16)
#endif

#undef E2E_TF_REGISTER_KERNELS

}  // namespace e2e_tf
