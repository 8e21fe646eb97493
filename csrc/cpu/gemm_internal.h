// Private interface of the CPU GEMM (gemm.cpp) for the CPU convolutions (conv.cpp) and the BF16
// GEMM (gemm_bf16.cpp): a B operand packed once into the GEMM's own panel layout, then shared
// read-only by any number of serial GEMM calls (the convolutions' per-thread chunks all multiply by
// the same weights), and the write-back of a micro-kernel's tile.
//
// Layout of a packed op(B) (K, N): K is cut into blocks of KC rows (the last may be shorter); block
// b (rows [b*KC, b*KC + kc)) starts at float b * KC * Np, Np = N rounded up to whole NR, and holds
// Np / NR micro-panels of kc x NR, k-major, columns past N zero -- exactly what the GEMM's pack_b
// builds per (K block, column block), so the micro-kernel reads it unchanged.
#pragma once

#include <cstdint>

namespace convnet {
namespace cpu {

// Floats a packed (K, N) B needs (a multiple of 16: 64-byte aligned blocks stay aligned).
int64_t packed_b_floats(int K, int N);
// Number of K blocks of a packed B (the unit of work of pack_b_block).
int packed_b_blocks(int K);
// Packs K block `blk` of op(B) (B stored (K, N) with row stride ldb, or (N, K) when trans_b) into Bp
// (the whole packed buffer, 64-byte aligned). Blocks are independent: threads may pack different
// blocks of one buffer at once.
void pack_b_block(bool trans_b, const float* B, int ldb, int K, int N, int blk, float* Bp);
// Under BF16 precision, a packed B rounded to BF16 once, so that the GEMMs sharing it do not each
// round all of it again (a conv's chunks all multiply by the same weights). Its K blocks are BF16's
// (2 KC rows, two FP32 blocks): block b starts at word b * KC * Np and holds Np / NR panels of kps x
// NR (even k, odd k) pairs (gemm_bf16.h), kps = bf16_panel_pairs(kernel, ceil(kc/2)) for the BF16
// kernel chosen at conversion time (so convert and multiply under the same kernel setting).
// packed_b_bf16_words is enough for every kernel.
int64_t packed_b_bf16_words(int K, int N);
// Rounds FP32 K block `blk` of the packed Bp (pack_b_block layout) into its half of B16's block blk / 2.
// Blocks are independent (threads may convert different ones at once).
void convert_packed_b_block(const float* Bp, int K, int N, int blk, uint32_t* B16);
// C (M, N) = alpha * op(A) Bp + beta * C, serial on the calling thread, same conventions as gemm()
// (beta == 0 never reads C). Bp is a packed (K, N) B from pack_b_block; B16, where given, is its BF16
// copy (convert_packed_b_block), read instead of Bp under BF16 precision.
void gemm_packed_b(bool trans_a, int M, int N, int K, float alpha, const float* A, int lda, const float* Bp,
                   float beta, float* C, int ldc, const uint32_t* B16 = nullptr);

// A B operand that is never stored: the caller packs its micro-panels itself, straight from its own
// data (the convolutions' backward-filter packs patch-matrix panels straight from x, skipping the
// im2col buffer: one copy of every patch element instead of two).
// pack(ctx, k0, kc, j, dst) writes op(B)[k0 : k0+kc, j : j+NR] to dst as kc rows of NR floats
// (dst[k * NR + jj]), 64-byte aligned. N must be a multiple of gemm_nr() (no edge panels).
struct PanelSource {
  void (*pack)(const void* ctx, int k0, int kc, int j, float* dst);
  const void* ctx;
};
int gemm_nr();  // NR, the micro-kernel's width
int gemm_kc();  // KC, the K block of a packed B (for callers that build one themselves)
int gemm_k_block();  // the K block of the five loops under the current precision: KC, or 2 KC under BF16
// C (M, N) = alpha * op(A) B + beta * C with B given by `b`, serial, conventions of gemm().
void gemm_panel_b(bool trans_a, int M, int N, int K, float alpha, const float* A, int lda, const PanelSource& b,
                  float beta, float* C, int ldc);

// An A operand (M, K), row-major, that is never stored: the caller hands out row pointers (the
// convolutions' forward points into x, skipping the im2col buffer).
// rows(ctx, i0, mr, j, ptrs): ptrs[i] = address of A[i0 + i, j] for i < mr, valid for the `run`
// columns [j, j + run) (j is a multiple of run), or nullptr where that stretch is all zeros.
// run and K must be multiples of 16.
struct RowSource {
  void (*rows)(const void* ctx, int i0, int mr, int j, const float** ptrs);
  const void* ctx;
  int run;
};
// C (M, N) = alpha * A Bp + beta * C, A from `a`, Bp a packed (K, N) B (pack_b_block), serial.
void gemm_rows_packed_b(int M, int N, int K, float alpha, const RowSource& a, const float* Bp, float beta, float* C,
                        int ldc, const uint32_t* B16 = nullptr);

// C (rows, cols; row stride ldc) = T (row stride ldt) when beta == 0 (C is never read), else
// beta * C + T: how a micro-kernel's accumulator tile, or an edge tile's local copy, reaches C.
inline void store_tile(const float* T, int ldt, float* C, int64_t ldc, int rows, int cols, float beta) {
  for (int i = 0; i < rows; ++i) {
    float* c = C + i * ldc;
    const float* t = T + static_cast<int64_t>(i) * ldt;
    if (beta == 0.0f) {
      for (int j = 0; j < cols; ++j) c[j] = t[j];
    } else {
      for (int j = 0; j < cols; ++j) c[j] = beta * c[j] + t[j];
    }
  }
}

}  // namespace cpu
}  // namespace convnet
