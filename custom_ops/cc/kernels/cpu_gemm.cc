// Packed CPU GEMM (see cpu_gemm.h): the classic three-level blocking (panels of B
// and blocks of A packed into micro-panels, an MR x NR register-tile micro-kernel),
// parallel over blocks of rows of C.

#include "cpu_gemm.h"

#include <algorithm>
#include <cstring>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define E2E_TF_HAVE_X86 1
#endif

namespace e2e_tf {
namespace {

constexpr int64_t kBlockK = 256;   // depth of one packed panel (B micro-panel ~16 KB: L1)
constexpr int64_t kMaxBlockM = 96;  // rows of A packed at once (~96 KB: L2)
constexpr int64_t kBlockN = 1024;   // columns of B packed at once (~1 MB panel: L3)
constexpr int64_t kTargetTiles = 16;  // enough blocks of rows to balance the threads

template <typename T>
using MicroKernel = void (*)(int64_t kc, const T* a, const T* b, T* c, int64_t ldc,
                             bool accumulate, int m, int n);

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
void GenericMicroKernel(int64_t kc, const T* a, const T* b, T* c, int64_t ldc, bool accumulate,
                        int m, int n) {
  T acc[MR * NR] = {};
  for (int64_t p = 0; p < kc; ++p) {
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
      for (int j = 0; j < NR; ++j) acc[i * NR + j] += ai * b[j];
    }
    a += MR;
    b += NR;
  }
  StoreTile(acc, NR, c, ldc, accumulate, m, n);
}

#ifdef E2E_TF_HAVE_X86
// 6 x 16 float tile in 12 AVX registers, FMA per broadcast element of A.
__attribute__((target("avx2,fma"))) void Avx2MicroKernel6x16(int64_t kc, const float* a,
                                                             const float* b, float* c,
                                                             int64_t ldc, bool accumulate,
                                                             int m, int n) {
  // acc[i][h]: columns [8h, 8h + 8) of row i. Fully unrolled, the array lives in
  // registers.
  __m256 acc[6][2];
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) acc[i][0] = acc[i][1] = _mm256_setzero_ps();
  for (int64_t p = 0; p < kc; ++p) {
    const __m256 b0 = _mm256_loadu_ps(b);
    const __m256 b1 = _mm256_loadu_ps(b + 8);
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
      const __m256 ai = _mm256_broadcast_ss(a + i);
      acc[i][0] = _mm256_fmadd_ps(ai, b0, acc[i][0]);
      acc[i][1] = _mm256_fmadd_ps(ai, b1, acc[i][1]);
    }
    a += 6;
    b += 16;
  }
  if (m == 6 && n == 16) {
#pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) {
      float* row = c + i * ldc;
      __m256 lo = acc[i][0];
      __m256 hi = acc[i][1];
      if (accumulate) {
        lo = _mm256_add_ps(lo, _mm256_loadu_ps(row));
        hi = _mm256_add_ps(hi, _mm256_loadu_ps(row + 8));
      }
      _mm256_storeu_ps(row, lo);
      _mm256_storeu_ps(row + 8, hi);
    }
    return;
  }
  alignas(32) float tile[6 * 16];
#pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) {
    _mm256_store_ps(tile + 16 * i, acc[i][0]);
    _mm256_store_ps(tile + 16 * i + 8, acc[i][1]);
  }
  StoreTile(tile, 16, c, ldc, accumulate, m, n);
}

bool CpuHasAvx2Fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
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

template <typename T, int MR, int NR>
void PackedGemm(const ParallelFor& parallel_for, MicroKernel<T> kernel, int64_t m, int64_t n,
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
  // One packed panel of B is shared by all threads (packing it per tile would copy B
  // once per block of rows); each thread packs its own blocks of A.
  std::vector<T> packed_b(static_cast<size_t>(((std::min(n, kBlockN) + NR - 1) / NR) * NR *
                                              std::min(k, kBlockK)));
  for (int64_t j0 = 0; j0 < n; j0 += kBlockN) {
    const int64_t nc = std::min(kBlockN, n - j0);
    const int64_t slivers = (nc + NR - 1) / NR;
    for (int64_t p0 = 0; p0 < k; p0 += kBlockK) {
      const int64_t kc = std::min(kBlockK, k - p0);
      const bool add = accumulate || p0 > 0;
      parallel_for(slivers, kc * NR * 2, [&](int64_t begin, int64_t end) {
        for (int64_t s = begin; s < end; ++s) {
          const int64_t jr = s * NR;
          PackB<T, NR>(b, p0, kc, j0 + jr, std::min<int64_t>(NR, nc - jr),
                       packed_b.data() + jr * kc);
        }
      });
      const int64_t cost = 2 * block_m * nc * kc / 16;  // ~16 flops a cycle
      parallel_for(m_blocks, cost, [&](int64_t begin, int64_t end) {
        thread_local std::vector<T> packed_a;
        packed_a.resize(static_cast<size_t>(kMaxBlockM * kBlockK));
        for (int64_t block = begin; block < end; ++block) {
          const int64_t i0 = block * block_m;
          const int64_t mc = std::min(block_m, m - i0);
          PackA<T, MR>(a, i0, mc, p0, kc, packed_a.data());
          for (int64_t jr = 0; jr < nc; jr += NR) {
            const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
            for (int64_t ir = 0; ir < mc; ir += MR) {
              const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
              kernel(kc, packed_a.data() + ir * kc, packed_b.data() + jr * kc,
                     c + (i0 + ir) * ldc + j0 + jr, ldc, add, mr, nr);
            }
          }
        }
      });
    }
  }
}

}  // namespace

template <>
void Gemm<float>(const ParallelFor& parallel_for, int64_t m, int64_t n, int64_t k,
                 MatrixView<float> a, MatrixView<float> b, float* c, int64_t ldc,
                 bool accumulate) {
#ifdef E2E_TF_HAVE_X86
  if (CpuHasAvx2Fma()) {
    PackedGemm<float, 6, 16>(parallel_for, &Avx2MicroKernel6x16, m, n, k, a, b, c, ldc,
                             accumulate);
    return;
  }
#endif
  PackedGemm<float, 4, 8>(parallel_for, &GenericMicroKernel<float, 4, 8>, m, n, k, a, b, c, ldc,
                          accumulate);
}

template <>
void Gemm<double>(const ParallelFor& parallel_for, int64_t m, int64_t n, int64_t k,
                  MatrixView<double> a, MatrixView<double> b, double* c, int64_t ldc,
                  bool accumulate) {
  PackedGemm<double, 4, 8>(parallel_for, &GenericMicroKernel<double, 4, 8>, m, n, k, a, b, c,
                           ldc, accumulate);
}

}  // namespace e2e_tf
