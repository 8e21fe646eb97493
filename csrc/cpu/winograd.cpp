// CPU Winograd convolution: see winograd.h for what it computes, the layout and the accuracy.
#include "winograd.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>

#include "gemm_bf16.h"  // gemm_precision: auto is direct under bf16
#include "gemm_internal.h"
#include "parallel.h"

#ifdef CONVNET_WITH_OPENMP
#include <omp.h>
#endif

namespace convnet {
namespace cpu {

namespace {

constexpr int kN = 6;  // transform tile side
constexpr int kNN = kN * kN;

// The transforms, from the finite points 0, 1, -1, 2, -2 and infinity (row-major, leading dimension kN):
//   B^T (6, 6), shared by every split m + r - 1 = 6;
//   A^T (m, 6) of F(m, .): row i is p^i at the finite points, infinity's column is 1 in the last row;
//   G (6, r) of F(., r): row j is p_j^k / prod_{l != j} (p_j - p_l), infinity's row is (0, ..., 0, 1).
constexpr float kBT[kN * kN] = {4, 0, -5, 0,  1, 0, 0, -4, -4, 1,  1, 0, 0, 4, -4, -1, 1, 0,
                                0, -2, -1, 2, 1, 0, 0, 2,  -1, -2, 1, 0, 0, 4, 0,  -5, 0, 1};
constexpr double kPoints[kN - 1] = {0, 1, -1, 2, -2};

struct Transforms {
  float AT[kN + 1][kN * kN];  // AT[m]: (m, 6)
  float G[kN + 1][kN * kN];   // G[r]: (6, r), leading dimension kN
  Transforms() {
    for (int m = 1; m <= kN; ++m)
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < kN; ++j) {
          double v = j == kN - 1 ? (i == m - 1 ? 1.0 : 0.0) : 1.0;
          if (j < kN - 1)
            for (int e = 0; e < i; ++e) v *= kPoints[j];
          AT[m][i * kN + j] = static_cast<float>(v);
        }
    for (int r = 1; r <= kN; ++r)
      for (int j = 0; j < kN; ++j)
        for (int k = 0; k < r; ++k) {
          double v;
          if (j == kN - 1) {
            v = k == r - 1 ? 1.0 : 0.0;
          } else {
            double f = 1, pk = 1;
            for (int l = 0; l < kN - 1; ++l)
              if (l != j) f *= kPoints[j] - kPoints[l];
            for (int e = 0; e < k; ++e) pk *= kPoints[j];
            v = pk / f;
          }
          G[r][j * kN + k] = static_cast<float>(v);
        }
  }
};
const Transforms& transforms() {
  static const Transforms t;
  return t;
}

// out[c] = sum_a coef[a] * in[a * ldin + c] for c < L (zero coefficients skipped).
inline void combine(const float* coef, int na, const float* in, int64_t ldin, int L, float* out) {
  bool first = true;
  for (int a = 0; a < na; ++a) {
    const float f = coef[a];
    if (f == 0.0f) continue;
    const float* src = in + a * ldin;
    if (first) {
      for (int c = 0; c < L; ++c) out[c] = f * src[c];
      first = false;
    } else {
      for (int c = 0; c < L; ++c) out[c] += f * src[c];
    }
  }
  if (first) std::memset(out, 0, sizeof(float) * L);
}

// out (b x b vectors of L floats, vector (i, j) at out + (i * b + j) * ldout) = T in T^T, with T (b, a)
// row-major (leading dimension kN) and in a x a vectors, vector (u, v) at in + (u * a + v) * ldin.
// tmp: b * a * L floats.
void transform2d(const float* T, int b, int a, const float* in, int64_t ldin, int L, float* out, int64_t ldout,
                 float* tmp) {
  for (int i = 0; i < b; ++i)
    for (int v = 0; v < a; ++v) combine(T + i * kN, a, in + v * ldin, a * ldin, L, tmp + (i * a + v) * L);
  for (int i = 0; i < b; ++i)
    for (int j = 0; j < b; ++j) combine(T + j * kN, a, tmp + i * a * L, L, L, out + (i * b + j) * ldout);
}

// Buffers kept for the thread's life (OpenMP reuses its pool threads), 64-byte aligned, never zeroed.
// Slots: 0-2 belong to the calling thread's whole call (shared read-only by the workers), 3-5 to a worker.
enum Slot { kPacked, kCall, kV, kM, kTmp, kSlots };
float* buffer(Slot slot, int64_t n) {
  thread_local AlignedWorkspace bufs[kSlots];
  return bufs[slot].reserve(n, "conv (winograd)");
}

void record(std::exception_ptr* error) {
CONVNET_OMP(critical(convnet_winograd_error))
  if (!*error) *error = std::current_exception();
}

// The tiles in chunks of tc, in order; per chunk, three phases, each shared by all threads (one
// parallel region, a barrier after each phase):
//   pre(t, i, tmp)  for the chunk's tiles (global t, i-th of the chunk): the input-side transforms;
//   mul(xi, g, i0, nt, t0) for the 36 x groups transform-domain GEMMs of the chunk's nt tiles;
//   post(t, i, tmp) for the chunk's tiles: the output transform (forward).
// Every GEMM job reads its U_xi once per chunk for all the chunk's tiles (cutting the tiles between
// threads instead made each thread stream all 36 U_xi: conv3's 14 MB per 32 tiles, and the GEMMs
// waited on memory). tmp: tmp_floats per thread. The first exception is rethrown after the region.
template <class Pre, class Mul, class Post>
void run_chunks(int64_t tiles, int tc, int jobs, int64_t tmp_floats, bool parallel, Pre pre, Mul mul, Post post) {
  std::exception_ptr error;
  (void)parallel;
CONVNET_OMP(parallel if (parallel))
  {
    float* tmp = nullptr;
    try {
      tmp = buffer(kTmp, tmp_floats);
    } catch (...) {
      record(&error);
    }
    for (int64_t t0 = 0; t0 < tiles; t0 += tc) {
      const int nt = static_cast<int>(std::min<int64_t>(tc, tiles - t0));
CONVNET_OMP(for schedule(dynamic, 4))
      for (int i = 0; i < nt; ++i)
        if (tmp) pre(t0 + i, i, tmp);
CONVNET_OMP(for schedule(dynamic, 1))
      for (int job = 0; job < jobs; ++job) {
        try {
          mul(job % kNN, job / kNN, nt, t0);
        } catch (...) {
          record(&error);
        }
      }
CONVNET_OMP(for schedule(dynamic, 4))
      for (int i = 0; i < nt; ++i)
        if (tmp) post(t0 + i, i, tmp);
    }
  }
  if (error) std::rethrow_exception(error);
}

// Tiles of m x m outputs over an (N, P, Q) output; tile t = (n, tile row, tile column).
struct Tiling {
  int m, th, tw;
  int64_t count;
  Tiling(int N, int P, int Q, int m_) : m(m_), th((P + m_ - 1) / m_), tw((Q + m_ - 1) / m_) {
    count = int64_t(N) * th * tw;
  }
  void origin(int64_t t, int64_t* n, int* p0, int* q0) const {
    const int64_t per_img = int64_t(th) * tw;
    *n = t / per_img;
    const int rem = static_cast<int>(t % per_img);
    *p0 = (rem / tw) * m;
    *q0 = (rem % tw) * m;
  }
};

// d (rows, cols, C) <- x[n, h0 : h0 + rows, w0 : w0 + cols, :], zero outside (H, W).
void gather(const float* x, int H, int W, int C, int64_t n, int h0, int w0, int rows, int cols, float* d) {
  for (int a = 0; a < rows; ++a)
    for (int b = 0; b < cols; ++b) {
      const int h = h0 + a, w = w0 + b;
      float* dst = d + (a * cols + b) * C;
      if (h < 0 || h >= H || w < 0 || w >= W)
        std::memset(dst, 0, sizeof(float) * C);
      else
        std::memcpy(dst, x + ((n * H + h) * W + w) * C, sizeof(float) * C);
    }
}

// Tiles per chunk: what keeps the chunk's V and M (36 * tc * (C + K) floats) near kChunkBytes, so that
// they stay in the last-level cache between the phases, whole 12-row micro-tiles of the GEMM (forward)
// or 16-deep steps (backward-filter), or all the tiles when they fit. Each GEMM job's own operands
// (V_xi (tc, Cg), U_xi, M_xi (tc, Kg): conv3 at tc = 128 0.13 + 0.39 + 0.2 MB) stay in L2.
constexpr int64_t kChunkBytes = int64_t(16) << 20;
int tiles_per_chunk(int64_t tiles, int C, int K) {
  const int64_t by_bytes = kChunkBytes / (int64_t(kNN) * (C + K) * 4);
  if (tiles <= by_bytes) return static_cast<int>(tiles);
  return static_cast<int>(std::max<int64_t>(12, by_bytes / 12 * 12));
}

// Whether a pass is worth a parallel region: its transform-domain GEMMs' multiply-adds.
bool worth_threads(int64_t tiles, int C, int K, int groups) {
  return tiles * kNN * int64_t(C / groups) * K > (int64_t(1) << 22);
}

// U_xi (Cg, Kg) = (G w G^T)[xi] per group and point, written straight into the GEMM's packed B layout
// (gemm_internal.h: K blocks of KC rows, each NR-column micro-panels of kc x NR floats, columns past Kg
// zero) -- no U tensor is stored (conv3's U is 14 MB). The transform runs on rows of U_xi: Kg-vectors,
// one per (group, input channel c) and tap, of the filters with their K axis contiguous:
//   forward: w turned into wK (g, R, R, Cg, Kg) first (16 x 16 blocks: 1/4 of U's bytes);
//   turned, the backward-data conv (its filter c of group g, tap (r, q), channel k is
//   w[g Kg' + k][R-1-r][R-1-q][c]: 180 degrees, K <-> C; s its forward-form shape): original filter
//   g Kg' + c's taps, walked backwards, are already those rows.
// Rows go in blocks of kRowBlock, so that each packed panel gets kRowBlock x NR contiguous floats per
// write (one NR-float copy per row and panel touched a new page per copy: 40 % of a batch-1 pass).
// Returns the packed operands, (g, 36) of *per_b floats each.
constexpr int kRowBlock = 8;
float* transform_pack_filters(const ConvShape& s, const float* w, bool turned, int64_t* per_b) {
  const int R = s.R, RR = R * R, groups = s.groups, Cg = s.C / groups, Kg = s.K / groups;
  const int KC = gemm_kc(), NR = gemm_nr();
  const int64_t Np = (Kg + NR - 1) / NR * NR;
  const float* G = transforms().G[R];
  *per_b = packed_b_floats(Cg, Kg);
  const int64_t pb = *per_b;
  float* Up = buffer(kPacked, int64_t(groups) * kNN * pb);
  const bool par = int64_t(s.C) * Kg * kNN > kParallelGrain;
  (void)par;
  const float* wK = nullptr;
  if (!turned) {  // wK[g][t][c][k] = w[g Kg + k][t][c], t = tap, in 16 x 16 blocks of (k, c)
    float* t = buffer(kCall, int64_t(s.K) * RR * Cg);
    const int kb = (Kg + 15) / 16, cb = (Cg + 15) / 16;
CONVNET_OMP(parallel for schedule(static) if (par))
    for (int64_t job = 0; job < int64_t(groups) * RR * kb; ++job) {
      const int g = static_cast<int>(job / (RR * kb)), tap = static_cast<int>(job / kb % RR);
      const int k0 = static_cast<int>(job % kb) * 16, k1 = std::min(Kg, k0 + 16);
      for (int c0b = 0; c0b < cb; ++c0b) {
        const int c0 = c0b * 16, c1 = std::min(Cg, c0 + 16);
        for (int k = k0; k < k1; ++k) {
          const float* src = w + ((int64_t(g) * Kg + k) * RR + tap) * Cg;
          float* dst = t + (int64_t(g) * RR + tap) * Cg * Kg + k;
          for (int c = c0; c < c1; ++c) dst[int64_t(c) * Kg] = src[c];
        }
      }
    }
    wK = t;
  }
  const int blocks_per_group = (Cg + kRowBlock - 1) / kRowBlock;
  std::exception_ptr error;
CONVNET_OMP(parallel if (par))
  {
    float* tmp = nullptr;
    try {
      tmp = buffer(kTmp, int64_t(kN) * R * Kg + int64_t(kRowBlock) * kNN * Np);
    } catch (...) {
      record(&error);
    }
CONVNET_OMP(for schedule(static))
    for (int64_t job = 0; job < int64_t(groups) * blocks_per_group; ++job) {
      if (!tmp) continue;
      const int g = static_cast<int>(job / blocks_per_group);
      const int c0 = static_cast<int>(job % blocks_per_group) * kRowBlock, c1 = std::min(Cg, c0 + kRowBlock);
      float* out = tmp + int64_t(kN) * R * Kg;  // (rows, 36, Np)
      for (int c = c0; c < c1; ++c) {
        float* o = out + int64_t(c - c0) * kNN * Np;
        if (turned)  // taps of original filter g Cg + c, last first
          transform2d(G, kN, R, w + (int64_t(g * Cg + c) * RR + RR - 1) * Kg, -int64_t(Kg), Kg, o, Np, tmp);
        else
          transform2d(G, kN, R, wK + (int64_t(g) * RR * Cg + c) * Kg, int64_t(Cg) * Kg, Kg, o, Np, tmp);
        for (int xi = 0; xi < kNN; ++xi) std::fill(o + xi * Np + Kg, o + (xi + 1) * Np, 0.0f);
      }
      // rows [c0, c1) lie in one K block (kRowBlock divides KC)
      const int pc = c0 / KC * KC, kc = std::min(KC, Cg - pc);
      for (int xi = 0; xi < kNN; ++xi) {
        float* block = Up + (int64_t(g) * kNN + xi) * pb + int64_t(pc) * Np;
        for (int64_t j = 0; j < Np; j += NR) {
          float* dst = block + j * kc + int64_t(c0 - pc) * NR;
          for (int c = c0; c < c1; ++c, dst += NR)
            std::memcpy(dst, out + (int64_t(c - c0) * kNN + xi) * Np + j, sizeof(float) * NR);
        }
      }
    }
  }
  if (error) std::rethrow_exception(error);
  return Up;
}

}  // namespace

std::string winograd_unsupported(const ConvShape& s) {
  if (s.stride_h != 1 || s.stride_w != 1) return "Winograd convolution needs stride 1";
  if (s.R != s.S || (s.R != 3 && s.R != 5)) return "Winograd convolution needs a 3x3 or 5x5 filter";
  if (s.pad_h >= s.R || s.pad_w >= s.R) return "Winograd convolution needs padding below the filter size";
  return "";
}

// The rule measured in benchmarks/RESULTS.md ("Winograd convolution on the CPU"): each call transforms
// and packs all filters (conv3: 14 MB of packed U), a cost that only enough output pixels amortise, and
// the transform-domain GEMMs need enough channels per group on both sides to run near the GEMM's peak;
// 5x5 (F(2x2,5x5)) never beat direct there. Under bf16 GEMMs auto stays direct: the transforms grow the
// inputs' rounding error (10-15x the direct error for F(4x4,3x3)) on top of bf16's 2^-9, which the bf16 contract does
// not allow for; algorithm="winograd" still forces it.
bool winograd_chosen(const ConvShape& s, ConvPass pass) {
  if (s.algorithm == ConvAlgorithm::Direct) return false;
  if (s.algorithm == ConvAlgorithm::Winograd) return true;
  if (!winograd_unsupported(s).empty() || s.R != 3) return false;
  if (gemm_precision() == Precision::BF16) return false;
  const int Cg = s.C / s.groups, Kg = s.K / s.groups;
  if (Cg < 64 || Kg < 64) return false;
  const int64_t pixels = int64_t(s.N) * s.P * s.Q;
  return pixels >= (pass == ConvPass::Forward ? 4096 : 1024);
}

namespace {

// The forward of w, or of w turned (transform_pack_filters) for the backward-data conv.
void forward_packed(const ConvShape& s, const float* x, const float* w, bool turned, const float* b, float* y,
                    bool accumulate, bool relu) {
  const int groups = s.groups, Cg = s.C / groups, Kg = s.K / groups, C = s.C, K = s.K;
  const Tiling tl(s.N, s.P, s.Q, kN - s.R + 1);
  if (tl.count == 0) return;
  const int m = tl.m;
  int64_t per_b = 0;
  const float* Up = transform_pack_filters(s, w, turned, &per_b);
  const float* AT = transforms().AT[m];
  const int tc = tiles_per_chunk(tl.count, C, K);
  float* V = buffer(kV, int64_t(kNN) * tc * C);  // (36, tc, C)
  float* M = buffer(kM, int64_t(kNN) * tc * K);  // (36, tc, K)
  const int64_t tmp_floats = std::max<int64_t>(int64_t(2) * kNN * C, int64_t(m) * (kN + m) * K);
  run_chunks(
      tl.count, tc, kNN * groups, tmp_floats, worth_threads(tl.count, C, K, groups),
      [&](int64_t t, int i, float* tmp) {  // V[xi][i][:] = (B^T d B)[xi]
        int64_t n;
        int p0, q0;
        tl.origin(t, &n, &p0, &q0);
        float* d = tmp + kNN * C;
        gather(x, s.H, s.W, C, n, p0 - s.pad_h, q0 - s.pad_w, kN, kN, d);
        transform2d(kBT, kN, kN, d, C, C, V + int64_t(i) * C, int64_t(tc) * C, tmp);
      },
      [&](int xi, int g, int nt, int64_t) {  // M_xi (nt, Kg) = V_xi (nt, Cg) U_xi (Cg, Kg), group g
        gemm_packed_b(false, nt, Kg, Cg, 1.0f, V + int64_t(xi) * tc * C + g * Cg, C,
                      Up + (int64_t(g) * kNN + xi) * per_b, 0.0f, M + int64_t(xi) * tc * K + g * Kg, K);
      },
      [&](int64_t t, int i, float* tmp) {  // y tile = A^T M A (+ b, + old y, ReLU), cut to (P, Q)
        int64_t n;
        int p0, q0;
        tl.origin(t, &n, &p0, &q0);
        float* out = tmp + int64_t(m) * kN * K;  // (m, m, K)
        transform2d(AT, m, kN, M + int64_t(i) * K, int64_t(tc) * K, K, out, K, tmp);
        for (int r = 0; r < m && p0 + r < s.P; ++r)
          for (int c = 0; c < m && q0 + c < s.Q; ++c) {
            const float* o = out + (r * m + c) * K;
            float* dst = y + ((n * s.P + p0 + r) * s.Q + q0 + c) * K;
            for (int k = 0; k < K; ++k) {
              const float v = o[k] + (b ? b[k] : 0.0f) + (accumulate ? dst[k] : 0.0f);
              dst[k] = relu ? std::max(v, 0.0f) : v;
            }
          }
      });
}

}  // namespace

void winograd_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                      bool accumulate, bool relu) {
  forward_packed(s, x, w, false, b, y, accumulate, relu);
}

void winograd_backward_data(const ConvShape& s, const float* dy, const float* w, float* dx, bool accumulate) {
  // dx = conv(dy padded by R-1-pad, w turned 180 degrees with K <-> C per group); stride 1 makes the
  // transposed convolution a convolution.
  forward_packed(turned_forward_shape(s), dy, w, true, nullptr, dx, accumulate, false);
}

void winograd_backward_filter(const ConvShape& s, const float* dy, const float* x, float* dw, bool accumulate) {
  const int groups = s.groups, Cg = s.C / groups, Kg = s.K / groups, C = s.C, K = s.K, R = s.R;
  const int m = kN - R + 1;  // dy tile side: F(R x R, m x m)
  const Tiling tl(s.N, s.P, s.Q, m);
  float* Mw = buffer(kCall, int64_t(groups) * kNN * Kg * Cg);  // (g, 36, Kg, Cg)
  const float* Gm = transforms().G[m];
  const float* AT = transforms().AT[R];
  const int tc = tiles_per_chunk(tl.count, C, K);
  float* V = buffer(kV, int64_t(kNN) * tc * C);  // (36, tc, C)
  float* E = buffer(kM, int64_t(kNN) * tc * K);  // (36, tc, K)
  const int64_t tmp_floats = std::max<int64_t>(int64_t(2) * kNN * C, int64_t(kN) * m * K + int64_t(m) * m * K);
  // Each (point, group) block of Mw is one job per chunk, the chunks summed in tile order: dw does not
  // depend on the thread count or the scheduling.
  run_chunks(
      tl.count, tc, kNN * groups, tmp_floats, worth_threads(tl.count, C, K, groups),
      [&](int64_t t, int i, float* tmp) {
        int64_t n;
        int p0, q0;
        tl.origin(t, &n, &p0, &q0);
        float* d = tmp + kNN * C;
        gather(x, s.H, s.W, C, n, p0 - s.pad_h, q0 - s.pad_w, kN, kN, d);
        transform2d(kBT, kN, kN, d, C, C, V + int64_t(i) * C, int64_t(tc) * C, tmp);
        float* e = tmp + int64_t(kN) * m * K;  // dy tile (m, m, K), zero past (P, Q)
        gather(dy, s.P, s.Q, K, n, p0, q0, m, m, e);
        transform2d(Gm, kN, m, e, K, K, E + int64_t(i) * K, int64_t(tc) * K, tmp);
      },
      [&](int xi, int g, int nt, int64_t t0) {  // Mw_xi (Kg, Cg) (=|+=) E_xi^T (Kg, nt) V_xi (nt, Cg), group g
        gemm(true, false, Kg, Cg, nt, 1.0f, E + int64_t(xi) * tc * K + g * Kg, K, V + int64_t(xi) * tc * C + g * Cg,
             C, t0 == 0 ? 0.0f : 1.0f, Mw + (int64_t(g) * kNN + xi) * Kg * Cg, Cg);
      },
      [](int64_t, int, float*) {});
  if (tl.count == 0) std::fill(Mw, Mw + int64_t(groups) * kNN * Kg * Cg, 0.0f);
  // dW[k] = A'^T Mw A' per filter (channel vectors innermost).
  std::exception_ptr error;
CONVNET_OMP(parallel if (int64_t(K) * Cg > kParallelGrain))
  {
    float* tmp = nullptr;
    try {
      tmp = buffer(kTmp, int64_t(R) * kN * Cg + int64_t(R) * R * Cg);
    } catch (...) {
      record(&error);
    }
CONVNET_OMP(for schedule(static))
    for (int k = 0; k < K; ++k) {
      if (!tmp) continue;
      const int g = k / Kg, kk = k % Kg;
      float* out = tmp + int64_t(R) * kN * Cg;  // (R, R, Cg)
      transform2d(AT, R, kN, Mw + (int64_t(g) * kNN * Kg + kk) * Cg, int64_t(Kg) * Cg, Cg, out, Cg, tmp);
      float* dst = dw + int64_t(k) * R * R * Cg;
      for (int i = 0; i < R * R * Cg; ++i) dst[i] = accumulate ? dst[i] + out[i] : out[i];
    }
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace cpu
}  // namespace convnet
