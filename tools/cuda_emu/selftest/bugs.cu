// cuda_emu self-test: small kernels with one known bug each (and two correct ones), so that
// tools/cuda_emu/selftest/run.sh can check the emulator catches every bug class it claims to.
// usage: bugs CASE   (prints a result line; the checks and crashes are the emulator's)
#include <cuda_pipeline_primitives.h>
#include <cuda_runtime.h>

#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

__global__ void oob_global(float* x, int n) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) x[i] = 1.0f;  // BUG: <= writes x[n]
}

__global__ void oob_shared(float* out) {
  __shared__ float s[32];
  s[threadIdx.x] = 1.0f;  // BUG: 64 threads, 32 slots
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

__global__ void missing_barrier(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = threadIdx.x;
  // BUG: no __syncthreads(): the neighbour may not have written yet
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

__global__ void early_return(float* out) {
  __shared__ float s[64];
  if (threadIdx.x >= 48) return;  // BUG: the barrier below is not reached by every thread
  s[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = s[63 - threadIdx.x];
}

__global__ void divergent_barrier(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();  // BUG: two different barriers
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 0.0f;
}

__global__ void partial_mask(float* out) {
  float v = threadIdx.x;
  v += __shfl_down_sync(0x0000ffffu, v, 1);  // BUG: the mask leaves out lanes 16..31
  out[threadIdx.x] = v;
}

__global__ void shuffle_deadlock(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x < 16) v += __shfl_down_sync(0xffffffffu, v, 1);  // BUG: half the warp is elsewhere
  __syncthreads();
  out[threadIdx.x] = v;
}

__global__ void uninit_shared(float* out) {
  __shared__ float s[64];
  if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;  // BUG: s[32..63] never written
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

__global__ void misaligned_vector(const float* x, float* out) {
  const float4 v = *reinterpret_cast<const float4*>(x + 1);  // BUG: 4-byte aligned, not 16
  out[threadIdx.x] = v.x;
}

__global__ void cp_async_no_wait(const float* x, float* out) {
  __shared__ __align__(16) float s[64];
  __pipeline_memcpy_async(&s[threadIdx.x], &x[threadIdx.x], 4);
  __pipeline_commit();
  // BUG: no __pipeline_wait_prior(0) before the barrier: the copy may not have landed
  __syncthreads();
  out[threadIdx.x] = s[(threadIdx.x + 1) % 64];
}

__global__ void good_cp_async(const float* x, float* out) {  // two batches, wait for the older, then all
  __shared__ __align__(16) float s[2][64];
  __pipeline_memcpy_async(&s[0][threadIdx.x], &x[threadIdx.x], 4);
  __pipeline_commit();
  __pipeline_memcpy_async(&s[1][threadIdx.x], &x[threadIdx.x], 4, threadIdx.x % 2 ? 4 : 0);  // odd: zeros
  __pipeline_commit();
  __pipeline_wait_prior(1);
  __syncthreads();
  float v = s[0][(threadIdx.x + 1) % 64];
  __pipeline_wait_prior(0);
  __syncthreads();
  out[threadIdx.x] = v + s[1][(threadIdx.x + 1) % 64];
}

__global__ void good_reduce(const float* x, int n, float* out) {
  __shared__ float partial[8];
  float v = 0.0f;
  for (int i = threadIdx.x; i < n; i += blockDim.x) v += x[i];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  if (threadIdx.x < 32) {
    v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : 0.0f;
    for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (threadIdx.x == 0) *out = v;
  }
}

template <int BLOCK>
__global__ void good_transpose(const float* in, float* out, int n) {
  __shared__ float tile[BLOCK][BLOCK + 1];
  const int x = blockIdx.x * BLOCK + threadIdx.x, y = blockIdx.y * BLOCK + threadIdx.y;
  if (x < n && y < n) tile[threadIdx.y][threadIdx.x] = in[y * n + x];
  __syncthreads();
  const int tx = blockIdx.y * BLOCK + threadIdx.x, ty = blockIdx.x * BLOCK + threadIdx.y;
  if (tx < n && ty < n) out[ty * n + tx] = tile[threadIdx.x][threadIdx.y];
}

static float* dev(size_t n) {
  void* p = nullptr;
  if (cudaMalloc(&p, n * sizeof(float)) != cudaSuccess) throw std::runtime_error("cudaMalloc");
  return static_cast<float*>(p);
}
static std::vector<float> host(const float* d, size_t n) {
  std::vector<float> h(n);
  cudaMemcpy(h.data(), d, n * sizeof(float), cudaMemcpyDeviceToHost);
  return h;
}

int main(int argc, char** argv) {
  const std::string c = argc > 1 ? argv[1] : "";
  float* out = dev(64);
  try {
    if (c == "oob_global") {
      float* x = dev(100);
      oob_global<<<4, 32>>>(x, 100);
    } else if (c == "oob_tensor") {
      // the caching allocator hands out a 512-byte block for a 3-float tensor (the runtime's wrapper)
      float* x = dev(128);
      ::emu::on_device_alloc(x, 3 * sizeof(float), 512);
      oob_global<<<1, 32>>>(x, 3);
    } else if (c == "use_after_free") {
      float* x = dev(128);
      ::emu::on_device_alloc(x, 64 * sizeof(float), 512);
      ::emu::on_device_free(x, 64 * sizeof(float), 512);  // back in the cache
      oob_global<<<1, 32>>>(x, 10);
    } else if (c == "oob_shared") {
      oob_shared<<<1, 64>>>(out);
    } else if (c == "missing_barrier") {
      missing_barrier<<<1, 64>>>(out);
      std::string nan_at;  // which threads read a slot before its owner wrote it
      const std::vector<float> h = host(out, 64);
      for (int i = 0; i < 64; ++i)
        if (h[i] != h[i]) nan_at += " " + std::to_string(i);
      std::printf("result NaN at%s\n", nan_at.c_str());
    } else if (c == "early_return") {
      early_return<<<1, 64>>>(out);
    } else if (c == "divergent_barrier") {
      divergent_barrier<<<1, 64>>>(out);
    } else if (c == "partial_mask") {
      partial_mask<<<1, 32>>>(out);
    } else if (c == "shuffle_deadlock") {
      shuffle_deadlock<<<1, 32>>>(out);
    } else if (c == "uninit_shared") {
      uninit_shared<<<1, 64>>>(out);
      int nans = 0;
      for (float v : host(out, 64)) nans += v != v;
      std::printf("result %d NaN\n", nans);
    } else if (c == "cp_async_no_wait" || c == "good_cp_async") {
      std::vector<float> h(64);
      for (int i = 0; i < 64; ++i) h[i] = static_cast<float>(i);
      float* x = dev(64);
      cudaMemcpy(x, h.data(), 64 * sizeof(float), cudaMemcpyHostToDevice);
      if (c == "good_cp_async") good_cp_async<<<1, 64>>>(x, out);
      else cp_async_no_wait<<<1, 64>>>(x, out);
      const std::vector<float> r = host(out, 64);
      int wrong = 0;
      for (int i = 0; i < 64; ++i) {
        const int j = (i + 1) % 64;
        wrong += r[i] != (c == "good_cp_async" ? h[j] + (j % 2 ? 0.0f : h[j]) : h[j]);
      }
      std::printf("result %d wrong\n", wrong);
    } else if (c == "misaligned_vector") {
      misaligned_vector<<<1, 32>>>(out, out);
    } else if (c == "host_pointer") {
      std::vector<float> h(64);
      good_reduce<<<1, 64>>>(h.data(), 64, out);
    } else if (c == "bad_block") {
      good_reduce<<<1, 2048>>>(out, 64, out);
      std::printf("result %s\n", cudaGetErrorName(cudaGetLastError()));
    } else if (c == "big_dynamic_smem") {
      good_reduce<<<1, 64, 64 * 1024>>>(out, 64, out);
      std::printf("result %s\n", cudaGetErrorName(cudaGetLastError()));
    } else if (c == "good") {
      const int n = 1000;
      std::vector<float> h(n);
      double want = 0;
      for (int i = 0; i < n; ++i) want += h[i] = static_cast<float>(i % 7);
      float* x = dev(n);
      cudaMemcpy(x, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
      good_reduce<<<1, 256>>>(x, n, out);
      const float got = host(out, 1)[0];
      const int m = 37;
      float *a = dev(m * m), *t = dev(m * m);
      std::vector<float> ha(m * m);
      for (int i = 0; i < m * m; ++i) ha[i] = static_cast<float>(i);
      cudaMemcpy(a, ha.data(), m * m * sizeof(float), cudaMemcpyHostToDevice);
      good_transpose<16><<<dim3(3, 3), dim3(16, 16)>>>(a, t, m);
      const std::vector<float> ht = host(t, m * m);
      int wrong = 0;
      for (int i = 0; i < m; ++i)
        for (int j = 0; j < m; ++j) wrong += ht[i * m + j] != ha[j * m + i];
      std::printf("result sum %s, transpose %s\n", got == want ? "ok" : "WRONG", wrong ? "WRONG" : "ok");
    } else {
      std::fprintf(stderr, "unknown case '%s'\n", c.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::printf("exception: %s\n", e.what());
    return 1;
  }
  std::printf("done\n");
  return 0;
}
