// CPU convolution: forward (+ bias, + fused ReLU), backward to data, backward to filters and bias,
// as GEMMs.
//
// Layouts (backend.h): x (N, H, W, C), w (K, R, S, C/g), y (N, P, Q, K); g = groups, Cg = C/g,
// Kg = K/g, RSC = R*S*Cg. Every pass is a GEMM on a patch matrix whose row is one output pixel
// (n, p, q) and whose columns are laid out (group, r, s, c) -- the same (r, s, c) order as a filter
// row, so group g's patches are the column block [g*RSC, (g+1)*RSC) with row stride g*RSC:
//
//   forward          Y_g  (pix, Kg)  = patches_g (pix, RSC) x W_g^T (RSC, Kg)   (+ b, ReLU per chunk)
//                    (W_g is read as a transposed B operand: the GEMM transposes it while packing)
//   backward data    dP_g (pix, RSC) = dY_g (pix, Kg) x W_g (Kg, RSC),  then col2im into dx
//   backward filter  dW_g (Kg, RSC) += dY_g^T (Kg, pix) x patches_g (pix, RSC),  db = colsum(dy)
//
// Two drivers (threads T = omp_get_max_threads()):
//   * N >= 2T (any training batch): ONE parallel region per pass over chunks of the patch matrix.
//     Each thread builds its chunk in its own buffer (<= 1.5 MB, so the GEMM's packing reads it back
//     from L2), runs a serial GEMM on it (cpu::gemm runs serially inside a parallel region) and
//     finishes it while it is in cache: bias + ReLU for the forward, col2im for backward-data.
//     Forward chunks are row ranges (>= 64 rows, whole 12-row micro-tiles); backward-data chunks
//     are whole images (col2im must see every tap of an input pixel). Both are scheduled
//     dynamically: chunks write disjoint outputs. Backward-filter cuts the rows into fixed slots
//     (their number and size from the shape alone, for every N), taken dynamically, each summing
//     into its own dW, added in slot order at the end.
//     Why: the previous driver (below) had an im2col region, a parallel GEMM and a bias region per
//     chunk, i.e. three fork/join barriers per image for conv1/conv2. On this project's 2-core
//     machines, shared with other jobs, every barrier waits for the slowest thread's next time
//     slice; a training step of the small net went 101 -> 457 images/s from this change alone.
//   * N < 2T: a serial loop over chunks of whole images (patch matrix <= 8 MB), with the parallel
//     GEMM inside and im2col / col2im as parallel loops between GEMM calls (never nested).
// Where the channels allow, the image-parallel driver stores no patch matrix at all (gemm_internal.h):
//   * forward (Cg % 16 == 0): the GEMM packs its A panels from row pointers into x (patch_rows), and
//     the weights are packed ONCE per call into B panels shared by every chunk (each chunk's GEMM used
//     to re-pack all of W: conv3 = 3.5 MB per 168-row chunk, each packed weight feeding 336 FLOPs);
//   * backward-data (stride 1, Cg % 32 == 0, Cg >= 128): dx is the forward conv of dy with the
//     filters turned 180 degrees (K <-> C), run the same way: no dpatches, no col2im;
//   * backward-filter (Cg % 32 == 0): the GEMM's B panels (patch rows x 32 channels of one tap) are
//     packed straight from x (pack_patch_panel), unless the transposed (RSC, Kg) tiling is chosen.
//   Napkin math, conv3 at batch 8 (1352 x 2304 patch matrix = 12.5 MB, 2.7 GFLOP per pass): im2col
//   wrote 12.5 MB and the GEMM's packing read it back (~25 MB through L2/L3, at ~20-40 GB/s per core
//   ~0.3-0.6 ms of the ~2.5 ms per core), and 9 chunks each re-packed W (8 x 3.5 MB). Measured: the
//   3x3 layers' forward and backward-data 5-15 % faster, conv3/conv4 backward-filter 3-15 %
//   (benchmarks/RESULTS.md, "3x3 layers without a patch matrix").
// AlexNet conv1 at batch 128 would need 128 x 3025 x 363 x 4 B = 562 MB of patches in one piece;
// chunking keeps it to a few MB. A 1x1, stride-1, unpadded conv needs no patch matrix at all: x
// itself is the (N*H*W, C) patch matrix.
//
// col2im is a gather, not a scatter: each input pixel (n, h, w) sums the patch-gradient entries of
// the taps that read it, in a fixed (r, s) order, so it parallelises over input pixels with no races
// and writes each dx element exactly once (no zero-fill pass; `accumulate` adds to the old value).
// dW sums its chunks in a fixed order (chunk order inside a slot, then slot order), and the slots
// and chunks are cut from the shape alone, so dw depends neither on the scheduling nor on the thread
// count (OMP_NUM_THREADS): data-parallel ranks and a single process give the same bits
// (tests/test_conv.py runs it at 1, 2 and 3 threads).
//
// Napkin math: AlexNet-2012 conv2 (N=128, 27x27x96 -> 27x27x256, 5x5, pad 2, groups 2) is
// 2 * 93312 * 128 * 1200 * 2 = 57.3 GFLOP per pass; the im2col it needs moves 93312 x 2400 x 4 B =
// 0.9 GB written + read once per pass, ~0.1-0.2 s at CPU bandwidths, well under the GEMM's time on
// 2 cores (~0.6 s even at 100 GFLOP/s): the GEMM dominates.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <new>
#include <vector>

#include "backend.h"
#include "gemm_internal.h"
#include "parallel.h"
#include "winograd.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#ifdef CONVNET_WITH_OPENMP
#include <omp.h>
#endif

namespace convnet {
namespace cpu {

namespace {

// Patch-matrix budget per chunk of images: small enough to stay in the last-level cache between
// im2col and the GEMM that reads it, large enough for GEMMs of hundreds to thousands of rows.
constexpr int64_t kChunkBytes = int64_t(8) << 20;

struct Geo {
  int Cg, Kg, RSC, ldp;  // ldp = groups * RSC: the patch matrix's row stride
  int64_t PQ, HW;
};

Geo geo_of(const ConvShape& s) {
  Geo g;
  g.Cg = s.C / s.groups;
  g.Kg = s.K / s.groups;
  g.RSC = s.R * s.S * g.Cg;
  g.ldp = s.groups * g.RSC;
  g.PQ = static_cast<int64_t>(s.P) * s.Q;
  g.HW = static_cast<int64_t>(s.H) * s.W;
  return g;
}

bool is_pointwise(const ConvShape& s) {
  return s.R == 1 && s.S == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 && s.pad_w == 0;
}

// Images per chunk so that the (chunk * P * Q, groups * RSC) patch matrix fits kChunkBytes.
int chunk_images(const ConvShape& s, const Geo& g) {
  const int64_t per_image = std::max<int64_t>(1, g.PQ * g.ldp * static_cast<int64_t>(sizeof(float)));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(s.N, kChunkBytes / per_image)));
}

// patches (n_img * P * Q, groups * RSC) for images [n0, n0 + n_img); zero where a tap hits padding.
//
// For one output pixel and one filter row r, the S taps read S consecutive input pixels, i.e. S * C
// consecutive floats of x. With one group that run is also consecutive in the patch row ((r, s, c)
// order), so each (pixel, r) is one copy of the in-bounds part plus zero fills at the edges: 11
// copies of up to 33 floats per conv1 patch instead of 121 copies of 3 floats (the per-call cost of
// tiny memcpys made im2col most of conv1's time). With groups, each group's Cg channels per tap are
// a separate run.
inline void copy_floats(float* dst, const float* src, int n) {
  int i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_loadu_ps(src + i));
  if (i < n) {
    const __mmask16 m = static_cast<__mmask16>((1u << (n - i)) - 1u);
    _mm512_mask_storeu_ps(dst + i, m, _mm512_maskz_loadu_ps(m, src + i));
  }
#else
  for (; i < n; ++i) dst[i] = src[i];
#endif
}

inline void zero_floats(float* dst, int n) {
  for (int i = 0; i < n; ++i) dst[i] = 0.0f;
}

// Rows [row0, row0 + rows) of the whole (N * P * Q, groups * RSC) patch matrix (any range: a chunk
// may start or end inside an image).
void im2col_rows(const ConvShape& s, const Geo& g, const float* x, int64_t row0, int64_t rows, float* patches) {
CONVNET_OMP(parallel for schedule(static) if (rows * g.ldp > (1 << 15)))
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = (row0 + row) / g.PQ;
    const int pq = static_cast<int>((row0 + row) % g.PQ);
    const int p = pq / s.Q, q = pq % s.Q;
    const float* xn = x + n * g.HW * s.C;
    float* out = patches + row * g.ldp;
    const int w0 = q * s.stride_w - s.pad_w;
    // taps t in [t_lo, t_hi) are inside the image horizontally
    const int t_lo = std::max(0, -w0), t_hi = std::min(s.S, s.W - w0);
    for (int r = 0; r < s.R; ++r) {
      const int h = p * s.stride_h - s.pad_h + r;
      const bool row_ok = h >= 0 && h < s.H && t_lo < t_hi;
      // tap t of this filter row at xr + t * C (only formed when the row is inside the image)
      const float* xr = row_ok ? xn + (static_cast<int64_t>(h) * s.W + w0) * s.C : xn;
      if (s.groups == 1) {
        float* o = out + static_cast<int64_t>(r) * s.S * s.C;
        if (!row_ok) {
          zero_floats(o, s.S * s.C);
          continue;
        }
        zero_floats(o, t_lo * s.C);
        copy_floats(o + t_lo * s.C, xr + static_cast<int64_t>(t_lo) * s.C, (t_hi - t_lo) * s.C);
        zero_floats(o + t_hi * s.C, (s.S - t_hi) * s.C);
      } else {
        for (int grp = 0; grp < s.groups; ++grp) {
          float* o = out + static_cast<int64_t>(grp) * g.RSC + static_cast<int64_t>(r) * s.S * g.Cg;
          for (int t = 0; t < s.S; ++t, o += g.Cg) {
            if (row_ok && t >= t_lo && t < t_hi)
              copy_floats(o, xr + static_cast<int64_t>(t) * s.C + static_cast<int64_t>(grp) * g.Cg, g.Cg);
            else
              zero_floats(o, g.Cg);
          }
        }
      }
    }
  }
}

void im2col(const ConvShape& s, const Geo& g, const float* x, int n0, int n_img, float* patches) {
  im2col_rows(s, g, x, n0 * g.PQ, n_img * g.PQ, patches);
}

// dx for images [n0, n0 + n_img) (=|+=) the gather of dpatches (n_img * P * Q, groups * RSC):
// dx[n, h, w, grp*Cg + c] = sum over taps (r, s) with h = p*sh - ph + r, w = q*sw - pw + s for a valid
// output pixel (p, q), of dpatches[(n, p, q), grp*RSC + (r*S + s)*Cg + c].
void col2im(const ConvShape& s, const Geo& g, const float* dpatches, int n0, int n_img, float* dx,
            bool accumulate) {
  const int64_t pixels = n_img * g.HW;
CONVNET_OMP(parallel for schedule(static) if (pixels * s.C > (1 << 15)))
  for (int64_t pix = 0; pix < pixels; ++pix) {
    const int64_t nl = pix / g.HW;  // image within the chunk
    const int hw = static_cast<int>(pix % g.HW);
    const int h = hw / s.W, w = hw % s.W;
    float* out = dx + ((n0 + nl) * g.HW + hw) * s.C;
    if (!accumulate) std::fill(out, out + s.C, 0.0f);
    const int hp = h + s.pad_h, wp = w + s.pad_w;
    // The taps that read (h, w): r = hp - p * stride_h for output rows 0 <= p < P, 0 <= r < R, in
    // increasing r (stepping by the stride, not testing every r: conv1's 11 x 11 taps at stride 4
    // have ~9 of 121 valid).
    const int r_lo = std::max(0, hp - s.stride_h * (s.P - 1)), t_lo = std::max(0, wp - s.stride_w * (s.Q - 1));
    const int r_first = r_lo + (hp - r_lo) % s.stride_h, t_first = t_lo + (wp - t_lo) % s.stride_w;
    const int r_end = std::min(s.R - 1, hp), t_end = std::min(s.S - 1, wp);
    for (int r = r_first; r <= r_end; r += s.stride_h) {
      const int p = (hp - r) / s.stride_h;
      for (int t = t_first; t <= t_end; t += s.stride_w) {
        const int q = (wp - t) / s.stride_w;
        const float* src = dpatches + (nl * g.PQ + static_cast<int64_t>(p) * s.Q + q) * g.ldp +
                           static_cast<int64_t>(r * s.S + t) * g.Cg;
        for (int grp = 0; grp < s.groups; ++grp) {
          const float* sg = src + static_cast<int64_t>(grp) * g.RSC;
          float* og = out + static_cast<int64_t>(grp) * g.Cg;
          for (int c = 0; c < g.Cg; ++c) og[c] += sg[c];
        }
      }
    }
  }
}

// The patch matrix without storing it: packs GEMM B panels (kc patch rows x nr columns) of group
// grp's patches_g straight from x, for backward-filter's dW_g = dY_g^T patches_g. Valid when Cg is a
// multiple of nr, so a panel's nr columns are nr consecutive channels of one tap (r, s): one copy
// (or zero fill, in the padding) of nr floats per patch row. Replaces im2col (write the patch matrix)
// + the GEMM's pack_b (read it back, write the panels): one pass over the patch data instead of two,
// and no patch buffer (conv3 at batch 8: 1352 x 2304 floats = 12.5 MB written and read back).
struct PatchPanels {
  const ConvShape* s;
  const Geo* g;
  const float* x;
  int64_t row0;  // first patch-matrix row of the GEMM (its k = 0)
  int grp, nr;
};

void pack_patch_panel(const void* vctx, int k0, int kc, int j, float* dst) {
  const PatchPanels& c = *static_cast<const PatchPanels*>(vctx);
  const ConvShape& s = *c.s;
  const Geo& g = *c.g;
  const int tap = j / g.Cg, ch = j % g.Cg;
  const int r = tap / s.S, t = tap % s.S;
  const int64_t row = c.row0 + k0;
  int64_t n = row / g.PQ;
  const int pq = static_cast<int>(row % g.PQ);
  int p = pq / s.Q, q = pq % s.Q;
  const float* xc = c.x + static_cast<int64_t>(c.grp) * g.Cg + ch;
  for (int k = 0; k < kc; ++k, dst += c.nr) {
    const int h = p * s.stride_h - s.pad_h + r, w = q * s.stride_w - s.pad_w + t;
    if (h >= 0 && h < s.H && w >= 0 && w < s.W)
      copy_floats(dst, xc + ((n * s.H + h) * s.W + w) * s.C, c.nr);
    else
      zero_floats(dst, c.nr);
    if (++q == s.Q) {
      q = 0;
      if (++p == s.P) {
        p = 0;
        ++n;
      }
    }
  }
}

// The forward's patch matrix without storing it: row pointers into x for the GEMM's A packing
// (RowSource, run = Cg: the Cg columns of one tap (r, s) are Cg consecutive channels of one input
// pixel, or all padding). Valid when Cg is a multiple of 16 (the packing's 16-column steps). Saves
// im2col's write + read-back of the patch matrix (conv3, a 168-row chunk: 1.5 MB per chunk).
void patch_rows(const void* vctx, int i0, int mr, int j, const float** ptrs) {
  const PatchPanels& c = *static_cast<const PatchPanels*>(vctx);
  const ConvShape& s = *c.s;
  const Geo& g = *c.g;
  const int tap = j / g.Cg;
  const int r = tap / s.S, t = tap % s.S;
  const float* xg = c.x + static_cast<int64_t>(c.grp) * g.Cg;
  for (int i = 0; i < mr; ++i) {
    const int64_t row = c.row0 + i0 + i;
    const int64_t n = row / g.PQ;
    const int pq = static_cast<int>(row % g.PQ);
    const int h = (pq / s.Q) * s.stride_h - s.pad_h + r, w = (pq % s.Q) * s.stride_w - s.pad_w + t;
    ptrs[i] = (h >= 0 && h < s.H && w >= 0 && w < s.W) ? xg + ((n * s.H + h) * s.W + w) * s.C : nullptr;
  }
}

// ---------------------------------------------------------------------------------------------
// image-parallel driver
//
// With enough images (N >= 2 x threads) each pass runs as ONE parallel region over chunks of
// images: a thread builds its chunk's patch matrix in its own buffer, runs a serial GEMM on it (the
// GEMM sees it is inside a parallel region) and finishes the chunk (bias/ReLU epilogue, col2im)
// while the data is in its L2. The alternative -- a serial loop over chunks with an im2col region,
// a parallel GEMM and an epilogue region per chunk -- has three fork/join barriers per chunk
// (per image for conv1/conv2), and on a machine whose cores are shared with other jobs each barrier
// waits for the slowest thread's next time slice: measured 5-10x slower than the cores' rate under
// load. Forward and backward-data chunks write disjoint outputs, so they are scheduled dynamically
// (a descheduled thread just takes fewer chunks); backward-filter sums, so it partitions the
// images statically into per-thread partial dW (deterministic for a given thread count).

// Per-thread budget for a chunk's patch matrix: within a 2 MB L2 (with the GEMM's
// packed panels beside it; 1.5 MB measured best for the 13x13 layers, 1 MB and 2 MB slower), so the GEMM's
// packing reads back what im2col just wrote from L2 (conv1's whole-image patch matrix, 4.4 MB, went
// through L3: a quarter of conv1's time). Backward-data chunks are whole images (col2im gathers
// every tap of an input pixel, so an image must not be split); forward and backward-filter chunks
// are row ranges of the patch matrix, at least kMinChunkRows so the GEMM keeps its efficiency.
constexpr int64_t kThreadChunkBytes = int64_t(1536) << 10;
constexpr int64_t kMinChunkRows = 64;

int threads_here() {
#ifdef CONVNET_WITH_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

// The conv's driver selector (the two drivers of the header). Auto: image-parallel when there are
// several threads and at least two images per thread (backward-filter's 2T slots then hold an image's
// rows each); forced_path() overrides it for tests, and both drivers are correct for any N and T.
enum class ConvDriver { ChunkedSerial, ImageParallel };
ConvDriver select_conv_driver(const ConvShape& s) {
  switch (forced_path()) {
    case ForcedPath::Serial: return ConvDriver::ChunkedSerial;
    case ForcedPath::Parallel: return ConvDriver::ImageParallel;
    default: break;
  }
  const int t = threads_here();
  return t > 1 && s.N >= 2 * t ? ConvDriver::ImageParallel : ConvDriver::ChunkedSerial;
}
bool image_parallel(const ConvShape& s) { return select_conv_driver(s) == ConvDriver::ImageParallel; }

// Images per chunk in the image-parallel mode: the byte budget, but small enough that every thread
// gets at least two chunks (load balance).
int thread_chunk_images(const ConvShape& s, const Geo& g) {
  const int64_t per_image = std::max<int64_t>(1, g.PQ * g.ldp * static_cast<int64_t>(sizeof(float)));
  const int64_t by_bytes = std::max<int64_t>(1, kThreadChunkBytes / per_image);
  const int64_t balance = std::max<int64_t>(1, s.N / (2 * threads_here()));
  return static_cast<int>(std::min<int64_t>(by_bytes, balance));
}

// Patch-matrix rows per chunk in the image-parallel mode (forward, backward-filter).
int64_t thread_chunk_rows(const ConvShape& s, const Geo& g) {
  const int64_t total = static_cast<int64_t>(s.N) * g.PQ;
  const int64_t by_bytes = kThreadChunkBytes / std::max<int64_t>(1, g.ldp * static_cast<int64_t>(sizeof(float)));
  const int64_t balance = std::max<int64_t>(1, total / (2 * threads_here()));
  const int64_t rows = std::min(std::max(by_bytes, kMinChunkRows), balance);
  return rows >= 24 ? rows / 12 * 12 : std::max<int64_t>(1, rows);  // whole 12-row micro-tiles
}

// A per-thread scratch buffer, kept for the thread's life (OpenMP reuses its pool threads).
float* thread_scratch(size_t n, int slot = 0) {
  thread_local std::vector<float> buf[2];
  if (buf[slot].size() < n) resize_workspace(buf[slot], n, "conv");
  return buf[slot].data();
}

// Share of a GEMM's micro-tiles that is useful work, for the AVX-512 12 x 32 tile (the AVX2 6 x 16
// and portable 4 x 16 tiles divide it, so the comparison below holds for them roughly too).
double tile_efficiency(int64_t M, int64_t N) {
  const int64_t Mp = (M + 11) / 12 * 12, Np = (N + 31) / 32 * 32;
  return static_cast<double>(M * N) / static_cast<double>(Mp * Np);
}

// In one parallel region: pre(i) for i in [0, pre_n) (static schedule, must not throw; then a
// barrier), then body(n0, n_img) for every chunk of `chunk` of N items (images or patch rows),
// dynamic schedule; the first exception is rethrown after the region (none may escape an OpenMP
// region). `pre` packs the weights that every chunk's GEMM then shares.
template <class Pre, class Body>
void for_each_chunk(int64_t pre_n, Pre pre, int64_t N, int64_t chunk, Body body) {
  const int64_t chunks = (N + chunk - 1) / chunk;
  std::exception_ptr error;
CONVNET_OMP(parallel)
  {
CONVNET_OMP(for schedule(static))
    for (int64_t i = 0; i < pre_n; ++i) pre(i);
CONVNET_OMP(for schedule(dynamic, 1))
    for (int64_t c = 0; c < chunks; ++c) {
      try {
        const int64_t n0 = c * chunk;
        body(n0, std::min(chunk, N - n0));
      } catch (...) {
CONVNET_OMP(critical(convnet_conv_error))
        if (!error) error = std::current_exception();
      }
    }
  }
  if (error) std::rethrow_exception(error);
}

// The weights of every group, packed once per call into the GEMM's B-panel layout
// (gemm_internal.h), in a 64-byte aligned buffer of the calling thread kept between calls.
// Why: each chunk's GEMM used to pack all of W itself (conv3: 2304 x 384 = 3.5 MB, read from L3
// with 16 x 16 transposes), and every packed weight then fed only 2 x rows = ~340 FLOPs (a 168-row
// chunk); at batch 8 conv3's 1352 rows made 9 packings of W per pass, 2 x 8 M floats moved for
// 2.7 GFLOP. Packed once, the threads' GEMMs read W's panels straight from L2/L3.
// Under BF16 the packed weights are also rounded to BF16 once per call (bf16: every chunk's GEMM used
// to round all of W again, as many conversions as packings).
struct PackedWeights {
  float* data = nullptr;
  int64_t per_group = 0;  // floats per group's packed (K, N) operand
  int blocks = 0;         // K blocks per group (the packing's unit of work)
  int K = 0, N = 0;
  uint32_t* bf16 = nullptr;  // under BF16: the rounded copy (gemm_internal.h), else null
  int64_t per_group16 = 0;   // words per group of it
  const float* group(int grp) const { return data + grp * per_group; }
  const uint32_t* group16(int grp) const { return bf16 ? bf16 + grp * per_group16 : nullptr; }
  // After K block blk of group grp is packed in FP32: its BF16 copy (no-op unless BF16).
  void finish_block(int grp, int blk) const {
    if (bf16) convert_packed_b_block(group(grp), K, N, blk, bf16 + grp * per_group16);
  }
};

float* packed_weight_buffer(int64_t n, int slot) {
  thread_local AlignedWorkspace buf[2];
  return buf[slot].reserve(n, "conv");
}

// op(B_g) (K, N) per group g: forward B = W_g^T (K = RSC, N = Kg, W_g stored (Kg, RSC): trans_b);
// backward-data B = W_g (K = Kg, N = RSC, stored (Kg, RSC)). Only allocates; pack_weights fills.
PackedWeights plan_packed_weights(const ConvShape& s, int K, int N) {
  PackedWeights pw;
  pw.per_group = packed_b_floats(K, N);
  pw.blocks = packed_b_blocks(K);
  pw.K = K;
  pw.N = N;
  pw.data = packed_weight_buffer(pw.per_group * s.groups, 0);
  if (gemm_precision() == Precision::BF16) {
    pw.per_group16 = (packed_b_bf16_words(K, N) + 15) / 16 * 16;  // 64-byte aligned groups
    pw.bf16 = reinterpret_cast<uint32_t*>(packed_weight_buffer(pw.per_group16 * s.groups, 1));
  }
  return pw;
}

// y (rows, K) = max(0, y + b) / y + b, serial (called on one thread's chunk).
void bias_relu_rows(float* y, const float* b, int64_t rows, int K, bool relu) {
  if (!b && !relu) return;
  for (int64_t r = 0; r < rows; ++r) {
    float* row = y + r * K;
    if (b && relu) {
CONVNET_OMP(simd)
      for (int k = 0; k < K; ++k) row[k] = std::max(row[k] + b[k], 0.0f);
    } else if (b) {
CONVNET_OMP(simd)
      for (int k = 0; k < K; ++k) row[k] += b[k];
    } else {
CONVNET_OMP(simd)
      for (int k = 0; k < K; ++k) row[k] = std::max(row[k], 0.0f);
    }
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// forward

void conv_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                  bool accumulate, bool relu) {
  const Geo g = geo_of(s);
  const int64_t total_rows = static_cast<int64_t>(s.N) * g.PQ;
  if (total_rows == 0) return;
  if (winograd_chosen(s, ConvPass::Forward)) return winograd_forward(s, x, w, b, y, accumulate, relu);
  const float beta = accumulate ? 1.0f : 0.0f;
  // Y_g = patches_g W_g^T: W_g (Kg, RSC) is GEMM operand B stored transposed, which the GEMM packs
  // with 16 x 16 in-register transposes (no transposed copy of W per call).
  auto w_g = [&](int grp) { return w + static_cast<int64_t>(grp) * g.Kg * g.RSC; };
  // Bias and ReLU on a block of rows just written by the GEMM, while it is still in cache.
  auto epilogue = [&](float* yc, int64_t rows) {
    if (relu) add_bias_relu(yc, b, rows, s.K);
    else if (b) add_bias(yc, b, rows, s.K);
  };
  if (is_pointwise(s)) {
    // x (N*H*W, C) is the patch matrix; group g reads its channel block in place.
    for (int grp = 0; grp < s.groups; ++grp)
      gemm(false, true, static_cast<int>(total_rows), g.Kg, g.RSC, 1.0f, x + static_cast<int64_t>(grp) * g.Cg, s.C,
           w_g(grp), g.RSC, beta, y + static_cast<int64_t>(grp) * g.Kg, s.K);
    epilogue(y, total_rows);
    return;
  }
  if (image_parallel(s)) {
    const PackedWeights pw = plan_packed_weights(s, g.RSC, g.Kg);
    const bool implicit = g.Cg % 16 == 0;  // A's rows straight from x (patch_rows)
    auto pack = [&](int64_t i) {
      const int grp = static_cast<int>(i / pw.blocks), blk = static_cast<int>(i % pw.blocks);
      pack_b_block(true, w_g(grp), g.RSC, g.RSC, g.Kg, blk, pw.data + grp * pw.per_group);
      pw.finish_block(grp, blk);
    };
    for_each_chunk(int64_t(s.groups) * pw.blocks, pack, total_rows, thread_chunk_rows(s, g),
                   [&](int64_t row0, int64_t nrows) {
      const int rows = static_cast<int>(nrows);
      float* yc = y + row0 * s.K;
      if (implicit) {
        for (int grp = 0; grp < s.groups; ++grp) {
          const PatchPanels src{&s, &g, x, row0, grp, 0};
          gemm_rows_packed_b(rows, g.Kg, g.RSC, 1.0f, RowSource{patch_rows, &src, g.Cg}, pw.group(grp), beta,
                             yc + static_cast<int64_t>(grp) * g.Kg, s.K, pw.group16(grp));
        }
        bias_relu_rows(yc, b, rows, s.K, relu);
        return;
      }
      float* patches = thread_scratch(static_cast<size_t>(rows) * g.ldp);
      im2col_rows(s, g, x, row0, rows, patches);
      for (int grp = 0; grp < s.groups; ++grp)
        gemm_packed_b(false, rows, g.Kg, g.RSC, 1.0f, patches + static_cast<int64_t>(grp) * g.RSC, g.ldp,
                      pw.group(grp), beta, yc + static_cast<int64_t>(grp) * g.Kg, s.K, pw.group16(grp));
      bias_relu_rows(yc, b, rows, s.K, relu);
    });
    return;
  }
  const int chunk = chunk_images(s, g);
  std::vector<float> patches;
  resize_workspace(patches, static_cast<size_t>(chunk * g.PQ * g.ldp), "conv");
  for (int n0 = 0; n0 < s.N; n0 += chunk) {
    const int n_img = std::min(chunk, s.N - n0);
    const int rows = static_cast<int>(n_img * g.PQ);
    im2col(s, g, x, n0, n_img, patches.data());
    float* yc = y + n0 * g.PQ * s.K;
    for (int grp = 0; grp < s.groups; ++grp)
      gemm(false, true, rows, g.Kg, g.RSC, 1.0f, patches.data() + static_cast<int64_t>(grp) * g.RSC, g.ldp,
           w_g(grp), g.RSC, beta, yc + static_cast<int64_t>(grp) * g.Kg, s.K);
    epilogue(yc, rows);
  }
}

// ---------------------------------------------------------------------------------------------
// backward to data

void conv_backward_data(const ConvShape& s, const float* dy, const float* w, float* dx, bool accumulate) {
  const Geo g = geo_of(s);
  if (s.N == 0) return;
  if (winograd_chosen(s, ConvPass::BackwardData)) return winograd_backward_data(s, dy, w, dx, accumulate);
  if (is_pointwise(s)) {
    // dx_g (N*H*W, Cg) (=|+=) dy_g (N*H*W, Kg) x W_g (Kg, Cg), written in place.
    const int rows = static_cast<int>(static_cast<int64_t>(s.N) * g.HW);
    for (int grp = 0; grp < s.groups; ++grp)
      gemm(false, false, rows, g.Cg, g.Kg, 1.0f, dy + static_cast<int64_t>(grp) * g.Kg, s.K,
           w + static_cast<int64_t>(grp) * g.Kg * g.RSC, g.RSC, accumulate ? 1.0f : 0.0f,
           dx + static_cast<int64_t>(grp) * g.Cg, s.C);
    return;
  }
  // Only where Cg fills whole NR-wide micro-tiles and is wide: each packed dy element then feeds
  // 2 x Cg FLOPs (vs 2 x RSC in the col2im path). conv2 (Cg = 48: a quarter of a 12 x 32 tiling
  // wasted) measured 1.35x slower this way, OWT conv2 (Cg = 64) 4 % slower; the 3x3 layers (Cg =
  // 192 to 384) 5-12 % faster. Chosen from the shape alone (not image_parallel, which depends on the
  // thread count): this path sums dx in another order than col2im, and dx must not depend on
  // OMP_NUM_THREADS (tests/test_conv.py).
  // Under BF16 it is taken for every stride-1 shape whose rows it can hand out (Kg % 16 == 0): with
  // AMX the col2im path's GEMM (K = Kg only) is bound by storing its dpatches (a whole image of
  // 2012.conv2 is 7 MB, past L2), the AMX tile stores 70 % of its time; 2012.conv2 (Cg = 48) and
  // owt.conv2 (Cg = 64) ran at 0.9-1.0x FP32 that way.
  const bool turned_bf16 = gemm_precision() == Precision::BF16;
  if (s.stride_h == 1 && s.stride_w == 1 && s.pad_h < s.R && s.pad_w < s.S &&
      g.Kg % 16 == 0 && (turned_bf16 || (g.Cg % gemm_nr() == 0 && g.Cg >= 128))) {
    // Stride 1: dx is the forward convolution of dy, padded by R-1-pad_h / S-1-pad_w, with the
    // filters turned 180 degrees and K <-> C swapped:
    //   dx[n, h, w, g*Cg + c] = sum over (r', s', k) of dy[n, h + r' - (R-1-ph), w + s' - (S-1-pw), g*Kg + k]
    //                                                  * W[g*Kg + k, R-1-r', S-1-s', c]
    // so it runs as the forward does: rows of dx straight from dy (patch_rows, no im2col), the
    // turned filters packed once into B panels, the GEMM writing (or adding to) dx directly. No
    // patch-gradient matrix and no col2im gather: conv3 at batch 8 wrote and re-read 1352 x 2304
    // floats (12.5 MB) of dpatches and gathered 9 taps per input pixel.
    const ConvShape t = turned_forward_shape(s);
    const Geo tg = geo_of(t);  // tg.Cg = Kg, tg.Kg = Cg, tg.RSC = R * S * Kg
    const int KCb = gemm_kc(), nr = gemm_nr();
    const int64_t Np = (g.Cg + nr - 1) / nr * nr;
    const PackedWeights pw = plan_packed_weights(s, tg.RSC, g.Cg);
    // B_g (R*S*Kg, Cg): row (r', s', k) is filter row k's tap (R-1-r', S-1-s'): Cg contiguous floats.
    auto pack = [&](int64_t i) {
      const int grp = static_cast<int>(i / pw.blocks), blk = static_cast<int>(i % pw.blocks);
      const int pc = blk * KCb, kc = std::min(KCb, tg.RSC - pc);
      float* block = pw.data + grp * pw.per_group + static_cast<int64_t>(pc) * Np;
      for (int jp = 0; jp < g.Cg; jp += nr) {
        const int nj = std::min(nr, g.Cg - jp);
        float* dst = block + static_cast<int64_t>(jp) * kc;
        for (int k = 0; k < kc; ++k, dst += nr) {
          const int row = pc + k, tap = row / g.Kg, kk = row % g.Kg;
          const int r = s.R - 1 - tap / s.S, c = s.S - 1 - tap % s.S;
          copy_floats(dst, w + ((static_cast<int64_t>(grp) * g.Kg + kk) * s.R * s.S + r * s.S + c) * g.Cg + jp, nj);
          zero_floats(dst + nj, nr - nj);
        }
      }
      pw.finish_block(grp, blk);
    };
    const float beta = accumulate ? 1.0f : 0.0f;
    for_each_chunk(int64_t(s.groups) * pw.blocks, pack, static_cast<int64_t>(s.N) * g.HW, thread_chunk_rows(t, tg),
                   [&](int64_t row0, int64_t nrows) {
      for (int grp = 0; grp < s.groups; ++grp) {
        const PatchPanels src{&t, &tg, dy, row0, grp, 0};
        gemm_rows_packed_b(static_cast<int>(nrows), g.Cg, tg.RSC, 1.0f, RowSource{patch_rows, &src, g.Kg},
                           pw.group(grp), beta, dx + row0 * s.C + static_cast<int64_t>(grp) * g.Cg, s.C,
                           pw.group16(grp));
      }
    });
    return;
  }
  if (image_parallel(s)) {
    const int chunk = thread_chunk_images(s, g);
    const PackedWeights pw = plan_packed_weights(s, g.Kg, g.RSC);
    auto pack = [&](int64_t i) {
      const int grp = static_cast<int>(i / pw.blocks), blk = static_cast<int>(i % pw.blocks);
      pack_b_block(false, w + static_cast<int64_t>(grp) * g.Kg * g.RSC, g.RSC, g.Kg, g.RSC, blk,
                   pw.data + grp * pw.per_group);
      pw.finish_block(grp, blk);
    };
    for_each_chunk(int64_t(s.groups) * pw.blocks, pack, s.N, chunk, [&](int64_t n0_, int64_t n_img_) {
      const int n0 = static_cast<int>(n0_), n_img = static_cast<int>(n_img_);
      const int rows = static_cast<int>(n_img * g.PQ);
      float* dpatches = thread_scratch(static_cast<size_t>(rows) * g.ldp);
      const float* dyc = dy + n0 * g.PQ * s.K;
      for (int grp = 0; grp < s.groups; ++grp)
        gemm_packed_b(false, rows, g.RSC, g.Kg, 1.0f, dyc + static_cast<int64_t>(grp) * g.Kg, s.K, pw.group(grp),
                      0.0f, dpatches + static_cast<int64_t>(grp) * g.RSC, g.ldp, pw.group16(grp));
      col2im(s, g, dpatches, n0, n_img, dx, accumulate);
    });
    return;
  }
  const int chunk = chunk_images(s, g);
  std::vector<float> dpatches;
  resize_workspace(dpatches, static_cast<size_t>(chunk * g.PQ * g.ldp), "conv_backward_data");
  for (int n0 = 0; n0 < s.N; n0 += chunk) {
    const int n_img = std::min(chunk, s.N - n0);
    const int rows = static_cast<int>(n_img * g.PQ);
    const float* dyc = dy + n0 * g.PQ * s.K;
    if (rows > 0) {
      for (int grp = 0; grp < s.groups; ++grp)
        gemm(false, false, rows, g.RSC, g.Kg, 1.0f, dyc + static_cast<int64_t>(grp) * g.Kg, s.K,
             w + static_cast<int64_t>(grp) * g.Kg * g.RSC, g.RSC, 0.0f,
             dpatches.data() + static_cast<int64_t>(grp) * g.RSC, g.ldp);
    }
    col2im(s, g, dpatches.data(), n0, n_img, dx, accumulate);
  }
}

// ---------------------------------------------------------------------------------------------
// backward to filters and bias

void conv_backward_filter(const ConvShape& s, const float* dy, const float* x, float* dw, float* db,
                          bool accumulate) {
  const Geo g = geo_of(s);
  const int64_t total_rows = static_cast<int64_t>(s.N) * g.PQ;
  const int64_t dw_size = static_cast<int64_t>(s.K) * g.RSC;
  if (db) bias_grad(dy, total_rows, s.K, db, accumulate);
  if (total_rows == 0) {
    if (!accumulate) fill(dw, dw_size, 0.0f);
    return;
  }
  if (winograd_chosen(s, ConvPass::BackwardFilter)) return winograd_backward_filter(s, dy, x, dw, accumulate);
  if (is_pointwise(s)) {
    // dW_g (Kg, Cg) (=|+=) dy_g^T (Kg, N*H*W) x x_g (N*H*W, Cg): one GEMM per group.
    for (int grp = 0; grp < s.groups; ++grp)
      gemm(true, false, g.Kg, g.RSC, static_cast<int>(total_rows), 1.0f, dy + static_cast<int64_t>(grp) * g.Kg, s.K,
           x + static_cast<int64_t>(grp) * g.Cg, s.C, accumulate ? 1.0f : 0.0f,
           dw + static_cast<int64_t>(grp) * g.Kg * g.RSC, g.RSC);
    return;
  }
  {
    // The patch rows are cut into S fixed slots [NPQ u / S, NPQ (u+1) / S); threads take slots
    // dynamically (a thread that loses its core to another job just takes fewer), each slot sums
    // into its own dW (slot 0 straight into dw), then dw += partial_1 + ... + partial_{S-1} in slot
    // order. The slots, not the threads, fix the summation order, and S and the chunks inside a
    // slot come from the shape alone (never from the thread count), so the result is the same for
    // any OMP_NUM_THREADS and any scheduling. One driver for every N (a single image's rows are
    // cut into slots too), so the choice of driver cannot depend on the thread count either.
    // Up to kFilterSlots slots, each holding at least two chunks' rows: every slot costs a partial
    // dW (conv3: 3.5 MB) to write and add, which at small batches costs more than the balance wins.
    // Chunks here are the GEMM's K: each chunk passes over the whole dW (C) once more, and so does
    // every K block of the GEMM (256 rows, 512 under BF16) inside it, so chunks are rounded up to
    // whole K blocks (under BF16: fewer, longer slots, e.g. 2 instead of 5 for owt.conv4 at batch 16).
    constexpr int64_t kFilterSlots = 8;  // balances up to 8 threads; more threads share the slots
    [[maybe_unused]] const int T = threads_here();  // used by CONVNET_OMP only
    const int64_t budget_rows = kThreadChunkBytes / std::max<int64_t>(1, g.ldp * static_cast<int64_t>(sizeof(float)));
    const int64_t kblock = gemm_k_block();
    const int64_t by_bytes = (std::max(budget_rows, kMinChunkRows) + kblock - 1) / kblock * kblock;
    const int S = static_cast<int>(std::clamp<int64_t>(total_rows / (2 * by_bytes), 1, kFilterSlots));
    // dW_g^T (RSC, Kg) = patches_g^T dY_g, with the GEMM's M = RSC, when that fills the micro-tiles
    // better: conv1 (Kg = 64, RSC = 363) wastes 16 % of a 12 x 32 tiling as (Kg, RSC) and 2 % as
    // (RSC, Kg). The transposed sum lives in a per-thread buffer, turned at the end.
    // Under BF16 the untransposed tiling with panels from x is taken wherever it applies: the AMX
    // kernel's 12-row tiles fit Kg = 128..384 well, and im2col plus the transposed copy cost more than
    // the tiling saves (owt.conv4: 0.8x FP32 transposed, 1.4-1.5x untransposed, load 6-8).
    const bool bf16_implicit = gemm_precision() == Precision::BF16 && g.Cg % gemm_nr() == 0;
    const bool transposed = !bf16_implicit && tile_efficiency(g.RSC, g.Kg) > tile_efficiency(g.Kg, g.RSC) + 0.02;
    // Patch panels packed straight from x (PatchPanels) when a panel never straddles two taps. Not
    // with the transposed tiling: conv5 (Kg = 128) untransposed with panels from x was 18 % faster at
    // batch 8 but 5-35 % slower at batches 16-128 than transposed with im2col.
    const bool implicit = !transposed && g.Cg % gemm_nr() == 0;
    // The partials live in a buffer of the calling thread, kept between calls (no allocation and
    // page faults per call) and never zeroed: each slot's first GEMM writes its partial with beta 0.
    thread_local std::vector<float> partial_buf;
    if (partial_buf.size() < static_cast<size_t>(S - 1) * dw_size)
      resize_workspace(partial_buf, static_cast<size_t>(S - 1) * dw_size, "conv_backward_filter");
    float* partial = partial_buf.data();
    std::exception_ptr error;
CONVNET_OMP(parallel num_threads(T))
    {
CONVNET_OMP(for schedule(dynamic, 1))
      for (int t = 0; t < S; ++t) {
        const int64_t i0 = total_rows * t / S, i1 = total_rows * (t + 1) / S;  // patch-matrix rows
        float* mine = t == 0 ? dw : partial + static_cast<int64_t>(t - 1) * dw_size;
        if (i0 == i1) {  // fewer rows than slots (a forced driver at a tiny batch): an empty sum
          if (!(t == 0 && accumulate)) std::fill(mine, mine + dw_size, 0.0f);
          continue;
        }
        // the slot's rows in equal chunks of by_bytes to 2 by_bytes rows (no short tail chunk; with
        // the panels packed from x one GEMM per slot measured 5 % slower at batch 128)
        const int64_t nchunks = std::max<int64_t>(1, (i1 - i0) / by_bytes);
        const int64_t chunk = (i1 - i0 + nchunks - 1) / nchunks;
        try {
          const bool keep = t == 0 && accumulate;  // slot 0 adds to the caller's dw
          float* acc = transposed ? thread_scratch(static_cast<size_t>(dw_size), 1) : mine;
          bool first = transposed || !keep;
          for (int64_t r0 = i0; r0 < i1; r0 += chunk) {
            const int rows = static_cast<int>(std::min(chunk, i1 - r0));
            if (implicit) {
              for (int grp = 0; grp < s.groups; ++grp) {
                const PatchPanels src{&s, &g, x, r0, grp, gemm_nr()};
                gemm_panel_b(true, g.Kg, g.RSC, rows, 1.0f, dy + r0 * s.K + static_cast<int64_t>(grp) * g.Kg, s.K,
                             PanelSource{pack_patch_panel, &src}, first ? 0.0f : 1.0f,
                             mine + static_cast<int64_t>(grp) * g.Kg * g.RSC, g.RSC);
              }
              first = false;
              continue;
            }
            float* patches = thread_scratch(static_cast<size_t>(rows) * g.ldp);
            im2col_rows(s, g, x, r0, rows, patches);
            const float* dyc = dy + r0 * s.K;
            for (int grp = 0; grp < s.groups; ++grp) {
              const float* dyg = dyc + static_cast<int64_t>(grp) * g.Kg;
              const float* pg = patches + static_cast<int64_t>(grp) * g.RSC;
              float* out = acc + static_cast<int64_t>(grp) * g.Kg * g.RSC;
              if (transposed)
                gemm(true, false, g.RSC, g.Kg, rows, 1.0f, pg, g.ldp, dyg, s.K, first ? 0.0f : 1.0f, out, g.Kg);
              else
                gemm(true, false, g.Kg, g.RSC, rows, 1.0f, dyg, s.K, pg, g.ldp, first ? 0.0f : 1.0f, out, g.RSC);
            }
            first = false;
          }
          if (transposed) {
            for (int grp = 0; grp < s.groups; ++grp) {
              const float* tg = acc + static_cast<int64_t>(grp) * g.Kg * g.RSC;  // (RSC, Kg)
              float* dg = mine + static_cast<int64_t>(grp) * g.Kg * g.RSC;      // (Kg, RSC)
              // in 16 x 16 blocks: a column walk of the whole (RSC, Kg) sum missed the cache on every
              // element (21 % of a bf16 owt.conv4 backward-filter)
              for (int k0 = 0; k0 < g.Kg; k0 += 16)
                for (int j0 = 0; j0 < g.RSC; j0 += 16)
                  for (int k = k0; k < std::min(g.Kg, k0 + 16); ++k)
                    for (int j = j0; j < std::min(g.RSC, j0 + 16); ++j) {
                      const float v = tg[static_cast<int64_t>(j) * g.Kg + k];
                      float& d = dg[static_cast<int64_t>(k) * g.RSC + j];
                      d = keep ? d + v : v;
                    }
            }
          }
        } catch (...) {
CONVNET_OMP(critical(convnet_conv_error))
          if (!error) error = std::current_exception();
        }
      }  // slots (the omp for ends with a barrier)
CONVNET_OMP(for schedule(static))
      for (int64_t i = 0; i < dw_size; ++i) {
        float v = dw[i];
        for (int u = 1; u < S; ++u) v += partial[static_cast<int64_t>(u - 1) * dw_size + i];
        dw[i] = v;
      }
    }
    if (error) std::rethrow_exception(error);
  }
}

}  // namespace cpu
}  // namespace convnet
