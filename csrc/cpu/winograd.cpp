// CPU Winograd convolution: see winograd.h for what it computes, the layout and the accuracy.
#include "winograd.h"

#include "gemm_internal.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#ifdef CONVNET_WITH_OPENMP
#include <omp.h>
#endif

namespace convnet {
namespace cpu {

namespace {

#ifndef CHUNK_MB
#define CHUNK_MB 24
#endif
constexpr int kN = 6;  // input tile side
constexpr int kNN = kN * kN;

// B^T (6, 6) for the points 0, +-1, +-2, infinity (shared by F(4,3) and F(2,5)).
constexpr float kBT[kN][kN] = {{4, 0, -5, 0, 1, 0},  {0, -4, -4, 1, 1, 0}, {0, 4, -4, -1, 1, 0},
                               {0, -2, -1, 2, 1, 0}, {0, 2, -1, -2, 1, 0}, {0, 4, 0, -5, 0, 1}};
// A^T (m, 6): row i is p^i at the finite points, the last column is infinity's.
constexpr float kAT4[4][kN] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 0}, {0, 1, 1, 4, 4, 0}, {0, 1, -1, 8, -8, 1}};
constexpr float kAT2[2][kN] = {{1, 1, 1, 1, 1, 0}, {0, 1, -1, 2, -2, 1}};
// G (6, r): row j is p^k / prod_{l != j}(p - p_l) for finite p, (0, ..., 0, 1) for infinity.
double g_entry(int j, int k, int r) {
  static const double pts[5] = {0, 1, -1, 2, -2};
  if (j == kN - 1) return k == r - 1 ? 1.0 : 0.0;
  double f = 1, pk = 1;
  for (int l = 0; l < 5; ++l)
    if (l != j) f *= pts[j] - pts[l];
  for (int i = 0; i < k; ++i) pk *= pts[j];
  return pk / f;
}

// Tiles per thread job, a multiple of 12 (the GEMM's micro-tile rows). Each of the 36 GEMMs of a chunk
// streams its packed U (Cg x Kg floats, 0.4 MB for conv3) from L3 for 2 * tc FLOPs per float, so tc
// must be large; V (36, tc, C) + M (36, tc, K) are kept near kChunkBudget (each GEMM's own slice of V,
// tc x Cg, stays in L2).
constexpr int64_t kChunkBudget = int64_t(CHUNK_MB) << 20;
int tiles_per_chunk(int C, int K) {
  const int64_t per_tile = int64_t(kNN) * (C + K) * 4;
  const int64_t tc = std::max<int64_t>(12, std::min<int64_t>(480, kChunkBudget / per_tile));
  return static_cast<int>(tc / 12 * 12);
}

// U (g, 36, Kg, Cg) = G w_k,c G^T, in double then rounded; channel vectors innermost (w's C is contiguous),
// so U is the transposed (N, K) form of each GEMM's B operand, packed with trans_b.
void transform_filters(const ConvShape& s, const float* w, float* U) {
  const int R = s.R, Cg = s.C / s.groups, Kg = s.K / s.groups;
  double G[kN][5];
  for (int j = 0; j < kN; ++j)
    for (int k = 0; k < R; ++k) G[j][k] = g_entry(j, k, R);
#pragma omp parallel
  {
    std::vector<double> t(size_t(kN) * R * Cg), acc(Cg);
#pragma omp for schedule(static)
    for (int k = 0; k < s.K; ++k) {
      const int g = k / Kg, kk = k % Kg;
      const float* wk = w + int64_t(k) * R * R * Cg;
      for (int i = 0; i < kN; ++i)
        for (int b = 0; b < R; ++b) {
          double* ti = t.data() + (i * R + b) * Cg;
          for (int c = 0; c < Cg; ++c) ti[c] = 0;
          for (int r = 0; r < R; ++r) {
            const double f = G[i][r];
            if (f == 0) continue;
            const float* src = wk + (r * R + b) * Cg;
            for (int c = 0; c < Cg; ++c) ti[c] += f * src[c];
          }
        }
      for (int i = 0; i < kN; ++i)
        for (int j = 0; j < kN; ++j) {
          for (int c = 0; c < Cg; ++c) acc[c] = 0;
          for (int b = 0; b < R; ++b) {
            const double f = G[j][b];
            if (f == 0) continue;
            const double* ti = t.data() + (i * R + b) * Cg;
            for (int c = 0; c < Cg; ++c) acc[c] += f * ti[c];
          }
          float* dst = U + ((int64_t(g) * kNN + i * kN + j) * Kg + kk) * Cg;
          for (int c = 0; c < Cg; ++c) dst[c] = static_cast<float>(acc[c]);
        }
    }
  }
}

struct Plan {
  int m, th, tw;  // outputs per tile side, tile rows and columns per image
  int64_t tiles;  // N * th * tw
};

// out[c] = sum_a coef[a] * in[a][c] over `na` vectors of C floats with stride `ldin` (zero coefs skipped).
inline void combine(const float* coef, int na, const float* in, int64_t ldin, int C, float* out) {
  bool first = true;
  for (int a = 0; a < na; ++a) {
    const float f = coef[a];
    if (f == 0.0f) continue;
    const float* src = in + a * ldin;
    if (first) {
      for (int c = 0; c < C; ++c) out[c] = f * src[c];
      first = false;
    } else {
      for (int c = 0; c < C; ++c) out[c] += f * src[c];
    }
  }
  if (first) std::memset(out, 0, sizeof(float) * C);
}

// V[xi][t][:] = (B^T d B)[xi] of chunk tile t (global tile `tile`), d read from x, zero outside.
// scratch: 2 * 36 * C floats.
void input_transform(const ConvShape& s, const Plan& p, const float* x, int64_t tile, int t, int tc, float* V,
                     float* scratch) {
  const int C = s.C;
  const int64_t per_img = int64_t(p.th) * p.tw;
  const int64_t n = tile / per_img;
  const int rem = static_cast<int>(tile % per_img);
  const int h0 = (rem / p.tw) * p.m - s.pad_h, w0 = (rem % p.tw) * p.m - s.pad_w;
  float* d = scratch;              // (6, 6, C)
  float* tmp = scratch + kNN * C;  // (6, 6, C): tmp[i][b] = sum_a BT[i][a] d[a][b]
  for (int a = 0; a < kN; ++a)
    for (int b = 0; b < kN; ++b) {
      const int h = h0 + a, ww = w0 + b;
      float* dst = d + (a * kN + b) * C;
      if (h < 0 || h >= s.H || ww < 0 || ww >= s.W)
        std::memset(dst, 0, sizeof(float) * C);
      else
        std::memcpy(dst, x + ((n * s.H + h) * s.W + ww) * C, sizeof(float) * C);
    }
  for (int i = 0; i < kN; ++i)
    for (int b = 0; b < kN; ++b) combine(kBT[i], kN, d + b * C, int64_t(kN) * C, C, tmp + (i * kN + b) * C);
  for (int i = 0; i < kN; ++i)
    for (int j = 0; j < kN; ++j)
      combine(kBT[j], kN, tmp + i * kN * C, C, C, V + (int64_t(i * kN + j) * tc + t) * C);
}

// y tile of chunk tile t = A^T M A (+ bias, + old y, ReLU), written where inside (P, Q).
// scratch: (m * 6 + m * m) * K floats.
void output_transform(const ConvShape& s, const Plan& p, const float* M, int64_t tile, int t, int tc, const float* b,
                      float* y, bool accumulate, bool relu, float* scratch) {
  const int K = s.K, m = p.m;
  const float* AT = m == 4 ? &kAT4[0][0] : &kAT2[0][0];
  const int64_t per_img = int64_t(p.th) * p.tw;
  const int64_t n = tile / per_img;
  const int rem = static_cast<int>(tile % per_img);
  const int p0 = (rem / p.tw) * m, q0 = (rem % p.tw) * m;
  float* tmp = scratch;  // (m, 6, K): tmp[i][b] = sum_a AT[i][a] M[a][b]
  float* out = scratch + m * kN * K;
  for (int i = 0; i < m; ++i)
    for (int bb = 0; bb < kN; ++bb)
      combine(AT + i * kN, kN, M + (int64_t(bb) * tc + t) * K, int64_t(kN) * tc * K, K, tmp + (i * kN + bb) * K);
  for (int i = 0; i < m; ++i) {
    if (p0 + i >= s.P) break;
    for (int j = 0; j < m; ++j) {
      if (q0 + j >= s.Q) break;
      combine(AT + j * kN, kN, tmp + i * kN * K, K, K, out);
      float* dst = y + ((n * s.P + p0 + i) * s.Q + q0 + j) * K;
      for (int k = 0; k < K; ++k) {
        float v = out[k] + (b ? b[k] : 0.0f) + (accumulate ? dst[k] : 0.0f);
        dst[k] = relu ? std::max(v, 0.0f) : v;
      }
    }
  }
}

}  // namespace

bool winograd_supported(const ConvShape& s) {
  return s.stride_h == 1 && s.stride_w == 1 && s.R == s.S && (s.R == 3 || s.R == 5) && s.pad_h < s.R &&
         s.pad_w < s.R;
}

bool winograd_chosen(const ConvShape& s) {
  if (!winograd_supported(s)) return false;
  const char* env = std::getenv("CONVNET_CONV_ALGORITHM");
  if (env && std::strcmp(env, "winograd") == 0) return true;
  if (env && std::strcmp(env, "direct") == 0) return false;
  // auto: not chosen until the selector's rule is measured (benchmarks/RESULTS.md).
  return false;
}

void winograd_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                      bool accumulate, bool relu) {
  const int groups = s.groups, Cg = s.C / groups, Kg = s.K / groups;
  Plan p;
  p.m = kN - s.R + 1;
  p.th = (s.P + p.m - 1) / p.m;
  p.tw = (s.Q + p.m - 1) / p.m;
  p.tiles = int64_t(s.N) * p.th * p.tw;
  std::vector<float> U(size_t(groups) * kNN * Cg * Kg);
  transform_filters(s, w, U.data());
  // Each (group, point) B operand U (Cg, Kg) packed once into the GEMM's panels, shared by all chunks.
  const int64_t per_b = packed_b_floats(Cg, Kg);
  const int nblk = packed_b_blocks(Cg);
  std::vector<float> Up_store(size_t(groups) * kNN * per_b + 16);
  float* Up = Up_store.data() + ((16 - (reinterpret_cast<uintptr_t>(Up_store.data()) / 4) % 16) % 16);
#pragma omp parallel for schedule(static)
  for (int64_t job = 0; job < int64_t(groups) * kNN * nblk; ++job) {
    const int64_t gx = job / nblk;
    pack_b_block(true, U.data() + gx * Cg * Kg, Cg, Cg, Kg, static_cast<int>(job % nblk), Up + gx * per_b);
  }
  const int tc = tiles_per_chunk(s.C, s.K);
  const int64_t chunks = (p.tiles + tc - 1) / tc;
#pragma omp parallel
  {
    std::vector<float> V(size_t(kNN) * tc * s.C), M(size_t(kNN) * tc * s.K);
    std::vector<float> scratch(std::max<size_t>(size_t(2) * kNN * s.C, size_t(p.m) * (kN + p.m) * s.K));
#pragma omp for schedule(dynamic)
    for (int64_t ch = 0; ch < chunks; ++ch) {
      const int64_t t0 = ch * tc;
      const int nt = static_cast<int>(std::min<int64_t>(tc, p.tiles - t0));
      for (int t = 0; t < nt; ++t) input_transform(s, p, x, t0 + t, t, tc, V.data(), scratch.data());
      for (int xi = 0; xi < kNN; ++xi)
        for (int g = 0; g < groups; ++g)
          gemm_packed_b(false, nt, Kg, Cg, 1.0f, V.data() + int64_t(xi) * tc * s.C + g * Cg, s.C,
                        Up + (int64_t(g) * kNN + xi) * per_b, 0.0f, M.data() + int64_t(xi) * tc * s.K + g * Kg, s.K);
      for (int t = 0; t < nt; ++t)
        output_transform(s, p, M.data(), t0 + t, t, tc, b, y, accumulate, relu, scratch.data());
    }
  }
}

void winograd_backward_data(const ConvShape& s, const float* dy, const float* w, float* dx, bool accumulate) {
  // dx = conv(dy padded by R-1-pad, w turned): w_t (C, R, S, Kg)[g*Cg + c][r][s][k] = w[g*Kg + k][R-1-r][S-1-s][c].
  const int groups = s.groups, Cg = s.C / groups, Kg = s.K / groups, R = s.R, S = s.S;
  std::vector<float> wt(size_t(s.C) * R * S * Kg);
  for (int g = 0; g < groups; ++g)
    for (int c = 0; c < Cg; ++c)
      for (int r = 0; r < R; ++r)
        for (int q = 0; q < S; ++q)
          for (int k = 0; k < Kg; ++k)
            wt[((size_t(g * Cg + c) * R + r) * S + q) * Kg + k] =
                w[((size_t(g * Kg + k) * R + (R - 1 - r)) * S + (S - 1 - q)) * Cg + c];
  ConvShape t = s;
  t.H = s.P;
  t.W = s.Q;
  t.C = s.K;
  t.K = s.C;
  t.P = s.H;
  t.Q = s.W;
  t.pad_h = R - 1 - s.pad_h;
  t.pad_w = S - 1 - s.pad_w;
  winograd_forward(t, dy, wt.data(), nullptr, dx, accumulate, false);
}

}  // namespace cpu
}  // namespace convnet
