// The CPU GEMM's precision setting and its BF16 pieces (gemm_bf16.cpp), used by gemm.cpp's five loops.
//
// Precision (a process-wide setting, like forced_path(); Net sets it around its passes):
//   FP32  every product and sum in float32 (the default).
//   TF32  on the CPU the same as FP32: there is no TF32 unit to emulate, and computing in full FP32
//         is at least as accurate as TF32 (10-bit mantissa inputs) everywhere; the mode exists so a
//         run's setting means the same thing on both backends (docs/architecture.md, "Precision").
//   BF16  both GEMM operands are rounded to bfloat16 (8-bit mantissa, round to nearest even) while
//         they are packed; products are exact in float32 and every sum is float32 (vdpbf16ps).
//         The output C is float32. The GEMV shapes (M == 1 or N == 1) stay FP32: memory-bound, so
//         BF16 would buy nothing there.
//
// BF16 packed layout: the FP32 micro-panel of kc x w floats (k-major, w = MR for A, NR for B; see
// gemm.cpp) becomes ceil(kc/2) x w uint32, element (p, j) = bf16(x[2p][j]) | bf16(x[2p+1][j]) << 16
// (a zero high half when kc is odd): the (even k, odd k) pair that one vdpbf16ps lane multiplies.
//
// Kernels: AMX-BF16 (tdpbf16ps on 12 x 16 tiles; Sapphire Rapids and later, where the kernel grants
// the tile state through arch_prctl), AVX512-BF16 (vcvtne2ps2bf16 + vdpbf16ps, compiled with a target attribute so the module
// builds for any x86-64) where CPUID reports it; elsewhere a portable kernel with the SAME rounding
// (bit-identical packed operands) and float32 multiply-adds: slower, same precision. Chosen at run
// time (select_bf16_kernel); tests force each one (convnet._C.set_bf16_kernel).
#pragma once

#include <cstdint>

#include "backend.h"

namespace convnet {
namespace cpu {

// The setting itself is declared in backend.h (shared with the CUDA backend); these names keep
// cpu:: code reading it as before.
using convnet::Precision;
using convnet::gemm_precision;
using convnet::set_gemm_precision;
using convnet::precision_name;

enum class Bf16Kernel { Auto, Amx, Avx512Bf16, Portable };
bool cpu_has_avx512_bf16();               // CPUID (and the OS saving zmm state)
bool cpu_has_amx_bf16();                  // CPUID AMX-BF16 + AMX-TILE and the kernel granted tile state
// The K pairs a packed panel holds for kernel k: kp, or kp rounded up to 16 for AMX (a tile's depth).
inline int bf16_panel_pairs(Bf16Kernel k, int kp) { return k == Bf16Kernel::Amx ? (kp + 15) / 16 * 16 : kp; }
void set_bf16_kernel(Bf16Kernel k);       // Avx512Bf16 on a CPU without it: std::invalid_argument
Bf16Kernel forced_bf16_kernel();          // as set (Auto by default)
Bf16Kernel select_bf16_kernel();          // the kernel a BF16 GEMM uses now (never Auto)
const char* bf16_kernel_name(Bf16Kernel k);  // "auto", "amx", "avx512_bf16", "portable"

// One micro-panel: src (kc, w) float32 k-major -> dst (kps, w) BF16 pairs (layout above), kps =
// bf16_panel_pairs(k, ceil(kc/2)), pairs past ceil(kc/2) zero. Every B panel, and the A panels of the
// vdpbf16ps and portable kernels. AMX's A panels are row-major instead, dst (w, kps): a tile row is one
// row of A, 16 pairs = 64 bytes (bf16_amx_a_rows, bf16_amx_a_cols).
void bf16_pack_panel(Bf16Kernel k, const float* src, int kc, int w, uint32_t* dst);
// AMX A panel rows straight from an (M, K) row-major source, no k-major FP32 staging: for each row
// i < mr, dst[i * kps + p0 + p] = the pair (alpha * src[i][2p], alpha * src[i][2p + 1]) rounded, for
// the n floats src[i][0 : n) (pairs p < ceil(n/2); a null src[i] gives zeros). p0 is even when n is
// odd only at the row's end. Rows past mr and pairs past the panel's kc are the caller's to zero
// (bf16_amx_a_zero). The bits are those bf16_pack_panel writes for the same values (same rounding).
void bf16_amx_a_rows(const float* const* src, int mr, int n, float alpha, uint32_t* dst, int kps, int p0);
// AMX A panel from A stored (K, M) (trans_a): dst (w rows, kps pairs), row i = column i of A[0:kc, :],
// i.e. pairs (alpha * A[2p][i], alpha * A[2p + 1][i]); rows past mr (<= w <= 16) and pairs past ceil(kc/2) zero.
void bf16_amx_a_cols(const float* A, int64_t lda, int mr, int w, int kc, int kps, float alpha, uint32_t* dst);
// Zeroes pairs [kp, kps) of rows [0, mr) and every pair of rows [mr, w) of an AMX A panel.
void bf16_amx_a_zero(int mr, int w, int kp, int kps, uint32_t* dst);
// Per thread, around a run of AMX micro-kernels: load the tile configuration / release the tiles.
void bf16_amx_begin(int rows);  // rows = MR: the A and C tiles' height
void bf16_amx_end();

// C[MR x NR] (row stride ldc) = acc + beta * C, acc = sum over kp pairs of Ap[p] (x) Bp[p] in float32;
// beta == 0 never reads C. Instantiated for gemm.cpp's tile shapes (12 x 32, 6 x 16, 4 x 16).
template <int MR, int NR>
void bf16_micro_kernel(Bf16Kernel k, int kp, const uint32_t* Ap, const uint32_t* Bp, float* C, int64_t ldc,
                       float beta);

// AMX only, MR = 12, NR = 32: two vertically adjacent full tiles at once (A panels Ap and
// Ap + 12 * kps, C rows 0..23), so each B tile load feeds two A tiles.
void bf16_amx_micro_kernel_2(int kps, const uint32_t* Ap, const uint32_t* Bp, float* C, int64_t ldc, float beta);

// Round to nearest even, NaN stays NaN (quiet), denormals flush to signed zero: what vcvtne2ps2bf16
// does, so both kernels pack the same bits.
uint16_t float_to_bf16(float x);

}  // namespace cpu
}  // namespace convnet
