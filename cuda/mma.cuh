// Tensor-core building blocks of the mixed-precision GEMM (cuda/gemm_tc.cu): each PTX instruction
// sits behind ONE small __device__ function.
//
//   f32_to_tf32        cvt.rna.tf32.f32        FP32 -> TF32 bits (10-bit mantissa, nearest, ties away)
//   pack_bf16x2        cvt.rn.bf16x2.f32       two FP32 -> two BF16 in one .b32 (nearest even), what
//                                              __floats2bfloat162_rn compiles to
//   ldmatrix_x4        ldmatrix.sync.aligned.m8n8.x4.shared.b16   four 8x8 b16 matrices -> fragments
//   mma_tf32_m16n8k8   mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32
//   mma_bf16_m16n8k16  mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32
//
// Under nvcc (__CUDACC__) each is its inline-PTX instruction. In the emulator build
// (tools/cuda_emu: g++, each CUDA thread a fiber) each is a C++ model of the instruction's
// documented semantics: the conversions bit for bit, and the warp-collective ldmatrix / mma as an
// exchange through a per-warp slot between two __syncwarp()s (so the emulator also reports a call
// that not all 32 lanes reach, which mma.sync / ldmatrix.sync forbid). The models implement the
// fragment layouts exactly as the PTX ISA (version 8.5, "Warp Level Matrix Multiply-Accumulate
// Instructions" > "Matrix multiply-accumulate operation using mma instruction") documents them in
// "Matrix Fragments for mma.m16n8k8" (the .tf32 case), "Matrix Fragments for mma.m16n8k16 with
// floating point type" and "Warp-level matrix load instruction: ldmatrix". In all, for lane L:
//   groupID g = L >> 2,  threadID_in_group t = L % 4.
#pragma once

#include <cstdint>
#include <cstring>

#include "common.cuh"

namespace convnet {
namespace cuda {

// ---------------------------------------------------------------------------------------------
// fragment layouts (PTX ISA, the two "Matrix Fragments" sections named above): which row and column of the 16x8 / 8x8 / 16x16 tile
// register element i of lane L holds. The emulated instructions below are written with these, so
// the layouts live in one place; tests/test_precision_cuda.py checks whole tiles against NumPy.

struct FragPos {
  int row, col;
};

// m16n8k8 .tf32, A (16 x 8, .row): a0 (g, t), a1 (g+8, t), a2 (g, t+4), a3 (g+8, t+4).
__device__ __forceinline__ FragPos tf32_a_pos(int lane, int i) {
  return {(lane >> 2) + 8 * (i & 1), (lane & 3) + 4 * (i >> 1)};
}
// m16n8k8 .tf32, B (8 x 8, .col; row = k, col = n): b0 (t, g), b1 (t+4, g).
__device__ __forceinline__ FragPos tf32_b_pos(int lane, int i) { return {(lane & 3) + 4 * i, lane >> 2}; }
// m16n8k16 .bf16, A (16 x 16, .row), element i = 0..7 (register i / 2, low half first):
//   row g for i in {0, 1, 4, 5}, g+8 otherwise; col 2t + (i & 1), +8 for i >= 4.
__device__ __forceinline__ FragPos bf16_a_pos(int lane, int i) {
  return {(lane >> 2) + 8 * ((i >> 1) & 1), 2 * (lane & 3) + (i & 1) + 8 * (i >> 2)};
}
// m16n8k16 .bf16, B (16 x 8, .col), element i = 0..3: row (k) 2t + (i & 1), +8 for i >= 2; col g.
__device__ __forceinline__ FragPos bf16_b_pos(int lane, int i) {
  return {2 * (lane & 3) + (i & 1) + 8 * (i >> 1), lane >> 2};
}
// C and D of both shapes (16 x 8 .f32): c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1).
__device__ __forceinline__ FragPos acc_pos(int lane, int i) {
  return {(lane >> 2) + 8 * (i >> 1), 2 * (lane & 3) + (i & 1)};
}

// ---------------------------------------------------------------------------------------------
// conversions

// FP32 -> TF32 (PTX ISA "cvt", .rna: round to nearest, ties away from zero): the FP32
// pattern with its 13 low mantissa bits cleared after rounding. Inf stays Inf, NaN becomes the
// canonical NaN, a value that rounds past the largest TF32 becomes Inf; subnormals are kept.
__device__ __forceinline__ uint32_t f32_to_tf32(float x) {
#ifdef __CUDACC__
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(r) : "f"(x));
  return r;
#else
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x007fffffu) ? 0x7fffffffu : u;
  return (u + 0x1000u) & 0xffffe000u;  // + half a TF32 ulp on the magnitude, then truncate: ties away
#endif
}

// Two FP32 -> one .b32 of two BF16, `lo` in bits 0..15 (the lower-k element of a fragment
// register), `hi` in 16..31 (PTX ISA "cvt": .bf16x2 puts its first source in the upper half).
// Round to nearest even; NaN stays a (quiet) NaN; subnormals are kept (no .ftz).
#ifndef __CUDACC__
inline uint32_t emu_f32_to_bf16(float x) {
  uint32_t u;
  memcpy(&u, &x, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x0040u;
  return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}
#endif
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
#ifdef __CUDACC__
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return emu_f32_to_bf16(lo) | (emu_f32_to_bf16(hi) << 16);
#endif
}

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.x4.shared.b16 (PTX ISA "ldmatrix"): lanes 8j .. 8j+7 give the
// addresses of rows 0..7 of matrix j (each row 8 b16 = 16 bytes, 16-byte aligned, in shared
// memory); every lane L receives in d[j] the 32-bit word (L % 4) of row (L / 4) of matrix j, i.e.
// elements 2(L%4), 2(L%4)+1 of that row. A row of 4 TF32 words loads the same way (word L % 4).

#ifndef __CUDACC__
namespace emu_tc {
// The operands one warp has in flight: each lane writes its own entry, the warp meets at
// __syncwarp, every lane reads what it needs, and a second __syncwarp frees the slot for reuse.
struct WarpSlot {
  const void* rows[32];
  uint32_t a[32][4], b[32][2];
};
inline WarpSlot& warp_slot() {
  static WarpSlot slots[32];  // one per warp of a block (<= 1024 threads); launches are serialised
  return slots[::emu::g_cur->warp];
}
inline int lane() { return ::emu::g_cur->lane; }
inline float tf32_value(uint32_t u) {  // the TF32 an mma reads from a .b32: its 19 high bits
  u &= 0xffffe000u;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
inline float bf16_value(uint32_t h) {
  const uint32_t u = (h & 0xffffu) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
}  // namespace emu_tc
#endif

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&d)[4], const void* row) {
#ifdef __CUDACC__
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
               : "r"(addr));
#else
  emu_tc::WarpSlot& s = emu_tc::warp_slot();
  const int L = emu_tc::lane();
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) ::emu::kernel_error("ldmatrix: row address not 16-byte aligned");
  s.rows[L] = row;
  __syncwarp();
  for (int j = 0; j < 4; ++j) memcpy(&d[j], static_cast<const char*>(s.rows[8 * j + L / 4]) + 4 * (L % 4), 4);
  __syncwarp();
#endif
}

// ---------------------------------------------------------------------------------------------
// mma.sync, D = A B + C in place on acc (PTX ISA "mma"). The emulation gathers the
// warp's A and B tiles from every lane's fragments through the layouts above and computes this
// lane's four outputs: products exact in FP32 (a TF32 or BF16 product fits in 24 bits), sums in
// FP32 in k order after c. The hardware's internal order and rounding of that sum are not
// documented; they differ from this by a few FP32 ulp.

// acc (16 x 8) += A (16 x 8, TF32) B (8 x 8, TF32). An mma reads only the 19 TF32 bits of each
// operand register (the rest are dropped, as the emulation does); our kernel passes f32_to_tf32.
__device__ __forceinline__ void mma_tf32_m16n8k8(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef __CUDACC__
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  emu_tc::WarpSlot& s = emu_tc::warp_slot();
  const int L = emu_tc::lane();
  for (int i = 0; i < 4; ++i) s.a[L][i] = a[i];
  for (int i = 0; i < 2; ++i) s.b[L][i] = b[i];
  __syncwarp();
  float A[16][8], B[8][8];
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 4; ++i) {
      const FragPos p = tf32_a_pos(l, i);
      A[p.row][p.col] = emu_tc::tf32_value(s.a[l][i]);
    }
    for (int i = 0; i < 2; ++i) {
      const FragPos p = tf32_b_pos(l, i);
      B[p.row][p.col] = emu_tc::tf32_value(s.b[l][i]);
    }
  }
  __syncwarp();
  for (int i = 0; i < 4; ++i) {
    const FragPos p = acc_pos(L, i);
    float sum = acc[i];
    for (int k = 0; k < 8; ++k) sum += A[p.row][k] * B[k][p.col];
    acc[i] = sum;
  }
#endif
}

// acc (16 x 8) += A (16 x 16, BF16) B (16 x 8, BF16); a[r] / b[r] hold two BF16 each, the element
// of lower index in bits 0..15 (PTX ISA, m16n8k16 fragments: "a0, a1" in the first .b32 of A, and so on).
__device__ __forceinline__ void mma_bf16_m16n8k16(float (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef __CUDACC__
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};"
      : "+f"(acc[0]), "+f"(acc[1]), "+f"(acc[2]), "+f"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  emu_tc::WarpSlot& s = emu_tc::warp_slot();
  const int L = emu_tc::lane();
  for (int i = 0; i < 4; ++i) s.a[L][i] = a[i];
  for (int i = 0; i < 2; ++i) s.b[L][i] = b[i];
  __syncwarp();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < 8; ++i) {
      const FragPos p = bf16_a_pos(l, i);
      A[p.row][p.col] = emu_tc::bf16_value(s.a[l][i / 2] >> (16 * (i % 2)));
    }
    for (int i = 0; i < 4; ++i) {
      const FragPos p = bf16_b_pos(l, i);
      B[p.row][p.col] = emu_tc::bf16_value(s.b[l][i / 2] >> (16 * (i % 2)));
    }
  }
  __syncwarp();
  for (int i = 0; i < 4; ++i) {
    const FragPos p = acc_pos(L, i);
    float sum = acc[i];
    for (int k = 0; k < 16; ++k) sum += A[p.row][k] * B[k][p.col];
    acc[i] = sum;
  }
#endif
}

}  // namespace cuda
}  // namespace convnet
