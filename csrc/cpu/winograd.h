// CPU Winograd convolution (Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks"):
// stride-1 3x3 layers as F(4x4,3x3) and 5x5 layers as F(2x2,5x5). Both use 6x6 input tiles and the
// same input transform B^T, built from the points 0, +-1, +-2 and infinity (benchmarks/winograd_accuracy.py
// derives every matrix from the points).
//
// What it computes: the conv forward of ops.h (same contract: x (N, H, W, C), w (K, R, S, C/g),
// y (N, P, Q, K), bias, accumulate, fused ReLU), any padding, any groups, any H/W (edge tiles are
// cut), and the backward-data pass as the forward conv of dy with the filters turned 180 degrees
// (K <-> C per group, padding R-1-pad).
//
// Layout and steps (n = 6, m = n - R + 1 outputs per tile side):
//   U (g, n*n, Cg, Kg) = G w G^T per (k, c), once per call (weights: 3x3 -> 36/9 = 4x the bytes);
//   per chunk of `tc` tiles (a thread's job, sized so V and M stay in L2):
//     V (n*n, tc, C)  = B^T d B of each tile's n x n x C input (zero where it hits padding),
//                       computed as channel vectors (C is contiguous in NHWC);
//     M (n*n, tc, K)  = for each of the 36 points and each group, a GEMM V_g (tc, Cg) x U_g (Cg, Kg);
//     y tile (m, m, K) = A^T M A, + bias, (+ y), ReLU, written where inside (P, Q).
// Napkin math: F(4x4,3x3) does 36 multiplies per 16 outputs per (c, k) instead of 144 (4x fewer
// GEMM FLOPs); F(2x2,5x5) does 36 per 4 instead of 100 (2.8x). The transforms cost O(C + K) per tile,
// small against the GEMMs' O(C K) when C, K >= 64.
//
// Accuracy (float32 against a float64 direct conv on AlexNet's layers, benchmarks/RESULTS.md):
// F(4x4,3x3) 2.2-3.1e-6, F(2x2,5x5) 1.5-1.6e-6 relative error (direct float32: 1.3-2.5e-7); both
// inside the op tests' 1e-5. F(6x6,3x3) (4.4-6.3e-6) is too close to the bound and is not used.
#pragma once

#include "backend.h"

namespace convnet {
namespace cpu {

// Whether the Winograd kernels can run this shape (stride 1, R = S in {3, 5}, pad < R).
bool winograd_supported(const ConvShape& s);
// The selector's rule for the forward and backward-data passes (see winograd.cpp for the measured
// rule), with the CONVNET_CONV_ALGORITHM environment variable (direct | winograd | auto) forcing it:
// the op argument replaces the variable once the op table lands.
bool winograd_chosen(const ConvShape& s);
// The passes; the caller checked winograd_supported(s).
void winograd_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                      bool accumulate, bool relu);
void winograd_backward_data(const ConvShape& s, const float* dy, const float* w, float* dx, bool accumulate);

}  // namespace cpu
}  // namespace convnet
