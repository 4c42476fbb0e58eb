// Blocked CPU GEMM (see cpu_gemm.h): panels of B packed into NR-column micro-panels
// shared by all threads, an MR x NR register-tile micro-kernel (AVX2+FMA for float
// and double where the CPU has it) that reads A in place (A is the large operand
// here, with as few as 64 columns of B per row of A: packing it would cost as much
// as the products; only a transposed A against a wide B is packed), parallel over
// blocks of rows of C.

#include "cpu_gemm.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define E2E_TF_HAVE_X86 1
#endif

namespace e2e_tf {
namespace {

constexpr int64_t kBlockK = 256;   // depth of one packed panel (B micro-panel ~16 KB: L1)
constexpr int64_t kMaxBlockM = 96;  // rows of A per block (~96 KB of depth: L2)
constexpr int64_t kMaxPanelBytes = int64_t{4} << 20;  // packed B, all depths (L3)
constexpr int64_t kTargetTiles = 16;  // enough blocks of rows to balance the threads
constexpr int64_t kParallelPackElements = 64 * 1024;  // smaller panels of B pack serially
// A transposed A (the kernel gradient's columns) is read in place only for products
// this narrow; for wider ones each of its blocks is re-read by many micro-panels of B,
// and a packed copy is faster.
constexpr int64_t kMaxInPlaceTransposedN = 64;

// An MR-row sliver of A read in place: row i of the tile starts at row[i] and its
// depth index p is at row[i][p * step]. Rows past the matrix repeat its last row,
// so a partial tile reads only valid memory (the extra rows are never stored).
template <typename T, int MR>
struct ASliver {
  const T* row[MR];
  int64_t step;
};

template <typename T, int MR>
ASliver<T, MR> SliverOf(const MatrixView<T>& a, int64_t i0, int mr, int64_t p0) {
  ASliver<T, MR> s;
  for (int i = 0; i < MR; ++i) {
    s.row[i] = a.data + (i0 + std::min(i, mr - 1)) * a.row_stride + p0 * a.col_stride;
  }
  s.step = a.col_stride;
  return s;
}

// The sliver of MR rows at `packed`, packed by PackA.
template <typename T, int MR>
ASliver<T, MR> PackedSliver(const T* packed) {
  ASliver<T, MR> s;
  for (int i = 0; i < MR; ++i) s.row[i] = packed + i;
  s.step = MR;
  return s;
}

template <typename T, int MR>
using MicroKernel = void (*)(int64_t kc, const ASliver<T, MR>& a, const T* b, T* c,
                             int64_t ldc, bool accumulate, int m, int n);

// Writes an MR x NR tile held in `tile` (row stride NR) to the valid m x n part of C.
template <typename T>
inline void StoreTile(const T* tile, int nr, T* c, int64_t ldc, bool accumulate, int m, int n) {
  for (int i = 0; i < m; ++i) {
    T* row = c + i * ldc;
    for (int j = 0; j < n; ++j) row[j] = (accumulate ? row[j] : T(0)) + tile[i * nr + j];
  }
}

// Portable micro-kernel; the compiler vectorises the inner loop with what the
// build flags allow.
template <typename T, int MR, int NR>
void GenericMicroKernel(int64_t kc, const ASliver<T, MR>& a, const T* b, T* c, int64_t ldc,
                        bool accumulate, int m, int n) {
  T acc[MR * NR] = {};
  const T* rows[MR];
  for (int i = 0; i < MR; ++i) rows[i] = a.row[i];
  for (int64_t p = 0, offset = 0; p < kc; ++p, offset += a.step) {
    T ai[MR];
    for (int i = 0; i < MR; ++i) ai[i] = rows[i][offset];
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) acc[i * NR + j] += ai[i] * b[j];
    }
    b += NR;
  }
  StoreTile(acc, NR, c, ldc, accumulate, m, n);
}

#ifdef E2E_TF_HAVE_X86
#define E2E_TF_AVX2 __attribute__((target("avx2,fma"), always_inline)) inline

// The AVX operations the micro-kernel needs, overloaded for float (8 lanes) and
// double (4 lanes) registers so that one kernel serves both types.
E2E_TF_AVX2 __m256 Load(const float* p) { return _mm256_loadu_ps(p); }
E2E_TF_AVX2 __m256d Load(const double* p) { return _mm256_loadu_pd(p); }
E2E_TF_AVX2 __m256 Broadcast(const float* p) { return _mm256_broadcast_ss(p); }
E2E_TF_AVX2 __m256d Broadcast(const double* p) { return _mm256_broadcast_sd(p); }
E2E_TF_AVX2 __m256 Fma(__m256 a, __m256 b, __m256 c) { return _mm256_fmadd_ps(a, b, c); }
E2E_TF_AVX2 __m256d Fma(__m256d a, __m256d b, __m256d c) { return _mm256_fmadd_pd(a, b, c); }
E2E_TF_AVX2 __m256 Add(__m256 a, __m256 b) { return _mm256_add_ps(a, b); }
E2E_TF_AVX2 __m256d Add(__m256d a, __m256d b) { return _mm256_add_pd(a, b); }
E2E_TF_AVX2 void Store(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
E2E_TF_AVX2 void Store(double* p, __m256d v) { _mm256_storeu_pd(p, v); }

// Elements of T in one AVX register.
template <typename T>
constexpr int kAvxLanes = 32 / sizeof(T);

// 6 x (2 registers) tile in 12 AVX registers, FMA per broadcast element of A:
// 6 x 16 floats or 6 x 8 doubles.
template <typename T>
__attribute__((target("avx2,fma"))) void Avx2MicroKernel(int64_t kc, const ASliver<T, 6>& a,
                                                         const T* b, T* c, int64_t ldc,
                                                         bool accumulate, int m, int n) {
  using Vec = decltype(Load(b));
  constexpr int kLanes = kAvxLanes<T>;
  // acc[i][h]: columns [h * kLanes, (h + 1) * kLanes) of row i. Fully unrolled, the
  // array lives in registers.
  Vec acc[6][2];
  const T* rows[6];
  const int64_t step = a.step;
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) {
    acc[i][0] = acc[i][1] = Vec{};
    rows[i] = a.row[i];
  }
  // A transposed A read in place steps a cache line (often a page) per depth, which
  // the hardware prefetchers miss: fetch its rows 32 depths ahead.
  const int64_t ahead = step > 6 ? 32 * step : 0;
  for (int64_t p = 0, offset = 0; p < kc; ++p, offset += step) {
    if (ahead != 0) __builtin_prefetch(rows[0] + offset + ahead);
    const auto b0 = Load(b);
    const auto b1 = Load(b + kLanes);
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
      const auto ai = Broadcast(rows[i] + offset);
      acc[i][0] = Fma(ai, b0, acc[i][0]);
      acc[i][1] = Fma(ai, b1, acc[i][1]);
    }
    b += 2 * kLanes;
  }
  if (m == 6 && n == 2 * kLanes) {
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
      T* row = c + i * ldc;
      auto lo = acc[i][0];
      auto hi = acc[i][1];
      if (accumulate) {
        lo = Add(lo, Load(row));
        hi = Add(hi, Load(row + kLanes));
      }
      Store(row, lo);
      Store(row + kLanes, hi);
    }
    return;
  }
  T tile[6 * 2 * kLanes];
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) {
    Store(tile + 2 * kLanes * i, acc[i][0]);
    Store(tile + 2 * kLanes * i + kLanes, acc[i][1]);
  }
  StoreTile(tile, 2 * kLanes, c, ldc, accumulate, m, n);
}

#endif  // E2E_TF_HAVE_X86

// Packs rows [i0, i0 + mc) x depth [p0, p0 + kc) of A into MR-row micro-panels,
// zero-padding the last one.
template <typename T, int MR>
void PackA(const MatrixView<T>& a, int64_t i0, int64_t mc, int64_t p0, int64_t kc, T* out) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
    const T* base = a.data + (i0 + ir) * a.row_stride + p0 * a.col_stride;
    for (int64_t p = 0; p < kc; ++p) {
      const T* column = base + p * a.col_stride;
      int r = 0;
      for (; r < mr; ++r) out[r] = column[r * a.row_stride];
      for (; r < MR; ++r) out[r] = T(0);
      out += MR;
    }
  }
}

// Packs depth [p0, p0 + kc) x columns [j0, j0 + nc) of B into NR-column micro-panels.
template <typename T, int NR>
void PackB(const MatrixView<T>& b, int64_t p0, int64_t kc, int64_t j0, int64_t nc, T* out) {
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
    const T* base = b.data + p0 * b.row_stride + (j0 + jr) * b.col_stride;
    for (int64_t p = 0; p < kc; ++p) {
      const T* row = base + p * b.row_stride;
      int j = 0;
      if (b.col_stride == 1) {
        std::memcpy(out, row, sizeof(T) * nr);
        j = nr;
      } else {
        for (; j < nr; ++j) out[j] = row[j * b.col_stride];
      }
      for (; j < NR; ++j) out[j] = T(0);
      out += NR;
    }
  }
}

// Columns of B per packed panel: all of them when the whole (k, n) panel fits
// kMaxPanelBytes, else equal NR-multiples that do. A panel holds every depth block,
// so that one parallel section computes all of its depth: the threads never wait
// for each other between depth blocks.
template <int NR>
int64_t PanelColumns(int64_t n, int64_t k, int64_t element_bytes) {
  const int64_t slivers = (n + NR - 1) / NR;
  const int64_t sliver_bytes = NR * k * element_bytes;
  const int64_t panels = std::max<int64_t>(1, (slivers * sliver_bytes + kMaxPanelBytes - 1) /
                                                   kMaxPanelBytes);
  return (slivers + panels - 1) / panels * NR;
}

template <typename T, int MR, int NR>
void PackedGemm(const ParallelFor& parallel_for, MicroKernel<T, MR> kernel, int64_t m, int64_t n,
                int64_t k, const MatrixView<T>& a, const MatrixView<T>& b, T* c, int64_t ldc,
                bool accumulate) {
  if (m <= 0 || n <= 0) return;
  if (k <= 0) {
    if (!accumulate) {
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, T(0));
    }
    return;
  }
  int64_t block_m = (m + kTargetTiles - 1) / kTargetTiles;
  block_m = std::min(kMaxBlockM, std::max<int64_t>(4 * MR, (block_m + MR - 1) / MR * MR));
  const int64_t m_blocks = (m + block_m - 1) / block_m;
  const int64_t panel_n = PanelColumns<NR>(n, k, sizeof(T));
  // One packed panel of B is shared by all threads (packing it per tile would copy B
  // once per block of rows); depth block p0 of it starts at p0 * (its padded width),
  // sliver jr of that block at jr * kc. Each thread packs its own blocks of A.
  std::unique_ptr<T[]> packed_b(new T[static_cast<size_t>(panel_n * k)]);
  for (int64_t j0 = 0; j0 < n; j0 += panel_n) {
    const int64_t nc = std::min(panel_n, n - j0);
    const int64_t slivers = (nc + NR - 1) / NR;
    const auto pack = [&](int64_t begin, int64_t end) {
      for (int64_t s = begin; s < end; ++s) {
        const int64_t jr = s * NR;
        for (int64_t p0 = 0; p0 < k; p0 += kBlockK) {
          const int64_t kc = std::min(kBlockK, k - p0);
          PackB<T, NR>(b, p0, kc, j0 + jr, std::min<int64_t>(NR, nc - jr),
                       packed_b.get() + p0 * slivers * NR + jr * kc);
        }
      }
    };
    // A small panel packs faster than the threads synchronise.
    if (nc * k < kParallelPackElements) {
      pack(0, slivers);
    } else {
      parallel_for(slivers, k * NR * 2, pack);
    }
    const int64_t cost = 2 * block_m * nc * k / 16;  // ~16 flops a cycle
    const bool pack_a = a.col_stride != 1 && nc > kMaxInPlaceTransposedN;
    // Every element of C is summed over the depth blocks in order, by one thread.
    parallel_for(m_blocks, cost, [&](int64_t begin, int64_t end) {
      thread_local std::vector<T> packed_a;
      if (pack_a) packed_a.resize(static_cast<size_t>(kMaxBlockM * kBlockK));
      for (int64_t p0 = 0; p0 < k; p0 += kBlockK) {
        const int64_t kc = std::min(kBlockK, k - p0);
        const bool add = accumulate || p0 > 0;
        const T* panel = packed_b.get() + p0 * slivers * NR;
        for (int64_t block = begin; block < end; ++block) {
          const int64_t i0 = block * block_m;
          const int64_t mc = std::min(block_m, m - i0);
          if (pack_a) PackA<T, MR>(a, i0, mc, p0, kc, packed_a.data());
          for (int64_t jr = 0; jr < nc; jr += NR) {
            const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
            for (int64_t ir = 0; ir < mc; ir += MR) {
              const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
              kernel(kc,
                     pack_a ? PackedSliver<T, MR>(packed_a.data() + ir * kc)
                            : SliverOf<T, MR>(a, i0 + ir, mr, p0),
                     panel + jr * kc, c + (i0 + ir) * ldc + j0 + jr, ldc, add, mr, nr);
            }
          }
        }
      }
    });
  }
}

}  // namespace

bool CpuHasAvx2Fma() {
#ifdef E2E_TF_HAVE_X86
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
#else
  return false;
#endif
}

// The AVX2+FMA kernel when the CPU has it, else the portable one.
template <typename T>
void Gemm(const ParallelFor& parallel_for, int64_t m, int64_t n, int64_t k, MatrixView<T> a,
          MatrixView<T> b, T* c, int64_t ldc, bool accumulate) {
#ifdef E2E_TF_HAVE_X86
  if (CpuHasAvx2Fma()) {
    PackedGemm<T, 6, 2 * kAvxLanes<T>>(parallel_for, &Avx2MicroKernel<T>, m, n, k, a, b, c,
                                          ldc, accumulate);
    return;
  }
#endif
  PackedGemm<T, 4, 8>(parallel_for, &GenericMicroKernel<T, 4, 8>, m, n, k, a, b, c, ldc,
                      accumulate);
}

template void Gemm<float>(const ParallelFor&, int64_t, int64_t, int64_t, MatrixView<float>,
                          MatrixView<float>, float*, int64_t, bool);
template void Gemm<double>(const ParallelFor&, int64_t, int64_t, int64_t, MatrixView<double>,
                           MatrixView<double>, double*, int64_t, bool);

}  // namespace e2e_tf
