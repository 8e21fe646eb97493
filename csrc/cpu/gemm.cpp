// CPU GEMM in the BLIS style: C (M, N) = alpha * op(A) op(B) + beta * C, row-major, float32.
//
// What it computes: op(A) is (M, K) (A stored (M, K) with row stride lda, or (K, M) when trans_a),
// op(B) is (K, N) (B stored (K, N) with row stride ldb, or (N, K) when trans_b). beta == 0 never
// reads C (NaN in C does not leak); K == 0 or alpha == 0 gives C = beta * C (zeros when beta == 0)
// without reading A or B, as BLAS does. It carries the fully-connected layers and, through im2col,
// the CPU convolutions.
//
// How (Goto / BLIS, "Anatomy of High-Performance Matrix Multiplication", and BLIS's five loops):
//   for jc over N in NC columns                      (each thread: its own block of C, see below)
//     for pc over K in KC                            pack op(B)[pc, jc] -> Bp: KC x NC, in NR-wide
//                                                    k-major micro-panels (L3 / L2 resident)
//       for ic over M in MC                          pack alpha*op(A)[ic, pc] -> Ap: MC x KC, in
//                                                    MR-tall k-major micro-panels (L2 resident)
//         for jr over NC in NR                       B micro-panel KC x NR (32 KB) stays in L1
//           for ir over MC in MR                     micro-kernel: C[MR x NR] += Ap_ir Bp_jr
// The transposes are handled once, while packing, so one micro-kernel serves all four cases. With
// AVX-512, both packings that gather across rows (A stored (M, K); B stored (N, K)) go 16 k at a time
// through in-register 16 x 16 transposes; the convolutions' im2col'd A, where each packed element
// feeds only 2 x Kg FLOPs, made the scalar version ~10 % of a conv forward.
// Called from inside an OpenMP parallel region (the convolutions' per-thread chunks), the GEMM runs
// serially on the calling thread.
// Private entry points for the convolutions (gemm_internal.h, all serial): a B packed once and
// shared by many calls (gemm_packed_b), a B whose panels the caller packs from its own data
// (gemm_panel_b: patch panels straight from x), and an A handed out as row pointers
// (gemm_rows_packed_b: patch rows straight from x, no im2col buffer), all through gemm_block.
// Packed panels are zero-padded to whole MR / NR, so the micro-kernel never branches on edges; an
// edge tile is computed into a small local tile and only its valid part is written to C. The first
// K block applies beta (never reading C when beta == 0); later K blocks add.
//
// Micro-kernel (chosen at compile time; the module is built with -march=native):
//   AVX-512: MR x NR = 12 x 32: 24 zmm accumulators + 2 zmm of B + 1 broadcast of A = 27 of 32
//            registers; per k step 2 vector loads + 12 broadcasts feed 24 FMAs (12 cycles of the
//            two 512-bit FMA pipes), so the loads keep up and the 4-cycle FMA latency is hidden.
//   AVX2:    6 x 16: 12 ymm accumulators (the classic Haswell shape).
//   other:   4 x 16 plain C++ that the compiler vectorises for whatever the target has.
// Blocking: KC = 256 (a 32-float B micro-panel of 256 k is 32 KB, within the 48 KB L1d of the
// AMD Zen 5 it was tuned on, and of the Intel Xeon with AMX some sessions run on); MC = 144 (Ap = 144 KB
// of a 1-2 MB L2; covers a batch of 128 in one block); NC = 1024
// (Bp = 1 MB, L2/L3). Packing buffers are per thread, 64-byte aligned, allocated once per thread
// (thread_local) and reused by every call.
//
// Threads: C is split into a tm x tn grid of blocks (tm * tn <= threads), chosen to minimise the
// largest block's cost (micro-tiles computed plus elements packed); each thread runs the five
// loops above on its block with its own buffers, so no synchronisation inside, and any thread
// count is correct. For fc6 (M = 128) the split is over N, and each thread packs only its half
// of the weights.
//
// Napkin math (the machine it was tuned on: AMD EPYC Zen 5, 2 cores, AVX-512 with two 512-bit FMA pipes):
//   peak = 2 pipes x 16 lanes x 2 FLOP x ~4.1 GHz = ~265 GFLOP/s per core, ~530 on 2 cores
//   (measured with a register-only FMA loop, 12 independent chains: 265 / 1 thread, 515 / 2).
//   fc6 forward: 2 * 128 * 4096 * 9216 = 9.66 GFLOP -> 18 ms at peak; the weights (151 MB) are
//   read once, 64 FLOP per byte, so it is compute-bound. Measured (benchmarks/bench_gemm.py, 2
//   threads, best of 5, on a quiet machine): fc6 forward 278 GFLOP/s (34.8 ms, torch 189; before
//   the 16 x 16 transposed packing, which took fc7 forward from 293 to 359), fc6
//   backward data 337, backward weights 452, fc7 forward 359, fc8 forward 379: 55-90 % of peak.
//   The M = 128 shapes lose most to packing the weights (each weight feeds only 2 * 128 FLOP);
//   with the cores shared by other jobs the big shapes drop to ~170 (so does torch, to ~80).
//
// Accuracy: every C element is a float32 sum, KC terms at a time in a register (blocked
// summation), so the error grows like eps * (sqrt(KC) + sqrt(K / KC)) rather than eps * sqrt(K):
// ~1e-6 relative at K = 9216.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <vector>

#include "backend.h"
#include "gemm_bf16.h"
#include "gemm_internal.h"
#include "parallel.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
#ifdef CONVNET_WITH_OPENMP
#include <omp.h>
#endif

namespace convnet {
namespace cpu {

namespace {

// ---------------------------------------------------------------------------------------------
// blocking constants

#if defined(__AVX512F__)
constexpr int MR = 12, NR = 32;
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int MR = 6, NR = 16;
#else
constexpr int MR = 4, NR = 16;
#endif
constexpr int KC = 256;
constexpr int MC = MR * 12;     // 144 (AVX-512), 72 (AVX2), 48 (portable)
constexpr int NC = NR * 32;     // 1024 (AVX-512), 512, 512
static_assert(MC % MR == 0 && NC % NR == 0, "blocks are whole micro-tiles");

// Below this many multiply-adds a parallel region costs more than it saves.
constexpr int64_t kParallelMultiplyAdds = 1 << 18;

// The GEMM's (and GEMV's) thread-count selector: serial below kParallelMultiplyAdds or inside a
// parallel region (no nested teams); forced_path() (parallel.h) overrides the size rule for tests.
int select_gemm_threads(int64_t work, bool nested) {
  if (nested) return 1;
  switch (forced_path()) {
    case ForcedPath::Serial: return 1;
    case ForcedPath::Parallel: return num_threads();
    default: return work < kParallelMultiplyAdds ? 1 : num_threads();
  }
}

// ---------------------------------------------------------------------------------------------
// per-thread packing buffers

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};

float* aligned_floats(size_t n) {
  const size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw_workspace_oom("gemm", bytes);
  return static_cast<float*>(p);
}

// Allocated on a thread's first GEMM, kept for the thread's life (OpenMP reuses its pool threads).
struct PackBuffers {
  float* a = nullptr;  // MC x KC
  float* b = nullptr;  // KC x NC
  PackBuffers() : a(aligned_floats(static_cast<size_t>(MC) * KC)), b(aligned_floats(static_cast<size_t>(KC) * NC)) {}
  ~PackBuffers() {
    std::free(a);
    std::free(b);
  }
  PackBuffers(const PackBuffers&) = delete;
  PackBuffers& operator=(const PackBuffers&) = delete;
};

PackBuffers& pack_buffers() {
  thread_local PackBuffers buffers;
  return buffers;
}

// ---------------------------------------------------------------------------------------------
// packing

#if defined(__AVX512F__)
// The zero-masked forms with a full mask compile to the plain instructions; the plain intrinsics
// trip GCC 12's -Wmaybe-uninitialized on their internal _mm512_undefined_ps() (a GCC bug).
inline __m512 unpacklo_ps(__m512 a, __m512 b) { return _mm512_maskz_unpacklo_ps(0xFFFF, a, b); }
inline __m512 unpackhi_ps(__m512 a, __m512 b) { return _mm512_maskz_unpackhi_ps(0xFFFF, a, b); }
inline __m512d unpacklo_pd(__m512d a, __m512d b) { return _mm512_maskz_unpacklo_pd(0xFF, a, b); }
inline __m512d unpackhi_pd(__m512d a, __m512d b) { return _mm512_maskz_unpackhi_pd(0xFF, a, b); }
template <int IMM>
inline __m512 shuffle_f32x4(__m512 a, __m512 b) { return _mm512_maskz_shuffle_f32x4(0xFFFF, a, b, IMM); }

// dst[c * ldd + r] = src[r * lds + c] for a 16 x 16 block: unpack pairs of rows, then pairs of
// pairs (as doubles), then gather 128-bit lanes across the four groups of four rows.
inline void transpose16x16(const float* src, int64_t lds, float* dst, int64_t ldd) {
  __m512 u[4][4];  // u[g][c]: lane L holds column 4L + c of rows 4g .. 4g+3
  for (int g = 0; g < 4; ++g) {
    const __m512 a = _mm512_loadu_ps(src + (4 * g + 0) * lds), b = _mm512_loadu_ps(src + (4 * g + 1) * lds);
    const __m512 c = _mm512_loadu_ps(src + (4 * g + 2) * lds), d = _mm512_loadu_ps(src + (4 * g + 3) * lds);
    const __m512d t0 = _mm512_castps_pd(unpacklo_ps(a, b)), t1 = _mm512_castps_pd(unpackhi_ps(a, b));
    const __m512d t2 = _mm512_castps_pd(unpacklo_ps(c, d)), t3 = _mm512_castps_pd(unpackhi_ps(c, d));
    u[g][0] = _mm512_castpd_ps(unpacklo_pd(t0, t2));
    u[g][1] = _mm512_castpd_ps(unpackhi_pd(t0, t2));
    u[g][2] = _mm512_castpd_ps(unpacklo_pd(t1, t3));
    u[g][3] = _mm512_castpd_ps(unpackhi_pd(t1, t3));
  }
  for (int c = 0; c < 4; ++c) {
    // 0x88 takes lanes 0, 2 of each operand; 0xDD lanes 1, 3.
    const __m512 v0 = shuffle_f32x4<0x88>(u[0][c], u[1][c]), v1 = shuffle_f32x4<0xDD>(u[0][c], u[1][c]);
    const __m512 w0 = shuffle_f32x4<0x88>(u[2][c], u[3][c]), w1 = shuffle_f32x4<0xDD>(u[2][c], u[3][c]);
    _mm512_storeu_ps(dst + (c + 0) * ldd, shuffle_f32x4<0x88>(v0, w0));
    _mm512_storeu_ps(dst + (c + 8) * ldd, shuffle_f32x4<0xDD>(v0, w0));
    _mm512_storeu_ps(dst + (c + 4) * ldd, shuffle_f32x4<0x88>(v1, w1));
    _mm512_storeu_ps(dst + (c + 12) * ldd, shuffle_f32x4<0xDD>(v1, w1));
  }
}

// r[j] <- column j of the 16 x 16 block whose row i is r[i] (same network as above, in registers).
inline void transpose16_regs(__m512 r[16]) {
  __m512 u[4][4];
  for (int g = 0; g < 4; ++g) {
    const __m512d t0 = _mm512_castps_pd(unpacklo_ps(r[4 * g], r[4 * g + 1]));
    const __m512d t1 = _mm512_castps_pd(unpackhi_ps(r[4 * g], r[4 * g + 1]));
    const __m512d t2 = _mm512_castps_pd(unpacklo_ps(r[4 * g + 2], r[4 * g + 3]));
    const __m512d t3 = _mm512_castps_pd(unpackhi_ps(r[4 * g + 2], r[4 * g + 3]));
    u[g][0] = _mm512_castpd_ps(unpacklo_pd(t0, t2));
    u[g][1] = _mm512_castpd_ps(unpackhi_pd(t0, t2));
    u[g][2] = _mm512_castpd_ps(unpacklo_pd(t1, t3));
    u[g][3] = _mm512_castpd_ps(unpackhi_pd(t1, t3));
  }
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = shuffle_f32x4<0x88>(u[0][c], u[1][c]), v1 = shuffle_f32x4<0xDD>(u[0][c], u[1][c]);
    const __m512 w0 = shuffle_f32x4<0x88>(u[2][c], u[3][c]), w1 = shuffle_f32x4<0xDD>(u[2][c], u[3][c]);
    r[c + 0] = shuffle_f32x4<0x88>(v0, w0);
    r[c + 8] = shuffle_f32x4<0xDD>(v0, w0);
    r[c + 4] = shuffle_f32x4<0x88>(v1, w1);
    r[c + 12] = shuffle_f32x4<0xDD>(v1, w1);
  }
}
#endif

// Ap <- alpha * op(A)[i0 : i0+mc, k0 : k0+kc] as ceil(mc/MR) micro-panels, each kc x MR (k-major:
// the MR values of one k are adjacent, which is what the micro-kernel broadcasts). Rows past mc are
// zero.
void pack_a(bool trans_a, const float* A, int64_t lda, int i0, int mc, int k0, int kc, float alpha, float* Ap) {
  for (int ip = 0; ip < mc; ip += MR) {
    const int mr = std::min(MR, mc - ip);
    float* dst = Ap + static_cast<int64_t>(ip) * kc;
    if (trans_a) {
      // A stored (K, M): the MR values of one k are contiguous in memory.
#if defined(__AVX512F__)
      if (mr == MR) {  // one masked 12-float load and store per k
        static_assert(MR <= 16, "one vector per k");
        const __mmask16 m = static_cast<__mmask16>((1u << MR) - 1u);
        const __m512 va = _mm512_set1_ps(alpha);
        for (int k = 0; k < kc; ++k) {
          const float* src = A + static_cast<int64_t>(k0 + k) * lda + i0 + ip;
          _mm512_mask_storeu_ps(dst + k * MR, m, _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, src)));
        }
        continue;
      }
#endif
      for (int k = 0; k < kc; ++k) {
        const float* src = A + static_cast<int64_t>(k0 + k) * lda + i0 + ip;
        float* d = dst + k * MR;
        int i = 0;
        for (; i < mr; ++i) d[i] = alpha * src[i];
        for (; i < MR; ++i) d[i] = 0.0f;
      }
    } else {
      // A stored (M, K): each row is contiguous in k; write it with stride MR.
      int kb = 0;
#if defined(__AVX512F__)
      // 16 k at a time: load 16 k of each of the MR rows (zero rows above MR), transpose in
      // registers, store each k's MR values with one masked store: 12 loads + 16 stores instead of
      // 192 scalar load/store pairs. This packing is the im2col'd patch matrix of every conv
      // forward, where each packed element feeds only 2 * Kg FLOPs (256 for conv2 per group).
      if (mr == MR) {
        static_assert(MR <= 16, "a panel's rows fit one 16 x 16 transpose");
        const __mmask16 m = static_cast<__mmask16>((1u << MR) - 1u);
        const __m512 va = _mm512_set1_ps(alpha);
        for (; kb + 16 <= kc; kb += 16) {
          __m512 r[16];
          for (int i = 0; i < 16; ++i)
            r[i] = i < MR ? _mm512_loadu_ps(A + static_cast<int64_t>(i0 + ip + i) * lda + k0 + kb) : _mm512_setzero_ps();
          transpose16_regs(r);
          for (int j = 0; j < 16; ++j) _mm512_mask_storeu_ps(dst + (kb + j) * MR, m, _mm512_mul_ps(va, r[j]));
        }
      }
#endif
      for (int i = 0; i < mr; ++i) {
        const float* src = A + static_cast<int64_t>(i0 + ip + i) * lda + k0;
        for (int k = kb; k < kc; ++k) dst[k * MR + i] = alpha * src[k];
      }
      for (int i = mr; i < MR; ++i)
        for (int k = kb; k < kc; ++k) dst[k * MR + i] = 0.0f;
    }
  }
}

// Ap <- alpha * A[i0 : i0+mc, k0 : k0+kc] with A's rows handed out by a RowSource (gemm_internal.h):
// the same panels as pack_a's (M, K) case, 16 k at a time through the in-register transpose, the
// row pointers refreshed at every `run` boundary. k0 and kc are multiples of 16.
void pack_a_rows(const RowSource& src, int i0, int mc, int k0, int kc, float alpha, float* Ap) {
  const float* ptrs[MR];
  for (int ip = 0; ip < mc; ip += MR) {
    const int mr = std::min(MR, mc - ip);
    float* dst = Ap + static_cast<int64_t>(ip) * kc;
    int base = -1;  // the run the pointers are for
    for (int kb = 0; kb < kc; kb += 16) {
      const int j = k0 + kb, jb = j - j % src.run;
      if (jb != base) {
        src.rows(src.ctx, i0 + ip, mr, jb, ptrs);
        base = jb;
      }
      const int off = j - jb;
#if defined(__AVX512F__)
      static_assert(MR <= 16, "a panel's rows fit one 16 x 16 transpose");
      const __mmask16 m = static_cast<__mmask16>((1u << MR) - 1u);
      const __m512 va = _mm512_set1_ps(alpha);
      __m512 r[16];
      for (int i = 0; i < 16; ++i)
        r[i] = (i < mr && ptrs[i]) ? _mm512_loadu_ps(ptrs[i] + off) : _mm512_setzero_ps();
      transpose16_regs(r);
      for (int t = 0; t < 16; ++t) _mm512_mask_storeu_ps(dst + (kb + t) * MR, m, _mm512_mul_ps(va, r[t]));
#else
      for (int i = 0; i < MR; ++i)
        for (int t = 0; t < 16; ++t)
          dst[(kb + t) * MR + i] = (i < mr && ptrs[i]) ? alpha * ptrs[i][off + t] : 0.0f;
#endif
    }
  }
}

// Bp <- op(B)[k0 : k0+kc, j0 : j0+nc] as ceil(nc/NR) micro-panels, each kc x NR (k-major: the NR
// values of one k are adjacent, one or two vector loads). Columns past nc are zero.
void pack_b(bool trans_b, const float* B, int64_t ldb, int k0, int kc, int j0, int nc, float* Bp) {
  for (int jp = 0; jp < nc; jp += NR) {
    const int nr = std::min(NR, nc - jp);
    float* dst = Bp + static_cast<int64_t>(jp) * kc;
    if (!trans_b) {
      // B stored (K, N): one k's NR values are contiguous: a straight copy.
      for (int k = 0; k < kc; ++k) {
        const float* src = B + static_cast<int64_t>(k0 + k) * ldb + j0 + jp;
        float* d = dst + k * NR;
        if (nr == NR) {
          std::memcpy(d, src, NR * sizeof(float));
        } else {
          int j = 0;
          for (; j < nr; ++j) d[j] = src[j];
          for (; j < NR; ++j) d[j] = 0.0f;
        }
      }
    } else {
      // B stored (N, K) (the fc weights): NR rows, each contiguous in k. Go down the rows a few k
      // at a time so each source row is read in cache-line runs while the destination (kc x NR,
      // 32 KB) stays in L1.
      constexpr int KB = 16;
      int kb = 0;
#if defined(__AVX512F__)
      // Whole 16 x 16 blocks: 16 row loads, an in-register transpose, 16 stores (vs 256 scalar
      // load/store pairs). This is the fc forward's weight packing, most of its non-FMA time.
      if (nr == NR) {
        for (; kb + 16 <= kc; kb += 16) {
          for (int jh = 0; jh < NR; jh += 16) {
            const float* src = B + static_cast<int64_t>(j0 + jp + jh) * ldb + k0 + kb;
            transpose16x16(src, ldb, dst + kb * NR + jh, NR);
          }
        }
      }
#endif
      for (; kb < kc; kb += KB) {
        const int kn = std::min(KB, kc - kb);
        for (int j = 0; j < nr; ++j) {
          const float* src = B + static_cast<int64_t>(j0 + jp + j) * ldb + k0 + kb;
          float* d = dst + kb * NR + j;
          for (int k = 0; k < kn; ++k) d[k * NR] = src[k];
        }
        for (int j = nr; j < NR; ++j)
          for (int k = 0; k < kn; ++k) dst[(kb + k) * NR + j] = 0.0f;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// micro-kernels: C[MR x NR] (row stride ldc) = acc + beta * C, acc = sum over kc of Ap[k] (x) Bp[k].
// beta == 0 stores without reading C; beta == 1 adds (the later K blocks).

#if defined(__AVX512F__)

inline void micro_kernel(int kc, const float* __restrict Ap, const float* __restrict Bp, float* __restrict C,
                         int64_t ldc, float beta) {
  __m512 c0[MR], c1[MR];
#pragma GCC unroll 12
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int k = 0; k < kc; ++k) {
    const __m512 b0 = _mm512_load_ps(Bp), b1 = _mm512_load_ps(Bp + 16);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      const __m512 a = _mm512_set1_ps(Ap[i]);
      c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
    }
    Ap += MR;
    Bp += NR;
  }
  if (beta == 0.0f) {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      _mm512_storeu_ps(C + i * ldc, c0[i]);
      _mm512_storeu_ps(C + i * ldc + 16, c1[i]);
    }
  } else if (beta == 1.0f) {
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      _mm512_storeu_ps(C + i * ldc, _mm512_add_ps(_mm512_loadu_ps(C + i * ldc), c0[i]));
      _mm512_storeu_ps(C + i * ldc + 16, _mm512_add_ps(_mm512_loadu_ps(C + i * ldc + 16), c1[i]));
    }
  } else {
    const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 12
    for (int i = 0; i < MR; ++i) {
      _mm512_storeu_ps(C + i * ldc, _mm512_fmadd_ps(vb, _mm512_loadu_ps(C + i * ldc), c0[i]));
      _mm512_storeu_ps(C + i * ldc + 16, _mm512_fmadd_ps(vb, _mm512_loadu_ps(C + i * ldc + 16), c1[i]));
    }
  }
}

#elif defined(__AVX2__) && defined(__FMA__)

inline void micro_kernel(int kc, const float* __restrict Ap, const float* __restrict Bp, float* __restrict C,
                         int64_t ldc, float beta) {
  __m256 c0[MR], c1[MR];
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm256_setzero_ps();
#pragma GCC unroll 2
  for (int k = 0; k < kc; ++k) {
    const __m256 b0 = _mm256_load_ps(Bp), b1 = _mm256_load_ps(Bp + 8);
#pragma GCC unroll 6
    for (int i = 0; i < MR; ++i) {
      const __m256 a = _mm256_broadcast_ss(Ap + i);
      c0[i] = _mm256_fmadd_ps(a, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(a, b1, c1[i]);
    }
    Ap += MR;
    Bp += NR;
  }
  const __m256 vb = _mm256_set1_ps(beta);
#pragma GCC unroll 6
  for (int i = 0; i < MR; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.0f) {
      _mm256_storeu_ps(c, c0[i]);
      _mm256_storeu_ps(c + 8, c1[i]);
    } else {
      _mm256_storeu_ps(c, _mm256_fmadd_ps(vb, _mm256_loadu_ps(c), c0[i]));
      _mm256_storeu_ps(c + 8, _mm256_fmadd_ps(vb, _mm256_loadu_ps(c + 8), c1[i]));
    }
  }
}

#else

// Portable: the accumulator tile is a local array the compiler keeps in vector registers where
// it can.
inline void micro_kernel(int kc, const float* __restrict Ap, const float* __restrict Bp, float* __restrict C,
                         int64_t ldc, float beta) {
  float acc[MR][NR] = {};
  for (int k = 0; k < kc; ++k) {
    for (int i = 0; i < MR; ++i) {
      const float a = Ap[i];
      for (int j = 0; j < NR; ++j) acc[i][j] += a * Bp[j];
    }
    Ap += MR;
    Bp += NR;
  }
  store_tile(&acc[0][0], NR, C, ldc, MR, NR, beta);
}

#endif

// ---------------------------------------------------------------------------------------------
// the five loops, on one block of C: rows [m0, m1), columns [n0, n1)

struct Problem {
  bool trans_a, trans_b;
  int K;
  float alpha, beta;
  const float* A;
  int64_t lda;
  const float* B;
  int64_t ldb;
  float* C;
  int64_t ldc;
  // A prepacked B already rounded to BF16 (convert_packed_b_block), used instead of the FP32 Bpre
  // under BF16; null otherwise.
  const uint32_t* B16 = nullptr;
};

// ---------------------------------------------------------------------------------------------
// the five loops in BF16 (gemm_bf16.h): K blocks of KC16 = 512, B micro-panels (and the non-AMX
// kernels' A panels) through the FP32 packers into an L1-resident staging panel and rounded to BF16
// pairs at once, AMX A panels rounded straight from A (gemm_bf16.cpp)

// BF16's K block: twice FP32's KC, so that the packed panels take the same bytes as FP32's (a B
// micro-panel of 256 pairs x 32 columns = 32 KB, in L1) and C is read and written half as often per
// K (with AMX, a 24 x 32 C round trip per 128 pairs cost as much as the tile products). A BF16 block
// is two FP32 blocks of a prepacked B (gemm_internal.h), rounded one half at a time.
constexpr int KC16 = 2 * KC;

struct Bf16Buffers {
  uint32_t* a = nullptr;  // MC x KC16/2 pairs
  uint32_t* b = nullptr;  // KC16/2 x NC pairs
  float* stage = nullptr;  // one FP32 micro-panel, KC x max(MR, NR)
  Bf16Buffers()
      : a(reinterpret_cast<uint32_t*>(aligned_floats(static_cast<size_t>(MC) * KC16 / 2))),
        b(reinterpret_cast<uint32_t*>(aligned_floats(static_cast<size_t>(KC16) / 2 * NC))),
        stage(aligned_floats(static_cast<size_t>(KC) * std::max(MR, NR))) {}
  ~Bf16Buffers() {
    std::free(a);
    std::free(b);
    std::free(stage);
  }
  Bf16Buffers(const Bf16Buffers&) = delete;
  Bf16Buffers& operator=(const Bf16Buffers&) = delete;
};
static_assert(KC % 2 == 0, "whole k pairs per full K block");

Bf16Buffers& bf16_buffers() {
  thread_local Bf16Buffers buffers;
  return buffers;
}

void gemm_block_bf16(const Problem& p, int m0, int m1, int n0, int n1, const float* Bpre, int64_t Np,
                     const PanelSource* Bsrc, const RowSource* Asrc);

// Bpre: op(B) already packed whole (gemm_internal.h layout, Np floats per k row), or null to pack
// each (K block, column block) here.
// Bsrc: op(B) packed panel by panel by the caller (gemm_internal.h), or null.
// Asrc: A's rows handed out by the caller (gemm_internal.h), or null.
void gemm_block(const Problem& p, int m0, int m1, int n0, int n1, const float* Bpre = nullptr, int64_t Np = 0,
                const PanelSource* Bsrc = nullptr, const RowSource* Asrc = nullptr) {
  if (gemm_precision() == Precision::BF16) {
    gemm_block_bf16(p, m0, m1, n0, n1, Bpre, Np, Bsrc, Asrc);
    return;
  }
  PackBuffers& buf = pack_buffers();
  alignas(64) float tile[MR * NR];
  for (int jc = n0; jc < n1; jc += NC) {
    const int nc = std::min(NC, n1 - jc);
    for (int pc = 0; pc < p.K; pc += KC) {
      const int kc = std::min(KC, p.K - pc);
      const float beta = pc == 0 ? p.beta : 1.0f;
      const float* bpanels = Bpre ? Bpre + static_cast<int64_t>(pc) * Np + static_cast<int64_t>(jc) * kc : buf.b;
      if (Bsrc) {
        for (int jp = 0; jp < nc; jp += NR) Bsrc->pack(Bsrc->ctx, pc, kc, jc + jp, buf.b + static_cast<int64_t>(jp) * kc);
      } else if (!Bpre) {
        pack_b(p.trans_b, p.B, p.ldb, pc, kc, jc, nc, buf.b);
      }
      for (int ic = m0; ic < m1; ic += MC) {
        const int mc = std::min(MC, m1 - ic);
        if (Asrc) pack_a_rows(*Asrc, ic, mc, pc, kc, p.alpha, buf.a);
        else pack_a(p.trans_a, p.A, p.lda, ic, mc, pc, kc, p.alpha, buf.a);
        for (int jr = 0; jr < nc; jr += NR) {
          const int nr = std::min(NR, nc - jr);
          const float* bp = bpanels + static_cast<int64_t>(jr) * kc;
          for (int ir = 0; ir < mc; ir += MR) {
            const int mr = std::min(MR, mc - ir);
            const float* ap = buf.a + static_cast<int64_t>(ir) * kc;
            float* c = p.C + static_cast<int64_t>(ic + ir) * p.ldc + jc + jr;
            if (mr == MR && nr == NR) {
              micro_kernel(kc, ap, bp, c, p.ldc, beta);
            } else {
              // Edge tile: compute the whole padded tile locally, write back only mr x nr.
              micro_kernel(kc, ap, bp, tile, NR, 0.0f);
              store_tile(tile, NR, c, p.ldc, mr, nr, beta);
            }
          }
        }
      }
    }
  }
}

// The BF16 kernel of this build's tile shapes: AMX needs NR = 32 and MR <= 16 (a tile's rows).
Bf16Kernel gemm_bf16_kernel() {
  const Bf16Kernel kern = select_bf16_kernel();
  return kern == Bf16Kernel::Amx && !(NR == 32 && MR <= 16) ? Bf16Kernel::Avx512Bf16 : kern;
}

// AMX A panels (row-major, gemm_bf16.h) of rows [i0, i0 + mc) x k [k0, k0 + kc) straight from A: from
// its rows when A is stored (M, K) or handed out by a RowSource (one rounding pass), through 16 x 16
// transposes of pairs when stored (K, M). No k-major FP32 staging panel and no transpose back (the
// FP32 packers' layout is k-major, AMX's A tiles are row-major).
void pack_a_amx_rows(const Problem& p, const RowSource* Asrc, int i0, int mc, int k0, int kc, int kps, uint32_t* Ap) {
  const int kp = (kc + 1) / 2;
  const float* ptrs[MR];
  for (int ip = 0; ip < mc; ip += MR) {
    const int mr = std::min(MR, mc - ip);
    uint32_t* dst = Ap + static_cast<int64_t>(ip) * kps;
    if (Asrc) {  // k0, kc and run are multiples of 16: whole pairs per run
      for (int k = k0; k < k0 + kc;) {
        const int jb = k - k % Asrc->run, n = std::min(jb + Asrc->run, k0 + kc) - k;
        Asrc->rows(Asrc->ctx, i0 + ip, mr, jb, ptrs);
        for (int i = 0; i < mr; ++i)
          if (ptrs[i]) ptrs[i] += k - jb;
        bf16_amx_a_rows(ptrs, mr, n, p.alpha, dst, kps, (k - k0) / 2);
        k += n;
      }
    } else if (p.trans_a) {  // A stored (K, M): 16 x 16 transposes of pairs (zeroes the padding itself)
      bf16_amx_a_cols(p.A + static_cast<int64_t>(k0) * p.lda + i0 + ip, p.lda, mr, MR, kc, kps, p.alpha, dst);
      continue;
    } else {
      for (int i = 0; i < mr; ++i) ptrs[i] = p.A + static_cast<int64_t>(i0 + ip + i) * p.lda + k0;
      bf16_amx_a_rows(ptrs, mr, kc, p.alpha, dst, kps, 0);
    }
    bf16_amx_a_zero(mr, MR, kp, kps, dst);
  }
}

void gemm_block_bf16(const Problem& p, int m0, int m1, int n0, int n1, const float* Bpre, int64_t Np,
                     const PanelSource* Bsrc, const RowSource* Asrc) {
  const Bf16Kernel kern = gemm_bf16_kernel();
  const bool a_rows = kern == Bf16Kernel::Amx;  // AMX A panels packed straight from A (pack_a_amx_rows)
  Bf16Buffers& buf = bf16_buffers();
  if (kern == Bf16Kernel::Amx) bf16_amx_begin(MR);
  alignas(64) float tile[MR * NR];
  for (int jc = n0; jc < n1; jc += NC) {
    const int nc = std::min(NC, n1 - jc);
    for (int pc = 0; pc < p.K; pc += KC16) {
      const int kc = std::min(KC16, p.K - pc), kp = bf16_panel_pairs(kern, (kc + 1) / 2);
      const float beta = pc == 0 ? p.beta : 1.0f;
      // B's panels of this (K block, column block): prerounded (p.B16, gemm_internal.h layout), or
      // rounded here from the FP32 prepacked, caller-packed or packed-here panels, KC rows at a time
      // (the FP32 prepacked layout's blocks; the staging panel stays in L1): rows [h, h + KC) of the
      // block are pairs [h/2, ...) of each BF16 panel.
      const uint32_t* bpanels = buf.b;
      if (p.B16) bpanels = p.B16 + static_cast<int64_t>(pc / 2) * Np + static_cast<int64_t>(jc) * kp;
      for (int jp = 0; jp < nc && !p.B16; jp += NR) {
        for (int h = 0; h < kc; h += KC) {
          const int kh = std::min(KC, kc - h);
          const float* panel = buf.stage;
          if (Bpre) panel = Bpre + static_cast<int64_t>(pc + h) * Np + static_cast<int64_t>(jc + jp) * kh;
          else if (Bsrc) Bsrc->pack(Bsrc->ctx, pc + h, kh, jc + jp, buf.stage);
          else pack_b(p.trans_b, p.B, p.ldb, pc + h, kh, jc + jp, std::min(NR, nc - jp), buf.stage);
          bf16_pack_panel(kern, panel, kh, NR, buf.b + static_cast<int64_t>(jp) * kp + static_cast<int64_t>(h / 2) * NR);
        }
      }
      for (int ic = m0; ic < m1; ic += MC) {
        const int mc = std::min(MC, m1 - ic);
        if (a_rows) pack_a_amx_rows(p, Asrc, ic, mc, pc, kc, kp, buf.a);
        for (int ip = 0; ip < mc && !a_rows; ip += MR) {  // k-major panels (the vdpbf16ps / portable kernels)
          const int mr = std::min(MR, mc - ip);
          for (int h = 0; h < kc; h += KC) {
            const int kh = std::min(KC, kc - h);
            if (Asrc) pack_a_rows(*Asrc, ic + ip, mr, pc + h, kh, p.alpha, buf.stage);
            else pack_a(p.trans_a, p.A, p.lda, ic + ip, mr, pc + h, kh, p.alpha, buf.stage);
            bf16_pack_panel(kern, buf.stage, kh, MR, buf.a + static_cast<int64_t>(ip) * kp + static_cast<int64_t>(h / 2) * MR);
          }
        }
        for (int jr = 0; jr < nc; jr += NR) {
          const int nr = std::min(NR, nc - jr);
          const uint32_t* bp = bpanels + static_cast<int64_t>(jr) * kp;
          for (int ir = 0; ir < mc; ir += MR) {
            const int mr = std::min(MR, mc - ir);
            const uint32_t* ap = buf.a + static_cast<int64_t>(ir) * kp;
            float* c = p.C + static_cast<int64_t>(ic + ir) * p.ldc + jc + jr;
            if constexpr (MR == 12 && NR == 32) {
              if (kern == Bf16Kernel::Amx && nr == NR && mc - ir >= 2 * MR) {
                bf16_amx_micro_kernel_2(kp, ap, bp, c, p.ldc, beta);
                ir += MR;  // two panels done
                continue;
              }
            }
            if (mr == MR && nr == NR) {
              bf16_micro_kernel<MR, NR>(kern, kp, ap, bp, c, p.ldc, beta);
            } else {
              bf16_micro_kernel<MR, NR>(kern, kp, ap, bp, tile, NR, 0.0f);
              store_tile(tile, NR, c, p.ldc, mr, nr, beta);
            }
          }
        }
      }
    }
  }
  if (kern == Bf16Kernel::Amx) bf16_amx_end();
}

// C = beta * C (zeros when beta == 0, never reading C): the K == 0 / alpha == 0 case.
void scale_c(int M, int N, float beta, float* C, int64_t ldc) {
  for (int i = 0; i < M; ++i) {
    float* c = C + i * ldc;
    if (beta == 0.0f) {
      std::fill(c, c + N, 0.0f);
    } else if (beta != 1.0f) {
      for (int j = 0; j < N; ++j) c[j] *= beta;
    }
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Split C over `threads` into tm x tn blocks (whole micro-tiles each) minimising the largest
// block's cost: multiply-adds over packed elements (each thread packs its rows of A and its
// columns of B; packing an element costs about as much as MR*NR/16 multiply-adds... taken as 16).
void choose_grid(int M, int N, int K, int threads, int* tm_out, int* tn_out) {
  const int64_t mt = ceil_div(M, MR), nt = ceil_div(N, NR);
  double best = -1.0;
  *tm_out = *tn_out = 1;
  for (int tm = 1; tm <= threads; ++tm) {
    const int tn = threads / tm;
    if (tm > mt || tn > nt) continue;
    const double rows = static_cast<double>(ceil_div(mt, tm) * MR), cols = static_cast<double>(ceil_div(nt, tn) * NR);
    const double cost = rows * cols * K + 16.0 * (rows + cols) * K;
    if (best < 0.0 || cost < best) {
      best = cost;
      *tm_out = tm;
      *tn_out = tn;
    }
  }
}


// ---------------------------------------------------------------------------------------------
// matrix-vector products: M == 1 or N == 1
//
// A GEMM with one row or one column of C is a GEMV: memory-bound (each element of the matrix is
// used once), so packing it into panels and running a 12 x 32 tile 1/12 or 1/32 full only costs.
// y[r] = alpha * sum_k X(r, k) v[k] + beta * y[r], where X(r, k) = X[r * sr + k * sk] is either
// contiguous along k (sk == 1: a dot product per r) or along r (sr == 1: an axpy per k).
void gemv(int R, int K, float alpha, const float* X, int64_t sr, int64_t sk, const float* v, int64_t incv,
          float beta, float* y, int64_t incy) {
  std::vector<float> av(static_cast<size_t>(K));  // alpha * v, contiguous
  for (int k = 0; k < K; ++k) av[k] = alpha * v[k * incv];
  const float* w = av.data();
  [[maybe_unused]] const bool parallel = select_gemm_threads(static_cast<int64_t>(R) * K, false) > 1;
  auto finish = [&](int r, float dot) {
    float* out = y + r * incy;
    *out = beta == 0.0f ? dot : dot + beta * *out;
  };
  if (sk == 1) {
CONVNET_OMP(parallel for if (parallel) schedule(static))
    for (int r = 0; r < R; ++r) {
      const float* x = X + r * sr;
      // 16 independent partial sums: vectorises without reassociation flags, and sums in blocks.
      float part[16] = {};
      int k = 0;
      for (; k + 16 <= K; k += 16)
        for (int j = 0; j < 16; ++j) part[j] += x[k + j] * w[k + j];
      float dot = 0.0f;
      for (; k < K; ++k) dot += x[k] * w[k];
      for (int j = 0; j < 16; ++j) dot += part[j];
      finish(r, dot);
    }
  } else {
    constexpr int RB = 1024;  // 4 KB of accumulators per chunk of r, in L1
    const int chunks = static_cast<int>(ceil_div(R, RB));
CONVNET_OMP(parallel for if (parallel) schedule(static))
    for (int c = 0; c < chunks; ++c) {
      const int r0 = c * RB, rn = std::min(RB, R - r0);
      alignas(64) float acc[RB];
      std::fill(acc, acc + rn, 0.0f);
      for (int k = 0; k < K; ++k) {
        const float* x = X + k * sk + r0;
        const float wk = w[k];
        for (int r = 0; r < rn; ++r) acc[r] += x[r] * wk;
      }
      for (int r = 0; r < rn; ++r) finish(r0 + r, acc[r]);
    }
  }
}
}  // namespace

// ---------------------------------------------------------------------------------------------
// prepacked B (gemm_internal.h)

int64_t packed_b_floats(int K, int N) { return static_cast<int64_t>(K) * ceil_div(N, NR) * NR; }

int packed_b_blocks(int K) { return static_cast<int>(ceil_div(K, KC)); }

void pack_b_block(bool trans_b, const float* B, int ldb, int K, int N, int blk, float* Bp) {
  const int pc = blk * KC, kc = std::min(KC, K - pc);
  const int64_t Np = ceil_div(N, NR) * NR;
  // Column blocks of NC keep the packing's destination within the sizes pack_b was tuned for; each
  // block's panels land where gemm_block looks for them (offset jc * kc within the K block).
  for (int jc = 0; jc < N; jc += NC)
    pack_b(trans_b, B, ldb, pc, kc, jc, std::min(NC, N - jc), Bp + static_cast<int64_t>(pc) * Np + static_cast<int64_t>(jc) * kc);
}

int64_t packed_b_bf16_words(int K, int N) {
  const int64_t Np = ceil_div(N, NR) * NR;
  int64_t words = 0;
  for (int pc = 0; pc < K; pc += KC16) words += bf16_panel_pairs(Bf16Kernel::Amx, (std::min(KC16, K - pc) + 1) / 2) * Np;
  return words;
}

void convert_packed_b_block(const float* Bp, int K, int N, int blk, uint32_t* B16) {
  static_assert(KC % 32 == 0, "a full K block's pairs are whole AMX tile depths for every kernel");
  const Bf16Kernel kern = gemm_bf16_kernel();
  // FP32 block blk is half blk % 2 of BF16 block blk / 2 (KC16 rows): pairs [h/2, ...) of its panels.
  const int pc = blk * KC, kc = std::min(KC, K - pc);
  const int pc16 = pc - pc % KC16, kp16 = bf16_panel_pairs(kern, (std::min(KC16, K - pc16) + 1) / 2);
  const int64_t Np = ceil_div(N, NR) * NR;
  for (int64_t jp = 0; jp < Np; jp += NR)
    bf16_pack_panel(kern, Bp + static_cast<int64_t>(pc) * Np + jp * kc, kc, NR,
                    B16 + static_cast<int64_t>(pc16 / 2) * Np + jp * kp16 + static_cast<int64_t>((pc - pc16) / 2) * NR);
}

void gemm_packed_b(bool trans_a, int M, int N, int K, float alpha, const float* A, int lda, const float* Bp,
                   float beta, float* C, int ldc, const uint32_t* B16) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  const Problem p{trans_a, false, K, alpha, beta, A, lda, nullptr, 0, C, ldc, B16};
  gemm_block(p, 0, M, 0, N, Bp, ceil_div(N, NR) * NR);
}

int gemm_nr() { return NR; }
int gemm_kc() { return KC; }
int gemm_k_block() { return gemm_precision() == Precision::BF16 ? KC16 : KC; }

void gemm_rows_packed_b(int M, int N, int K, float alpha, const RowSource& a, const float* Bp, float beta, float* C,
                        int ldc, const uint32_t* B16) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  const Problem p{false, false, K, alpha, beta, nullptr, 0, nullptr, 0, C, ldc, B16};
  gemm_block(p, 0, M, 0, N, Bp, ceil_div(N, NR) * NR, nullptr, &a);
}

void gemm_panel_b(bool trans_a, int M, int N, int K, float alpha, const float* A, int lda, const PanelSource& b,
                  float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  const Problem p{trans_a, false, K, alpha, beta, A, lda, nullptr, 0, C, ldc};
  gemm_block(p, 0, M, 0, N, nullptr, 0, &b);
}

// ---------------------------------------------------------------------------------------------
// entry point

void gemm_bias_relu(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
                    const float* B, int ldb, float beta, float* C, int ldc, const float* bias, bool relu) {
  gemm(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
  if (!relu && !bias) return;
  for (int m = 0; m < M; m += (ldc == N ? M : 1)) {  // one call over C when its rows are contiguous
    const int64_t rows = ldc == N ? M : 1;
    if (relu) add_bias_relu(C + static_cast<int64_t>(m) * ldc, bias, rows, N);
    else add_bias(C + static_cast<int64_t>(m) * ldc, bias, rows, N);
  }
}

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.0f) {
    scale_c(M, N, beta, C, ldc);
    return;
  }
  if (M == 1) {  // c (1, N) = alpha * a (1, K) op(B) + beta * c
    if (trans_b) gemv(N, K, alpha, B, ldb, 1, A, trans_a ? lda : 1, beta, C, 1);
    else gemv(N, K, alpha, B, 1, ldb, A, trans_a ? lda : 1, beta, C, 1);
    return;
  }
  if (N == 1) {  // c (M, 1) = alpha * op(A) b (K, 1) + beta * c
    if (trans_a) gemv(M, K, alpha, A, 1, lda, B, trans_b ? 1 : ldb, beta, C, ldc);
    else gemv(M, K, alpha, A, lda, 1, B, trans_b ? 1 : ldb, beta, C, ldc);
    return;
  }
  const Problem p{trans_a, trans_b, K, alpha, beta, A, lda, B, ldb, C, ldc};
  const int64_t work = static_cast<int64_t>(M) * N * K;
  // Called from inside a parallel region (the convolutions run one image chunk per thread), the
  // GEMM runs serially on the calling thread: no nested teams.
  bool nested = false;
#ifdef CONVNET_WITH_OPENMP
  nested = omp_in_parallel() != 0;
#endif
  const int threads = select_gemm_threads(work, nested);
  int tm = 1, tn = 1;
  choose_grid(M, N, K, threads, &tm, &tn);
  if (tm * tn == 1) {
    gemm_block(p, 0, M, 0, N);
    return;
  }
  // Block t covers rows [mb(t / tn), mb(t / tn + 1)) and columns [nb(t % tn), nb(t % tn + 1)),
  // boundaries on whole micro-tiles so only the last block in each direction has edge tiles.
  const int64_t mt = ceil_div(M, MR), nt = ceil_div(N, NR);
  auto mb = [&](int64_t b) { return static_cast<int>(std::min<int64_t>(M, (mt * b / tm) * MR)); };
  auto nb = [&](int64_t b) { return static_cast<int>(std::min<int64_t>(N, (nt * b / tn) * NR)); };
  const int blocks = tm * tn;
  // An exception must not escape an OpenMP region (std::terminate): keep the first, rethrow after.
  std::exception_ptr error;
CONVNET_OMP(parallel for num_threads(blocks) schedule(static, 1))
  for (int t = 0; t < blocks; ++t) {
    const int bi = t / tn, bj = t % tn;
    const int m0 = mb(bi), m1 = mb(bi + 1), n0 = nb(bj), n1 = nb(bj + 1);
    try {
      if (m0 < m1 && n0 < n1) gemm_block(p, m0, m1, n0, n1);
    } catch (...) {
CONVNET_OMP(critical(convnet_gemm_error))
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace cpu
}  // namespace convnet
