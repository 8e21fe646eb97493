// BF16 pieces of the CPU GEMM: the precision setting, FP32 -> BF16 panel packing, and the
// micro-kernels on vdpbf16ps (AVX512-BF16) with a portable kernel of the same precision.
//
// What it computes: see gemm_bf16.h (layout of a BF16 micro-panel, the rounding). gemm.cpp's five
// loops (gemm_block_bf16, K blocks of 512) pack each B micro-panel with the FP32 packers into a small
// staging panel that stays in L1 (32 KB, 256 k at a time) and round it here into BF16 pairs before it
// leaves L1; a conv's prepacked weights are rounded once per call (convert_packed_b_block). AMX's
// row-major A panels are rounded straight from A (bf16_amx_a_rows from rows of an (M, K) A or a row
// source, bf16_amx_a_cols through 16 x 16 transposes from a (K, M) A); the other kernels' k-major A
// panels go through the FP32 packers and the staging panel like B's.
//
// Kernels (select_bf16_kernel, by CPUID; tests force each):
//   AMX-BF16   tdpbf16ps on tiles: per call two 12-row A tiles x two 16-column B tiles (C = 4 tiles of
//              12 x 16 floats), 16 k pairs per step: 4 tile products of 12 x 16 x 32 multiply-adds for
//              4 tile loads. The A panel is stored row-major for it (a tile row = 16 pairs of one row),
//              K pairs padded to a multiple of 16 with zeros.
//   AVX512-BF16 MR x NR = 12 x 32 (the FP32 kernel's shape, gemm.cpp): 24 zmm accumulators; per k PAIR
//              2 loads of B + 12 broadcasts of an A pair feed 24 vdpbf16ps, each 32 multiply-adds,
//              twice vfmadd231ps's work. But on this project's Xeon (AMX, AVX512-FP16) vdpbf16ps
//              issues at 1/4 the rate of vfmadd231ps (measured, register-only loops, 6 to 24 chains),
//              so this kernel is ~0.7x the FP32 GEMM here: it is the choice only without AMX.
//   portable   the same packed bits in float32 multiply-adds: CPUs without AVX512-BF16.
// Accuracy: each input carries 8 bits of mantissa (relative rounding error <= 2^-9), products are
// exact in FP32 and sums are FP32 (blocked by KC as in the FP32 GEMM), so each product is off by
// <= ~2^-8 relative and a sum of random-sign products by ~2.5e-3 of its norm (measured), under the
// 1e-2 the tests allow. vdpbf16ps/tdpbf16ps flush denormals; the packed inputs have none.
#include "gemm_bf16.h"
#include "gemm_internal.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#include <immintrin.h>
#define CONVNET_X86 1
#endif
#if defined(__linux__) && defined(__x86_64__)
#include <sys/syscall.h>
#include <unistd.h>
#define CONVNET_AMX 1
#endif

namespace convnet {

// ---------------------------------------------------------------------------------------------
// settings

// The process-wide GEMM precision (backend.h): read by the CPU GEMM and the CUDA FC GEMM alike.
namespace {
std::atomic<Precision> g_precision{Precision::FP32};
}  // namespace

Precision gemm_precision() { return g_precision.load(std::memory_order_relaxed); }
void set_gemm_precision(Precision p) { g_precision.store(p, std::memory_order_relaxed); }

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::TF32: return "tf32";
    case Precision::BF16: return "bf16";
    default: return "fp32";
  }
}

namespace cpu {

namespace {
std::atomic<Bf16Kernel> g_bf16_kernel{Bf16Kernel::Auto};
}  // namespace

bool cpu_has_avx512_bf16() {
#ifdef CONVNET_X86
  // __builtin_cpu_supports checks CPUID and that the OS saves the zmm state (XGETBV).
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

bool cpu_has_amx_bf16() {
#ifdef CONVNET_AMX
  static const bool has = [] {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool amx = (d >> 22 & 1u) && (d >> 24 & 1u);  // AMX-BF16, AMX-TILE
    if (!amx || !cpu_has_avx512_bf16()) return false;     // the panels are packed with AVX512-BF16
    // Linux hands out the 8 KB tile state only on request (ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA).
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return has;
#else
  return false;
#endif
}

void set_bf16_kernel(Bf16Kernel k) {
  if (k == Bf16Kernel::Amx && !cpu_has_amx_bf16())
    throw std::invalid_argument("set_bf16_kernel: this CPU (or its OS) offers no AMX-BF16 tiles; use 'auto', "
                                "'avx512_bf16' or 'portable'");
  if (k == Bf16Kernel::Avx512Bf16 && !cpu_has_avx512_bf16())
    throw std::invalid_argument("set_bf16_kernel: this CPU lacks AVX512-BF16 (vdpbf16ps); use 'auto' or 'portable'");
  g_bf16_kernel.store(k, std::memory_order_relaxed);
}

Bf16Kernel forced_bf16_kernel() { return g_bf16_kernel.load(std::memory_order_relaxed); }

Bf16Kernel select_bf16_kernel() {
  const Bf16Kernel k = forced_bf16_kernel();
  if (k != Bf16Kernel::Auto) return k;
  if (cpu_has_amx_bf16()) return Bf16Kernel::Amx;
  return cpu_has_avx512_bf16() ? Bf16Kernel::Avx512Bf16 : Bf16Kernel::Portable;
}

const char* bf16_kernel_name(Bf16Kernel k) {
  switch (k) {
    case Bf16Kernel::Amx: return "amx";
    case Bf16Kernel::Avx512Bf16: return "avx512_bf16";
    case Bf16Kernel::Portable: return "portable";
    default: return "auto";
  }
}

// ---------------------------------------------------------------------------------------------
// rounding and packing

uint16_t float_to_bf16(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7F800000u) == 0) return static_cast<uint16_t>((u >> 16) & 0x8000u);  // zero, denormal
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN
  u += 0x7FFFu + ((u >> 16) & 1u);  // round to nearest even (overflow rounds to infinity)
  return static_cast<uint16_t>(u >> 16);
}

namespace {

inline float bf16_lo(uint32_t pair) {  // the even-k element of a pair, as float32
  const uint32_t u = pair << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float bf16_hi(uint32_t pair) {  // the odd-k element
  const uint32_t u = pair & 0xFFFF0000u;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

void pack_panel_portable(const float* src, int kc, int w, uint32_t* dst) {
  const int kp = (kc + 1) / 2;
  for (int p = 0; p < kp; ++p) {
    const float* r0 = src + static_cast<int64_t>(2 * p) * w;
    const float* r1 = 2 * p + 1 < kc ? r0 + w : nullptr;
    uint32_t* d = dst + static_cast<int64_t>(p) * w;
    for (int j = 0; j < w; ++j)
      d[j] = float_to_bf16(r0[j]) | (r1 ? static_cast<uint32_t>(float_to_bf16(r1[j])) << 16 : 0u);
  }
}

template <int MR, int NR>
void micro_portable(int kp, const uint32_t* __restrict Ap, const uint32_t* __restrict Bp, float* __restrict C,
                    int64_t ldc, float beta) {
  float acc[MR][NR] = {};
  for (int p = 0; p < kp; ++p) {
    float b0[NR], b1[NR];
    for (int j = 0; j < NR; ++j) {
      b0[j] = bf16_lo(Bp[j]);
      b1[j] = bf16_hi(Bp[j]);
    }
    for (int i = 0; i < MR; ++i) {
      const float a0 = bf16_lo(Ap[i]), a1 = bf16_hi(Ap[i]);
      for (int j = 0; j < NR; ++j) acc[i][j] += a0 * b0[j] + a1 * b1[j];
    }
    Ap += MR;
    Bp += NR;
  }
  store_tile(&acc[0][0], NR, C, ldc, MR, NR, beta);
}

#ifdef CONVNET_X86
#define CONVNET_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16")))

// Two rows of 16 floats -> 16 (even, odd) pairs: vcvtne2ps2bf16 puts bf16(r0) in the low 256 bits and
// bf16(r1) in the high 256; one word permute interleaves them (lane 2j <- j, lane 2j + 1 <- 16 + j).
CONVNET_BF16_TARGET void pack_panel_avx512(const float* src, int kc, int w, uint32_t* dst) {
  alignas(64) static const uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kInterleave);
  const int kp = (kc + 1) / 2;
  for (int p = 0; p < kp; ++p) {
    const float* r0 = src + static_cast<int64_t>(2 * p) * w;
    const bool odd = 2 * p + 1 < kc;
    uint32_t* d = dst + static_cast<int64_t>(p) * w;
    for (int j = 0; j < w; j += 16) {
      const int n = std::min(16, w - j);
      const __mmask16 m = static_cast<__mmask16>(n == 16 ? 0xFFFFu : (1u << n) - 1u);
      const __m512 lo = _mm512_maskz_loadu_ps(m, r0 + j);
      const __m512 hi = odd ? _mm512_maskz_loadu_ps(m, r0 + w + j) : _mm512_setzero_ps();
      const __m512i v = reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo));
      _mm512_mask_storeu_epi32(d + j, m, _mm512_permutexvar_epi16(idx, v));
    }
  }
}

// n floats of one row -> ceil(n/2) (even, odd) pairs in k order: vcvtne2ps2bf16 of two 16-float halves
// already lays the 32 bf16 out in k order, i.e. as 16 pairs (the even k in each low half).
CONVNET_BF16_TARGET void row_to_pairs_avx512(const float* src, int n, float alpha, uint32_t* dst) {
  const __m512 va = _mm512_set1_ps(alpha);
  int k = 0;
  for (; k + 32 <= n; k += 32) {
    const __m512 lo = _mm512_mul_ps(va, _mm512_loadu_ps(src + k)), hi = _mm512_mul_ps(va, _mm512_loadu_ps(src + k + 16));
    _mm512_storeu_si512(dst + k / 2, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
  }
  if (k < n) {
    const int r = n - k;  // 1 .. 31 floats left
    const __mmask16 mlo = static_cast<__mmask16>(r >= 16 ? 0xFFFFu : (1u << r) - 1u);
    const __mmask16 mhi = static_cast<__mmask16>(r <= 16 ? 0u : (1u << (r - 16)) - 1u);
    const __m512 lo = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(mlo, src + k));
    const __m512 hi = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(mhi, src + k + 16));
    const int pairs = (r + 1) / 2;
    _mm512_mask_storeu_epi32(dst + k / 2, static_cast<__mmask16>((1u << pairs) - 1u),
                             reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
  }
}

// r[j] <- column j of the 16 x 16 block of 32-bit lanes whose row i is r[i] (unpack pairs of rows,
// pairs of pairs, then 128-bit lanes across the groups of four; the zero-masked forms with a full mask
// are the plain instructions and avoid GCC 12's -Wmaybe-uninitialized on the plain intrinsics).
CONVNET_BF16_TARGET void transpose16_epi32(__m512i r[16]) {
  __m512i u[4][4];
  for (int g = 0; g < 4; ++g) {
    const __m512i t0 = _mm512_maskz_unpacklo_epi32(0xFFFF, r[4 * g], r[4 * g + 1]);
    const __m512i t1 = _mm512_maskz_unpackhi_epi32(0xFFFF, r[4 * g], r[4 * g + 1]);
    const __m512i t2 = _mm512_maskz_unpacklo_epi32(0xFFFF, r[4 * g + 2], r[4 * g + 3]);
    const __m512i t3 = _mm512_maskz_unpackhi_epi32(0xFFFF, r[4 * g + 2], r[4 * g + 3]);
    u[g][0] = _mm512_maskz_unpacklo_epi64(0xFF, t0, t2);
    u[g][1] = _mm512_maskz_unpackhi_epi64(0xFF, t0, t2);
    u[g][2] = _mm512_maskz_unpacklo_epi64(0xFF, t1, t3);
    u[g][3] = _mm512_maskz_unpackhi_epi64(0xFF, t1, t3);
  }
  for (int c = 0; c < 4; ++c) {
    // 0x88 takes 128-bit lanes 0, 2 of each operand; 0xDD lanes 1, 3.
    const __m512i v0 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[0][c], u[1][c], 0x88);
    const __m512i v1 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[0][c], u[1][c], 0xDD);
    const __m512i w0 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[2][c], u[3][c], 0x88);
    const __m512i w1 = _mm512_maskz_shuffle_i32x4(0xFFFF, u[2][c], u[3][c], 0xDD);
    r[c + 0] = _mm512_maskz_shuffle_i32x4(0xFFFF, v0, w0, 0x88);
    r[c + 8] = _mm512_maskz_shuffle_i32x4(0xFFFF, v0, w0, 0xDD);
    r[c + 4] = _mm512_maskz_shuffle_i32x4(0xFFFF, v1, w1, 0x88);
    r[c + 12] = _mm512_maskz_shuffle_i32x4(0xFFFF, v1, w1, 0xDD);
  }
}

// AMX A panel (w <= 16 rows, kps pairs, row-major) from A stored (K, M): row i of the panel is column
// m0 + i of A. 16 pairs at a time: two k rows of A -> 16 lanes of (even, odd) pairs, one per m; 16 of
// those transposed give 16 pairs of each m. Lanes past mr and pairs past ceil(kc/2) come out zero.
CONVNET_BF16_TARGET void pack_a_amx_cols(const float* A, int64_t lda, int mr, int w, int kc, int kps, float alpha,
                                         uint32_t* dst) {
  alignas(64) static const uint16_t kInterleave[32] = {0, 16, 1, 17, 2,  18, 3,  19, 4,  20, 5,  21, 6,  22, 7,  23,
                                                       8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
  const __m512i idx = _mm512_load_si512(kInterleave);
  const __m512 va = _mm512_set1_ps(alpha);
  const __mmask16 m = static_cast<__mmask16>(mr >= 16 ? 0xFFFFu : (1u << mr) - 1u);
  for (int pb = 0; pb < kps; pb += 16) {
    __m512i r[16];
    for (int q = 0; q < 16; ++q) {
      const int k = 2 * (pb + q);
      if (k >= kc) {
        r[q] = _mm512_setzero_si512();
        continue;
      }
      const __m512 lo = _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, A + static_cast<int64_t>(k) * lda));
      const __m512 hi = k + 1 < kc ? _mm512_mul_ps(va, _mm512_maskz_loadu_ps(m, A + static_cast<int64_t>(k + 1) * lda))
                                   : _mm512_setzero_ps();
      r[q] = _mm512_permutexvar_epi16(idx, reinterpret_cast<__m512i>(_mm512_cvtne2ps_pbh(hi, lo)));
    }
    transpose16_epi32(r);
    for (int i = 0; i < w; ++i) _mm512_storeu_si512(dst + static_cast<int64_t>(i) * kps + pb, r[i]);
  }
}

template <int MR, int NR>
CONVNET_BF16_TARGET void micro_avx512(int kp, const uint32_t* __restrict Ap, const uint32_t* __restrict Bp,
                                      float* __restrict C, int64_t ldc, float beta) {
  static_assert(NR % 16 == 0, "whole zmm rows");
  constexpr int V = NR / 16;
  __m512 acc[MR][V];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[i][v] = _mm512_setzero_ps();
#pragma GCC unroll 2
  for (int p = 0; p < kp; ++p) {
    __m512bh b[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) b[v] = reinterpret_cast<__m512bh>(_mm512_loadu_si512(Bp + 16 * v));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512bh a = reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(Ap[i])));
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], a, b[v]);
    }
    Ap += MR;
    Bp += NR;
  }
  const __m512 vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
    float* c = C + i * ldc;
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      if (beta == 0.0f) _mm512_storeu_ps(c + 16 * v, acc[i][v]);
      else if (beta == 1.0f) _mm512_storeu_ps(c + 16 * v, _mm512_add_ps(_mm512_loadu_ps(c + 16 * v), acc[i][v]));
      else _mm512_storeu_ps(c + 16 * v, _mm512_fmadd_ps(vb, _mm512_loadu_ps(c + 16 * v), acc[i][v]));
    }
  }
}
#endif

#ifdef CONVNET_AMX
#define CONVNET_AMX_TARGET __attribute__((target("amx-tile,amx-bf16,avx512f")))

// Tiles: 0, 1 = C of panel 0 (MR x 16 floats each), 2, 3 = C of panel 1, 4, 5 = A of panels 0, 1
// (MR rows x 16 pairs), 6, 7 = B (16 pairs x 16 columns). Per 16 k pairs: 2 + PANELS tile loads and
// 2 x PANELS tdpbf16ps of MR x 16 x 32 multiply-adds. Two A panels (24 rows) share each B tile load:
// with one, the kernel waited on B's tile loads (perf: the hottest instruction).
template <int MR, int PANELS>
CONVNET_AMX_TARGET void micro_amx(int kps, const uint32_t* Ap, const uint32_t* Bp, float* C, int64_t ldc,
                                  float beta) {
  constexpr int NR = 32;
  const uint32_t* Ap1 = Ap + static_cast<int64_t>(MR) * kps;  // the next panel of A
  if (beta == 1.0f) {  // the later K blocks: C itself is the accumulators' start (no round trip
    // through a local tile and a vector add, which took as long as the products at kc = 256)
    _tile_loadd(0, C, ldc * 4);
    _tile_loadd(1, C + 16, ldc * 4);
    if (PANELS == 2) {
      _tile_loadd(2, C + MR * ldc, ldc * 4);
      _tile_loadd(3, C + MR * ldc + 16, ldc * 4);
    }
  } else {
    _tile_zero(0);
    _tile_zero(1);
    if (PANELS == 2) {
      _tile_zero(2);
      _tile_zero(3);
    }
  }
  for (int p = 0; p < kps; p += 16) {
    _tile_loadd(6, Bp + static_cast<int64_t>(p) * NR, NR * 4);
    _tile_loadd(7, Bp + static_cast<int64_t>(p) * NR + 16, NR * 4);
    _tile_loadd(4, Ap + p, kps * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    if (PANELS == 2) {
      _tile_loadd(5, Ap1 + p, kps * 4);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  if (beta == 0.0f || beta == 1.0f) {
    _tile_stored(0, C, ldc * 4);
    _tile_stored(1, C + 16, ldc * 4);
    if (PANELS == 2) {
      _tile_stored(2, C + MR * ldc, ldc * 4);
      _tile_stored(3, C + MR * ldc + 16, ldc * 4);
    }
    return;
  }
  alignas(64) float t[PANELS * MR * NR];
  _tile_stored(0, t, NR * 4);
  _tile_stored(1, t + 16, NR * 4);
  if (PANELS == 2) {
    _tile_stored(2, t + MR * NR, NR * 4);
    _tile_stored(3, t + MR * NR + 16, NR * 4);
  }
  for (int i = 0; i < PANELS * MR; ++i)
    for (int j = 0; j < NR; ++j) C[i * ldc + j] = beta * C[i * ldc + j] + t[i * NR + j];
}

struct TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

CONVNET_AMX_TARGET void amx_load_config(int mr) {
  TileConfig c;
  std::memset(&c, 0, sizeof c);
  c.palette = 1;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = static_cast<uint8_t>(t < 6 ? mr : 16);
  }
  // GCC 12 does not model ldtilecfg's read of c: without this barrier a build with -g dropped the
  // stores above as dead and loaded an all-zero configuration (every tile unconfigured: SIGSEGV).
  asm volatile("" : : "m"(c) : "memory");
  _tile_loadconfig(&c);
}

CONVNET_AMX_TARGET void amx_release() { _tile_release(); }
#endif

}  // namespace

void bf16_amx_begin(int rows) {
#ifdef CONVNET_AMX
  amx_load_config(rows);
#else
  (void)rows;
#endif
}

void bf16_amx_end() {
#ifdef CONVNET_AMX
  amx_release();
#endif
}

void bf16_pack_panel(Bf16Kernel k, const float* src, int kc, int w, uint32_t* dst) {
#ifdef CONVNET_X86
  if (k == Bf16Kernel::Amx) {  // B panels: the vdpbf16ps layout, pairs padded to whole tile depths
    const int kp = (kc + 1) / 2, kps = bf16_panel_pairs(k, kp);
    pack_panel_avx512(src, kc, w, dst);
    std::fill(dst + static_cast<int64_t>(kp) * w, dst + static_cast<int64_t>(kps) * w, 0u);
    return;
  }
  if (k == Bf16Kernel::Avx512Bf16) {
    pack_panel_avx512(src, kc, w, dst);
    return;
  }
#endif
  (void)k;
  pack_panel_portable(src, kc, w, dst);
}

void bf16_amx_a_rows(const float* const* src, int mr, int n, float alpha, uint32_t* dst, int kps, int p0) {
  for (int i = 0; i < mr; ++i) {
    uint32_t* d = dst + static_cast<int64_t>(i) * kps + p0;
    if (!src[i]) {
      std::fill(d, d + (n + 1) / 2, 0u);
      continue;
    }
#ifdef CONVNET_X86
    row_to_pairs_avx512(src[i], n, alpha, d);
#else
    for (int p = 0; 2 * p < n; ++p)
      d[p] = float_to_bf16(alpha * src[i][2 * p]) |
             (2 * p + 1 < n ? static_cast<uint32_t>(float_to_bf16(alpha * src[i][2 * p + 1])) << 16 : 0u);
#endif
  }
}

void bf16_amx_a_cols(const float* A, int64_t lda, int mr, int w, int kc, int kps, float alpha, uint32_t* dst) {
#ifdef CONVNET_X86
  pack_a_amx_cols(A, lda, mr, w, kc, kps, alpha, dst);
#else
  for (int i = 0; i < w; ++i)
    for (int p = 0; p < kps; ++p) {
      const int k = 2 * p;
      const float lo = i < mr && k < kc ? alpha * A[static_cast<int64_t>(k) * lda + i] : 0.0f;
      const float hi = i < mr && k + 1 < kc ? alpha * A[static_cast<int64_t>(k + 1) * lda + i] : 0.0f;
      dst[static_cast<int64_t>(i) * kps + p] = float_to_bf16(lo) | static_cast<uint32_t>(float_to_bf16(hi)) << 16;
    }
#endif
}

void bf16_amx_a_zero(int mr, int w, int kp, int kps, uint32_t* dst) {
  for (int i = 0; i < w; ++i) {
    uint32_t* d = dst + static_cast<int64_t>(i) * kps;
    std::fill(d + (i < mr ? kp : 0), d + kps, 0u);
  }
}

template <int MR, int NR>
void bf16_micro_kernel(Bf16Kernel k, int kp, const uint32_t* Ap, const uint32_t* Bp, float* C, int64_t ldc,
                       float beta) {
#ifdef CONVNET_AMX
  if constexpr (NR == 32 && MR <= 16) {
    if (k == Bf16Kernel::Amx) {
      micro_amx<MR, 1>(kp, Ap, Bp, C, ldc, beta);
      return;
    }
  }
#endif
#ifdef CONVNET_X86
  if (k == Bf16Kernel::Avx512Bf16 || k == Bf16Kernel::Amx) {
    micro_avx512<MR, NR>(kp, Ap, Bp, C, ldc, beta);
    return;
  }
#endif
  (void)k;
  micro_portable<MR, NR>(kp, Ap, Bp, C, ldc, beta);
}

void bf16_amx_micro_kernel_2(int kps, const uint32_t* Ap, const uint32_t* Bp, float* C, int64_t ldc, float beta) {
#ifdef CONVNET_AMX
  micro_amx<12, 2>(kps, Ap, Bp, C, ldc, beta);
#else
  (void)kps, (void)Ap, (void)Bp, (void)C, (void)ldc, (void)beta;
  throw std::logic_error("bf16_amx_micro_kernel_2 without AMX");
#endif
}

template void bf16_micro_kernel<12, 32>(Bf16Kernel, int, const uint32_t*, const uint32_t*, float*, int64_t, float);
template void bf16_micro_kernel<6, 16>(Bf16Kernel, int, const uint32_t*, const uint32_t*, float*, int64_t, float);
template void bf16_micro_kernel<4, 16>(Bf16Kernel, int, const uint32_t*, const uint32_t*, float*, int64_t, float);

}  // namespace cpu
}  // namespace convnet
