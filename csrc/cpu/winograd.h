// CPU Winograd convolution (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"):
// the stride-1 3x3 and 5x5 convolutions of every pass with 6x6 transform tiles, all built from the
// interpolation points 0, +-1, +-2 and infinity (benchmarks/winograd_accuracy.py derives the matrices
// from the points; every split m + r - 1 = 6 of these points shares one B^T):
//   3x3: forward and backward-data F(4x4,3x3), backward-filter F(3x3,4x4);
//   5x5: forward and backward-data F(2x2,5x5), backward-filter F(5x5,2x2).
//
// What it computes: the conv passes of ops.h, same contract (x (N, H, W, C), w (K, R, S, C/g),
// y (N, P, Q, K), bias, accumulate, fused ReLU), any padding below R, any groups, any H/W (edge tiles
// are cut, reads outside the image are zeros).
//   forward          y tile (m, m, K) = A^T [ U (.) V ] A,  U = G w G^T (36, Cg, Kg) once per call,
//                    V = B^T d B (36, tiles, C) of each 6x6 input tile d; the 36 products per tile
//                    are one GEMM per point and group: M_xi (tiles, Kg) = V_xi (tiles, Cg) U_xi.
//   backward-data    the forward of dy with the filters turned 180 degrees (K <-> C per group),
//                    padding R-1-pad (stride 1: the transposed conv is a conv).
//   backward-filter  dW[k, :, :, c] = A'^T [ sum_tiles E_xi[t, k] V_xi[t, c] ] A',
//                    E = G' dy_t G'^T of each m x m tile of dy (G' (6, m), A'^T (R, 6)); the sum over
//                    tiles is one GEMM per point and group with the tiles as its depth:
//                    Mw_xi (Kg, Cg) += E_xi^T (Kg, tiles) V_xi (tiles, Cg). dy tiles past (P, Q) are zero.
//
// Layout: tiles run over (n, tile row, tile column); a thread's chunk of tc tiles keeps its V
// (36, tc, C) and M or E (36, tc, K) in its own buffer, sized to stay in L2, written by the input
// transform and read by the GEMMs and the output transform while in cache (no full transformed tensor
// of the input or the output is ever stored). U (and the turned filters of backward-data) is packed
// once per call into the GEMM's B panels (gemm_internal.h) shared by every chunk. Backward-filter sums
// its tiles in fixed slots (their number from the shape alone), added in slot order: dw does not depend
// on the thread count, like the direct path's.
//
// Napkin math: F(4x4,3x3) does 36 multiplies per 16 outputs per (c, k) instead of 144 (4x fewer
// GEMM FLOPs), F(2x2,5x5) 36 per 4 instead of 100 (2.8x), F(3x3,4x4) 36 per 9 filter taps and 16 dy
// values instead of 144 (4x). AlexNet's 13x13 maps take 4x4 output tiles of 16x16 (1.51x the outputs:
// net 2.6x fewer multiplies), 27x27 maps 2x2 tiles of 28x28 (1.08x: net 2.6x). The transforms cost
// ~2 x 6 x 4 adds per point per channel per tile, O(C + K) against the GEMMs' O(C K): ~2 % at C, K >= 256.
// conv3 at batch 8: 128 tiles x 36 points, 36 GEMMs (128 x 256) x (256 x 384) = 0.9 GFLOP against the
// direct path's 2.3 GFLOP; U is 36 x 256 x 384 x 4 B = 14 MB, read once per chunk (tc / 2 FLOPs per byte).
//
// Accuracy (float32 against a float64 direct conv on AlexNet's layers; benchmarks/RESULTS.md, "Winograd
// accuracy study"): F(4x4,3x3) 2.2-3.1e-6, F(2x2,5x5) 1.5-1.6e-6 relative error (direct float32:
// 1.3-2.5e-7); both inside the op tests' 1e-5. F(6x6,3x3) (4.4-6.3e-6) is too close to the bound and is
// not used. The backward passes are checked against the same float64 reference in tests/test_winograd.py.
#pragma once

#include <string>

#include "backend.h"

namespace convnet {
namespace cpu {

// Empty when the Winograd kernels can run this shape (stride 1, R = S in {3, 5}, pad < R), else why not.
std::string winograd_unsupported(const ConvShape& s);
// Whether a pass runs as Winograd: s.algorithm forces it (Direct / Winograd; dispatch.cpp checked that
// Winograd is supported), Auto applies the measured rule of winograd.cpp. ConvPass: backend.h.
bool winograd_chosen(const ConvShape& s, ConvPass pass);
// The passes; the caller checked that the shape is supported.
void winograd_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                      bool accumulate, bool relu);
void winograd_backward_data(const ConvShape& s, const float* dy, const float* w, float* dx, bool accumulate);
// dw only (the caller computes db).
void winograd_backward_filter(const ConvShape& s, const float* dy, const float* x, float* dw, bool accumulate);

}  // namespace cpu
}  // namespace convnet
