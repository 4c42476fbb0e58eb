// Blocked CPU GEMM (see cpu_gemm.h): panels of B packed into NR-column micro-panels
// shared by all threads, an MR x NR register-tile micro-kernel (AVX-512 or AVX2+FMA
// for float and double, whichever the CPU has) that reads A in place (A is the large operand
// here, with as few as 64 columns of B per row of A: packing it would cost as much
// as the products; only a transposed A against a wide B is packed), parallel over
// blocks of rows of C.

#include "cpu_gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define E2E_TF_HAVE_X86 1
#endif

namespace e2e_tf {
namespace {

constexpr int64_t kMicroPanelBytes = 16 * 1024;  // one packed B micro-panel: half of L1
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
// Registers and the operations a micro-kernel needs, per element type and register
// width (32 bytes: AVX2+FMA, 64 bytes: AVX-512). Each carries its instruction set as
// a target attribute; the micro-kernels below are flattened into functions compiled
// for that set, so all of it ends up inlined there.
template <typename T, int kBytes>
struct Simd;

// The micro-kernel template passes vectors by value between these operations before
// it is flattened into its target function; GCC warns that doing so across targets
// would change the ABI, which never happens once everything is inlined.
#pragma GCC diagnostic ignored "-Wpsabi"

#define E2E_TF_AVX2 __attribute__((target("avx2,fma"))) static inline
template <>
struct Simd<float, 32> {
  using Vec = __m256;
  E2E_TF_AVX2 Vec Load(const float* p) { return _mm256_loadu_ps(p); }
  E2E_TF_AVX2 Vec Broadcast(const float* p) { return _mm256_broadcast_ss(p); }
  E2E_TF_AVX2 Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  E2E_TF_AVX2 Vec Add(Vec a, Vec b) { return _mm256_add_ps(a, b); }
  E2E_TF_AVX2 void Store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
};
template <>
struct Simd<double, 32> {
  using Vec = __m256d;
  E2E_TF_AVX2 Vec Load(const double* p) { return _mm256_loadu_pd(p); }
  E2E_TF_AVX2 Vec Broadcast(const double* p) { return _mm256_broadcast_sd(p); }
  E2E_TF_AVX2 Vec Fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_pd(a, b, c); }
  E2E_TF_AVX2 Vec Add(Vec a, Vec b) { return _mm256_add_pd(a, b); }
  E2E_TF_AVX2 void Store(double* p, Vec v) { _mm256_storeu_pd(p, v); }
};

#define E2E_TF_AVX512 __attribute__((target("avx512f"))) static inline
template <>
struct Simd<float, 64> {
  using Vec = __m512;
  E2E_TF_AVX512 Vec Load(const float* p) { return _mm512_loadu_ps(p); }
  E2E_TF_AVX512 Vec Broadcast(const float* p) { return _mm512_set1_ps(*p); }
  E2E_TF_AVX512 Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  E2E_TF_AVX512 Vec Add(Vec a, Vec b) { return _mm512_add_ps(a, b); }
  E2E_TF_AVX512 void Store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
};
template <>
struct Simd<double, 64> {
  using Vec = __m512d;
  E2E_TF_AVX512 Vec Load(const double* p) { return _mm512_loadu_pd(p); }
  E2E_TF_AVX512 Vec Broadcast(const double* p) { return _mm512_set1_pd(*p); }
  E2E_TF_AVX512 Vec Fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_pd(a, b, c); }
  E2E_TF_AVX512 Vec Add(Vec a, Vec b) { return _mm512_add_pd(a, b); }
  E2E_TF_AVX512 void Store(double* p, Vec v) { _mm512_storeu_pd(p, v); }
};

// Elements of T in one register of kBytes.
template <typename T, int kBytes>
constexpr int kLanes = kBytes / static_cast<int>(sizeof(T));

// Tile rows per register width: the MR x (2 registers) accumulators take 12 of the 16
// AVX2 registers, 24 of the 32 AVX-512 ones (where each load of B then feeds twice
// the multiply-adds).
template <int kBytes>
constexpr int kTileRows = kBytes == 64 ? 12 : 6;

// MR x (2 registers) tile, one FMA per broadcast element of A and register of B:
// 6 x 16 floats / 6 x 8 doubles with AVX2, 12 x 32 / 12 x 16 with AVX-512.
template <typename T, int kBytes>
inline void RegisterTileMicroKernel(int64_t kc, const ASliver<T, kTileRows<kBytes>>& a,
                                    const T* b, T* c, int64_t ldc, bool accumulate, int m,
                                    int n) {
  using S = Simd<T, kBytes>;
  using Vec = typename S::Vec;
  constexpr int kRows = kTileRows<kBytes>;
  constexpr int kWidth = kLanes<T, kBytes>;
  // acc[i][h]: columns [h * kWidth, (h + 1) * kWidth) of row i. Fully unrolled, the
  // array lives in registers.
  Vec acc[kRows][2];
  const T* rows[kRows];
  const int64_t step = a.step;
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i) {
    acc[i][0] = acc[i][1] = Vec{};
    rows[i] = a.row[i];
  }
  // A transposed A read in place steps a cache line (often a page) per depth, which
  // the hardware prefetchers miss: fetch its rows 32 depths ahead.
  const int64_t ahead = step > kRows ? 32 * step : 0;
  for (int64_t p = 0, offset = 0; p < kc; ++p, offset += step) {
    if (ahead != 0) __builtin_prefetch(rows[0] + offset + ahead);
    const Vec b0 = S::Load(b);
    const Vec b1 = S::Load(b + kWidth);
#pragma GCC unroll 16
    for (int i = 0; i < kRows; ++i) {
      const Vec ai = S::Broadcast(rows[i] + offset);
      acc[i][0] = S::Fma(ai, b0, acc[i][0]);
      acc[i][1] = S::Fma(ai, b1, acc[i][1]);
    }
    b += 2 * kWidth;
  }
  if (m == kRows && n == 2 * kWidth) {
#pragma GCC unroll 16
    for (int i = 0; i < kRows; ++i) {
      T* row = c + i * ldc;
      Vec lo = acc[i][0];
      Vec hi = acc[i][1];
      if (accumulate) {
        lo = S::Add(lo, S::Load(row));
        hi = S::Add(hi, S::Load(row + kWidth));
      }
      S::Store(row, lo);
      S::Store(row + kWidth, hi);
    }
    return;
  }
  T tile[kRows * 2 * kWidth];
#pragma GCC unroll 16
  for (int i = 0; i < kRows; ++i) {
    S::Store(tile + 2 * kWidth * i, acc[i][0]);
    S::Store(tile + 2 * kWidth * i + kWidth, acc[i][1]);
  }
  StoreTile(tile, 2 * kWidth, c, ldc, accumulate, m, n);
}

// The micro-kernel compiled for each instruction set (`flatten` inlines it and its
// operations here).
template <typename T>
__attribute__((target("avx2,fma"), flatten)) void Avx2MicroKernel(
    int64_t kc, const ASliver<T, kTileRows<32>>& a, const T* b, T* c, int64_t ldc,
    bool accumulate, int m, int n) {
  RegisterTileMicroKernel<T, 32>(kc, a, b, c, ldc, accumulate, m, n);
}

template <typename T>
__attribute__((target("avx512f"), flatten)) void Avx512MicroKernel(
    int64_t kc, const ASliver<T, kTileRows<64>>& a, const T* b, T* c, int64_t ldc,
    bool accumulate, int m, int n) {
  RegisterTileMicroKernel<T, 64>(kc, a, b, c, ldc, accumulate, m, n);
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
  // Depth of one packed panel: an NR-column micro-panel of B fills kMicroPanelBytes.
  const int64_t block_k = kMicroPanelBytes / (NR * static_cast<int64_t>(sizeof(T)));
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
        for (int64_t p0 = 0; p0 < k; p0 += block_k) {
          const int64_t kc = std::min(block_k, k - p0);
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
      if (pack_a) packed_a.resize(static_cast<size_t>(kMaxBlockM * block_k));
      for (int64_t p0 = 0; p0 < k; p0 += block_k) {
        const int64_t kc = std::min(block_k, k - p0);
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

bool CpuHasAvx512() {
#ifdef E2E_TF_HAVE_X86
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
#else
  return false;
#endif
}

namespace {

// The widest instruction set the GEMM may use: the CPU's, unless the environment
// variable E2E_TF_CPU_GEMM_ISA names a narrower one ("avx2" or "portable"), which lets
// tests check every micro-kernel on one machine.
enum class Isa { kPortable, kAvx2, kAvx512 };

Isa GemmIsa() {
  static const Isa isa = [] {
    Isa best = CpuHasAvx512() ? Isa::kAvx512 : CpuHasAvx2Fma() ? Isa::kAvx2 : Isa::kPortable;
    const char* forced = std::getenv("E2E_TF_CPU_GEMM_ISA");
    if (forced == nullptr) return best;
    const std::string name(forced);
    if (name == "portable") return Isa::kPortable;
    if (name == "avx2") return std::min(best, Isa::kAvx2);
    return best;
  }();
  return isa;
}

}  // namespace

// The widest kernel the CPU runs: AVX-512, AVX2+FMA, else the portable one.
template <typename T>
void Gemm(const ParallelFor& parallel_for, int64_t m, int64_t n, int64_t k, MatrixView<T> a,
          MatrixView<T> b, T* c, int64_t ldc, bool accumulate) {
#ifdef E2E_TF_HAVE_X86
  const Isa isa = GemmIsa();
  if (isa == Isa::kAvx512) {
    PackedGemm<T, kTileRows<64>, 2 * kLanes<T, 64>>(parallel_for, &Avx512MicroKernel<T>, m, n,
                                                      k, a, b, c, ldc, accumulate);
    return;
  }
  if (isa == Isa::kAvx2) {
    PackedGemm<T, kTileRows<32>, 2 * kLanes<T, 32>>(parallel_for, &Avx2MicroKernel<T>, m, n, k, a, b, c,
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
