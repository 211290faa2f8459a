// qt_decode_attention: one decoding step of causal GQA attention, RoPE and the cache store included, with the
// position read from device memory when the kernels run, so that one captured CUDA graph serves every step.
//
// Three kernels, each launched with a shape that depends only on max_seq, never on the position:
//  1. rope_store: RoPE on this token's q and k (in place, as qt_rope computes it: same F32 angle, same expressions,
//     one rounding to F16), then k and v stored at row *pos of each sequence's cache.
//  2. partials: keys are cut into chunks of kChunk positions. The grid holds enough blocks per (sequence, kv head)
//     to fill the GPU at max_seq; block x takes chunks x, x + gridDim.x, ... up to the one holding *pos, and exits
//     at once when its first chunk starts after *pos. Per chunk and query head it writes (max score, sum of
//     exp(score - max), sum of exp(score - max) * v) in F32 to scratch. A block serves one kv head and up to 8 of
//     its query heads, which share every key and value row it loads; each row is read with 16-byte loads, lanes
//     of a warp splitting head_dim.
//  3. merge: per (sequence, query head), combines the partials of the chunks 0 .. *pos / kChunk (exactly those
//     that ran) and writes out in F16.
// Scores, softmax and sums are F32 (scale 1/sqrt(head_dim), full-precision expf); the probabilities stay F32 in the
// P V product (qt_attention's tensor-core path rounds them to 16 bits, so the two agree to fp16 rounding).
// *pos outside [0, max_seq): nothing is rotated or stored, and out is all NaN (the merge kernel's doing), so a bad
// position shows in the logits instead of corrupting a cache.
#include <algorithm>

#include "internal.h"

namespace qt {
namespace {

constexpr int kChunk = 128;       // keys per partial result: one chunk's scores fit in shared memory
constexpr int kWarps = 4;         // warps per partials block
constexpr int kMaxHeadsPerBlock = 8;
constexpr int kUnroll = 4;        // key rows each lane has in flight

__device__ __forceinline__ float nan_f32() { return __int_as_float(0x7fc00000); }

// Eight F16 values of one 16-byte load, as floats.
__device__ __forceinline__ void unpack8(const uint4& bits, float* f) {
    const __half2* h = reinterpret_cast<const __half2*>(&bits);
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const float2 p = __half22float2(h[i]);
        f[2 * i] = p.x;
        f[2 * i + 1] = p.y;
    }
}

__global__ void rope_store_kernel(__half* __restrict__ q, __half* __restrict__ k, const __half* __restrict__ v,
                                  __half* __restrict__ k_cache, __half* __restrict__ v_cache, int batch, int max_seq,
                                  int heads, int kv_heads, int head_dim, const int* __restrict__ pos_ptr,
                                  const float* __restrict__ inv_freq) {
    wait_for_prior_grid();
    allow_dependents();
    const int pos = *pos_ptr;
    if (pos < 0 || pos >= max_seq) return;
    const int half = head_dim / 2, quarter = head_dim / 4, all_heads = heads + kv_heads;
    const size_t kv_width = static_cast<size_t>(kv_heads) * head_dim;
    const size_t rotations = static_cast<size_t>(batch) * all_heads * quarter;  // two (j, j + half) pairs each
    const size_t copies = static_cast<size_t>(batch) * kv_width / 8;             // 16 bytes of v each
    const float position = static_cast<float>(pos);
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < rotations + copies;
         i += (size_t)gridDim.x * blockDim.x) {
        if (i < rotations) {
            const int j = 2 * static_cast<int>(i % quarter);
            const size_t head_row = i / quarter;
            const int b = static_cast<int>(head_row / all_heads), h = static_cast<int>(head_row % all_heads);
            const bool is_key = h >= heads;
            __half* p = is_key ? k + b * kv_width + static_cast<size_t>(h - heads) * head_dim
                               : q + (static_cast<size_t>(b) * heads + h) * head_dim;
            // qt_rope's rope_pairs_kernel, expression for expression, so both round to the same F16 values.
            float s0, c0, s1, c1;
            sincosf(position * inv_freq[j], &s0, &c0);
            sincosf(position * inv_freq[j + 1], &s1, &c1);
            const __half2 a = *reinterpret_cast<const __half2*>(p + j), bb = *reinterpret_cast<const __half2*>(p + j + half);
            const float a0 = __low2float(a), a1 = __high2float(a), b0 = __low2float(bb), b1 = __high2float(bb);
            const __half2 ra = __halves2half2(__float2half_rn(a0 * c0 - b0 * s0), __float2half_rn(a1 * c1 - b1 * s1));
            const __half2 rb = __halves2half2(__float2half_rn(b0 * c0 + a0 * s0), __float2half_rn(b1 * c1 + a1 * s1));
            *reinterpret_cast<__half2*>(p + j) = ra;
            *reinterpret_cast<__half2*>(p + j + half) = rb;
            if (is_key) {
                __half* row = k_cache + (static_cast<size_t>(b) * max_seq + pos) * kv_width +
                              static_cast<size_t>(h - heads) * head_dim;
                *reinterpret_cast<__half2*>(row + j) = ra;
                *reinterpret_cast<__half2*>(row + j + half) = rb;
            }
        } else {
            const size_t e = (i - rotations) * 8;  // element of v [batch, kv_width]
            const size_t b = e / kv_width, c = e % kv_width;
            *reinterpret_cast<uint4*>(v_cache + (b * max_seq + pos) * kv_width + c) =
                *reinterpret_cast<const uint4*>(v + e);
        }
    }
}

// Block (x, y, z): chunks x, x + gridDim.x, ...; y = kv head * head_blocks + head block; z = sequence.
// Lanes: `lanes` (a power of two >= head_dim / 8) per key row, each holding 8 dimensions; 32 / lanes rows per warp.
// Shared memory (floats): q [MAXG][head_dim], p [MAXG][kChunk], per-warp sums [kWarps][MAXG][head_dim], (m, l) [MAXG].
// (…, 4): up to 128 registers; without a minimum ptxas held MAXG 2 to 64 registers and spilled.
template <int MAXG>
__global__ void __launch_bounds__(32 * kWarps, 4)
decode_partials_kernel(const __half* __restrict__ q, const __half* __restrict__ k_cache,
                       const __half* __restrict__ v_cache, float* __restrict__ part_acc, float2* __restrict__ part_ml,
                       int max_seq, int heads, int kv_heads, int head_dim, int head_blocks, int heads_per_block,
                       int lanes, int chunks, const int* __restrict__ pos_ptr, float scale) {
    wait_for_prior_grid();
    allow_dependents();
    const int pos = *pos_ptr;
    if (pos < 0 || pos >= max_seq) return;
    const int last_chunk = pos / kChunk;
    if (static_cast<int>(blockIdx.x) > last_chunk) return;

    extern __shared__ float smem[];
    float* q_s = smem;
    float* p_s = q_s + MAXG * head_dim;
    float* sum_s = p_s + MAXG * kChunk;
    float2* ml_s = reinterpret_cast<float2*>(sum_s + kWarps * MAXG * head_dim);

    const int b = blockIdx.z, kvh = blockIdx.y / head_blocks, hb = blockIdx.y % head_blocks;
    const int group = heads / kv_heads;
    const int h0 = kvh * group + hb * heads_per_block;
    const int gcount = min(heads_per_block, group - hb * heads_per_block);
    const size_t kv_width = static_cast<size_t>(kv_heads) * head_dim;

    for (int i = threadIdx.x; i < MAXG * head_dim; i += blockDim.x) {
        const int g = i / head_dim, d = i % head_dim;
        q_s[i] = g < gcount ? __half2float(q[(static_cast<size_t>(b) * heads + h0 + g) * head_dim + d]) : 0.0f;
    }
    __syncthreads();

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int rows_per_warp = 32 / lanes, row_in_warp = lane / lanes, d0 = (lane % lanes) * 8;
    const bool active = d0 < head_dim;
    const int step = kWarps * rows_per_warp;  // key rows the block reads per step
    const __half* k_base = k_cache + static_cast<size_t>(b) * max_seq * kv_width + static_cast<size_t>(kvh) * head_dim + d0;
    const __half* v_base = v_cache + static_cast<size_t>(b) * max_seq * kv_width + static_cast<size_t>(kvh) * head_dim + d0;

    for (int c = blockIdx.x; c <= last_chunk; c += gridDim.x) {
        const int t0 = c * kChunk, n = min(kChunk, pos + 1 - t0);

        // Scores: each lane's 8 dimensions against every query head, summed over the row's lanes.
        float qf[MAXG][8];
#pragma unroll
        for (int g = 0; g < MAXG; g++)
#pragma unroll
            for (int j = 0; j < 8; j++) qf[g][j] = active ? q_s[g * head_dim + d0 + j] : 0.0f;
        for (int base = warp * rows_per_warp; base < n; base += kUnroll * step) {  // warp-uniform bounds
            uint4 rows[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                const int t = base + u * step + row_in_warp;
                rows[u] = active && t < n ? __ldg(reinterpret_cast<const uint4*>(k_base + (t0 + t) * kv_width))
                                          : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                if (base + u * step >= n) continue;  // warp-uniform: the shuffles below see every lane
                float kf[8];
                unpack8(rows[u], kf);
                float dot[MAXG];
#pragma unroll
                for (int g = 0; g < MAXG; g++) {
                    float s = 0.0f;
#pragma unroll
                    for (int j = 0; j < 8; j++) s = fmaf(qf[g][j], kf[j], s);
                    dot[g] = s;
                }
                for (int offset = lanes / 2; offset > 0; offset >>= 1)
#pragma unroll
                    for (int g = 0; g < MAXG; g++) dot[g] += __shfl_xor_sync(0xffffffffu, dot[g], offset);
                const int t = base + u * step + row_in_warp;
                if (lane % lanes == 0 && t < n)
#pragma unroll
                    for (int g = 0; g < MAXG; g++) p_s[g * kChunk + t] = dot[g] * scale;
            }
        }
        __syncthreads();

        // Softmax within the chunk: one warp per query head.
        for (int g = warp; g < gcount; g += kWarps) {
            float m = -INFINITY;
            for (int t = lane; t < n; t += 32) m = fmaxf(m, p_s[g * kChunk + t]);
            for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
            float l = 0.0f;
            for (int t = lane; t < n; t += 32) {
                const float e = expf(p_s[g * kChunk + t] - m);
                p_s[g * kChunk + t] = e;
                l += e;
            }
            for (int offset = 16; offset > 0; offset >>= 1) l += __shfl_xor_sync(0xffffffffu, l, offset);
            if (lane == 0) ml_s[g] = make_float2(m, l);
        }
        __syncthreads();

        // P V: each lane sums its rows' 8 dimensions, then the rows of a warp, then the warps.
        float acc[MAXG][8];
#pragma unroll
        for (int g = 0; g < MAXG; g++)
#pragma unroll
            for (int j = 0; j < 8; j++) acc[g][j] = 0.0f;
        for (int base = warp * rows_per_warp; base < n; base += kUnroll * step) {
            uint4 rows[kUnroll];
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                const int t = base + u * step + row_in_warp;
                rows[u] = active && t < n ? __ldg(reinterpret_cast<const uint4*>(v_base + (t0 + t) * kv_width))
                                          : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < kUnroll; u++) {
                const int t = base + u * step + row_in_warp;
                if (t < n) {
                    float vf[8];
                    unpack8(rows[u], vf);
#pragma unroll
                    for (int g = 0; g < MAXG; g++) {
                        const float p = g < gcount ? p_s[g * kChunk + t] : 0.0f;
#pragma unroll
                        for (int j = 0; j < 8; j++) acc[g][j] = fmaf(p, vf[j], acc[g][j]);
                    }
                }
            }
        }
        for (int offset = lanes; offset < 32; offset <<= 1)
#pragma unroll
            for (int g = 0; g < MAXG; g++)
#pragma unroll
                for (int j = 0; j < 8; j++) acc[g][j] += __shfl_xor_sync(0xffffffffu, acc[g][j], offset);
        if (row_in_warp == 0 && active)
#pragma unroll
            for (int g = 0; g < MAXG; g++)
                if (g < gcount)
#pragma unroll
                    for (int j = 0; j < 8; j++) sum_s[(warp * MAXG + g) * head_dim + d0 + j] = acc[g][j];
        __syncthreads();

        for (int i = threadIdx.x; i < gcount * head_dim; i += blockDim.x) {
            const int g = i / head_dim, d = i % head_dim;
            float s = 0.0f;
#pragma unroll
            for (int w = 0; w < kWarps; w++) s += sum_s[(w * MAXG + g) * head_dim + d];
            const size_t partial = (static_cast<size_t>(b) * heads + h0 + g) * chunks + c;
            part_acc[partial * head_dim + d] = s;
            if (d == 0) part_ml[partial] = ml_s[g];
        }
        __syncthreads();  // p_s, ml_s and sum_s are reused by the next chunk
    }
}

constexpr int kMergeThreads = 128;

// Block (h, b): out[b, h, :] from the partials of chunks 0 .. *pos / kChunk.
__global__ void __launch_bounds__(kMergeThreads)
decode_merge_kernel(__half* __restrict__ out, const float* __restrict__ part_acc, const float2* __restrict__ part_ml,
                    int max_seq, int heads, int head_dim, int chunks, const int* __restrict__ pos_ptr) {
    wait_for_prior_grid();
    allow_dependents();
    const int h = blockIdx.x, b = blockIdx.y;
    const int pos = *pos_ptr;
    const size_t row = static_cast<size_t>(b) * heads + h;
    __half* o = out + row * head_dim;
    if (pos < 0 || pos >= max_seq) {
        for (int d = threadIdx.x; d < head_dim; d += blockDim.x) o[d] = __float2half_rn(nan_f32());
        return;
    }
    const int n = pos / kChunk + 1;
    const float2* ml = part_ml + row * chunks;
    const float* acc = part_acc + row * chunks * head_dim;
    __shared__ float weight_s[kMergeThreads];
    float m = -INFINITY;
    for (int c = 0; c < n; c++) m = fmaxf(m, ml[c].x);
    float l = 0.0f;
    float sum[256 / kMergeThreads] = {};
    for (int c0 = 0; c0 < n; c0 += kMergeThreads) {  // chunk weights exp(m_c - m), a tile at a time
        const int tile = min(kMergeThreads, n - c0);
        __syncthreads();
        if (threadIdx.x < tile) weight_s[threadIdx.x] = expf(ml[c0 + threadIdx.x].x - m);
        __syncthreads();
        for (int c = 0; c < tile; c++) {
            const float w = weight_s[c];
            l = fmaf(ml[c0 + c].y, w, l);
#pragma unroll
            for (int i = 0; i < 256 / kMergeThreads; i++) {
                const int d = threadIdx.x + i * kMergeThreads;
                if (d < head_dim) sum[i] = fmaf(acc[static_cast<size_t>(c0 + c) * head_dim + d], w, sum[i]);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 256 / kMergeThreads; i++) {
        const int d = threadIdx.x + i * kMergeThreads;
        if (d < head_dim) o[d] = __float2half_rn(sum[i] / l);
    }
}

// How the keys and heads are cut: the same for any position below max_seq.
struct DecodePlan {
    int chunks;          // ceil(max_seq / kChunk): partial results per (sequence, query head)
    int head_blocks;     // blocks per kv head (its query heads split into groups of at most 8)
    int heads_per_block;
    int chunk_blocks;    // grid x: blocks per (sequence, kv head, head block)
    int lanes;           // lanes per key row
    size_t scratch_bytes;
};

DecodePlan make_plan(int batch, int max_seq, int heads, int kv_heads, int head_dim) {
    DecodePlan plan;
    const int group = heads / kv_heads;
    plan.chunks = (max_seq + kChunk - 1) / kChunk;
    plan.head_blocks = (group + kMaxHeadsPerBlock - 1) / kMaxHeadsPerBlock;
    plan.heads_per_block = (group + plan.head_blocks - 1) / plan.head_blocks;
    // About 8 blocks per multiprocessor when every chunk runs; more would only add blocks that loop.
    const long long columns = static_cast<long long>(batch) * kv_heads * plan.head_blocks;
    const long long wanted = (8LL * multiprocessor_count() + columns - 1) / columns;
    plan.chunk_blocks = static_cast<int>(std::max(1LL, std::min<long long>(plan.chunks, wanted)));
    plan.lanes = 1;
    while (plan.lanes * 8 < head_dim) plan.lanes *= 2;
    plan.scratch_bytes = static_cast<size_t>(batch) * heads * plan.chunks * (head_dim + 2) * sizeof(float);
    return plan;
}

int check_shape(int batch, int max_seq, int heads, int kv_heads, int head_dim, const char* caller) {
    QT_REQUIRE(batch >= 0 && max_seq > 0 && heads > 0 && kv_heads > 0,
               "%s: need batch >= 0, max_seq, heads, kv_heads > 0 (got %d, %d, %d, %d)", caller, batch, max_seq, heads,
               kv_heads);
    QT_REQUIRE(heads % kv_heads == 0, "%s: heads %d is not a multiple of kv_heads %d", caller, heads, kv_heads);
    QT_REQUIRE(head_dim > 0 && head_dim % 8 == 0, "%s: head_dim %d must be a positive multiple of 8", caller, head_dim);
    if (head_dim > 256) return fail(QT_ERR_UNSUPPORTED, "%s: head_dim %d (at most 256)", caller, head_dim);
    const long long head_blocks = (heads / kv_heads + kMaxHeadsPerBlock - 1) / kMaxHeadsPerBlock;
    QT_REQUIRE(batch <= 65535 && kv_heads * head_blocks <= 65535, "%s: batch %d or heads %d too large for one launch",
               caller, batch, heads);
    return QT_OK;
}

template <int MAXG>
cudaError_t launch_partials(const DecodePlan& plan, const __half* q, const __half* k_cache, const __half* v_cache,
                            float* part_acc, float2* part_ml, int batch, int max_seq, int heads, int kv_heads,
                            int head_dim, const int* pos, cudaStream_t s) {
    const size_t smem = sizeof(float) * (MAXG * head_dim + MAXG * kChunk + kWarps * MAXG * head_dim + 2 * MAXG);
    const dim3 grid(plan.chunk_blocks, kv_heads * plan.head_blocks, batch);
    return launch_dependent(decode_partials_kernel<MAXG>, grid, 32 * kWarps, smem, s, q, k_cache, v_cache, part_acc,
                            part_ml, max_seq, heads, kv_heads, head_dim, plan.head_blocks, plan.heads_per_block,
                            plan.lanes, plan.chunks, pos, 1.0f / sqrtf(static_cast<float>(head_dim)));
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_decode_attention_scratch_bytes(int batch, int max_seq, int heads, int kv_heads, int head_dim, size_t* bytes) {
    QT_REQUIRE(bytes != nullptr, "qt_decode_attention_scratch_bytes: bytes is NULL");
    QT_TRY(check_shape(batch, max_seq, heads, kv_heads, head_dim, "qt_decode_attention_scratch_bytes"));
    *bytes = make_plan(batch, max_seq, heads, kv_heads, head_dim).scratch_bytes;
    return QT_OK;
}

int qt_decode_attention(void* out, void* q, void* k, const void* v, void* k_cache, void* v_cache, int batch,
                        int max_seq, int heads, int kv_heads, int head_dim, const int32_t* pos, const void* inv_freq,
                        void* scratch, size_t scratch_bytes, void* stream) {
    QT_TRY(check_shape(batch, max_seq, heads, kv_heads, head_dim, "qt_decode_attention"));
    if (batch == 0) return QT_OK;
    QT_REQUIRE(out && q && k && v && k_cache && v_cache && pos && inv_freq && scratch,
               "qt_decode_attention: NULL argument");
    QT_REQUIRE(aligned16(out) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(k_cache) &&
                   aligned16(v_cache) && aligned16(scratch),
               "qt_decode_attention: out, q, k, v, the caches and scratch must be 16-byte aligned");
    const DecodePlan plan = make_plan(batch, max_seq, heads, kv_heads, head_dim);
    QT_REQUIRE(scratch_bytes >= plan.scratch_bytes,
               "qt_decode_attention: scratch of %zu bytes is smaller than the %zu needed "
               "(qt_decode_attention_scratch_bytes, on this device)", scratch_bytes, plan.scratch_bytes);
    cudaStream_t s = as_stream(stream);
    const int* p = reinterpret_cast<const int*>(pos);

    const size_t work = static_cast<size_t>(batch) * ((heads + kv_heads) * (head_dim / 4) + kv_heads * (head_dim / 8));
    QT_CUDA_TRY(launch_dependent(rope_store_kernel, blocks_for(work, 256), 256, 0, s, static_cast<__half*>(q),
                                 static_cast<__half*>(k), static_cast<const __half*>(v), static_cast<__half*>(k_cache),
                                 static_cast<__half*>(v_cache), batch, max_seq, heads, kv_heads, head_dim, p,
                                 static_cast<const float*>(inv_freq)));
    QT_TRY(check_launch("rope_store_kernel"));

    float* part_acc = static_cast<float*>(scratch);
    float2* part_ml = reinterpret_cast<float2*>(part_acc + static_cast<size_t>(batch) * heads * plan.chunks * head_dim);
    const __half* qh = static_cast<const __half*>(q);
    const __half* kc = static_cast<const __half*>(k_cache);
    const __half* vc = static_cast<const __half*>(v_cache);
    const auto partials = plan.heads_per_block == 1   ? launch_partials<1>
                          : plan.heads_per_block == 2 ? launch_partials<2>
                          : plan.heads_per_block <= 4 ? launch_partials<4>
                                                      : launch_partials<8>;
    QT_CUDA_TRY(partials(plan, qh, kc, vc, part_acc, part_ml, batch, max_seq, heads, kv_heads, head_dim, p, s));
    QT_TRY(check_launch("decode_partials_kernel"));

    QT_CUDA_TRY(launch_dependent(decode_merge_kernel, dim3(heads, batch), kMergeThreads, 0, s,
                                 static_cast<__half*>(out), part_acc, part_ml, max_seq, heads, head_dim, plan.chunks,
                                 p));
    return check_launch("decode_merge_kernel");
}

}  // extern "C"
