// qt_decode_attention: one decoding step of causal GQA attention, RoPE and the cache store included, with the
// position read from device memory when the kernel runs, so that one captured CUDA graph serves every step.
//
// One kernel, launched with a shape that depends only on the model's sizes, never on the position or max_seq.
// A column of blocks serves one (sequence, kv head, group of up to 8 of its query heads); the `split` blocks of a
// column cut the keys [0, *pos] into `split` equal runs chosen when the kernel runs, so every block has work at any
// position. Each block:
//  1. issues the loads of its first tile of key and value rows, then (while they are in flight) rotates its query
//     heads (qt_rope's expressions, one rounding to F16) and, when its run holds *pos, this token's key: row *pos is
//     taken from there and from v, never from the caches, so no block reads a row this call writes;
//  2. walks its run a tile at a time with an online softmax: scores into shared memory, per query head a running
//     (max, sum of exp) and each thread's share of sum exp * v rescaled in registers;
//  3. leaves its (max, sum, sum exp * v) per query head in shared memory; after a cluster barrier, the blocks of a
//     column read each other's through distributed shared memory and each writes a slice of out in F16.
// The blocks of a kv head (its split blocks times its head groups) form one thread block cluster (sm_90), so the
// in-place writes of q and k and the cache store wait only for that barrier: nothing else reads them. GPUs without
// clusters run one block per column (split 1), heads / kv_heads <= 8.
// Each row is read with 16-byte loads, `lanes` lanes of a warp splitting head_dim; the query heads of a block share
// every row it loads. Scores, softmax and sums are F32 (scale 1/sqrt(head_dim), full-precision expf); the
// probabilities stay F32 in the P V product (qt_attention's tensor-core path rounds them to 16 bits, so the two
// agree to fp16 rounding). *pos outside [0, max_seq): nothing is rotated or stored, and out is all NaN, so a bad
// position shows in the logits instead of corrupting a cache.
#include <cooperative_groups.h>

#include <algorithm>

#include "internal.h"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define QT_DECODE_CLUSTERS 1
#endif

namespace qt {
namespace {

constexpr int kWarps = 8;              // warps per block
constexpr int kThreads = 32 * kWarps;
constexpr int kMaxHeadsPerBlock = 8;
constexpr int kMaxCluster = 8;         // the portable cluster size: blocks per kv head
constexpr int kMinLanes = 4;           // at least 4 lanes a row, so a tile stays <= 8 * 64 rows for tiny head_dim

// Key rows each lane has in flight per tile (keys and values each): fewer with 8 heads a block, whose query and
// accumulator registers take 128.
template <int MAXG>
constexpr int unroll() { return MAXG >= 8 ? 4 : 8; }

// Shared memory of a block (see decode_attention_kernel), in floats up to the rotated key, which starts 16-byte aligned.
template <int MAXG>
__host__ __device__ constexpr int knew_offset(int head_dim, int tile) {
    return (MAXG * head_dim + (MAXG * tile > 4 * MAXG * head_dim ? MAXG * tile : 4 * MAXG * head_dim) + 3 * MAXG + 3) / 4 * 4;
}

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

// Barrier over the blocks of this block's cluster (its own threads alone without clusters), with their shared memory.
__device__ __forceinline__ void cluster_sync() {
#ifdef QT_DECODE_CLUSTERS
    cooperative_groups::this_cluster().sync();
#else
    __syncthreads();
#endif
}

// p (in this block's shared memory) as seen in the shared memory of the cluster's block `rank`.
template <typename T>
__device__ __forceinline__ const T* peer(T* p, int rank) {
#ifdef QT_DECODE_CLUSTERS
    return cooperative_groups::this_cluster().map_shared_rank(p, rank);
#else
    return p;
#endif
}

// Dimensions j and j + half of the head x (F16) rotated by `position` as qt_rope's rope_pairs_kernel rotates them,
// expression for expression, so both round to the same F16 values.
__device__ __forceinline__ void rope_pair(const __half* x, int j, int half, float position, const float* inv_freq,
                                          __half* ra, __half* rb) {
    float s, c;
    sincosf(position * inv_freq[j], &s, &c);
    const float a = __half2float(x[j]), b = __half2float(x[j + half]);
    *ra = __float2half_rn(a * c - b * s);
    *rb = __float2half_rn(b * c + a * s);
}

// Block (x, y, z): key run x of `split`; y = kv head * head_blocks + head group; z = sequence. Cluster (split,
// head_blocks, 1): every block that reads this kv head's q heads and k.
// Shared memory (floats): q [MAXG][head_dim] (rotated, F16 values), then a region that holds the tile's scores
// p [MAXG][tile] during the walk and the warps' sums red [4][MAXG][head_dim] after it (red[0]: the block's result),
// then (m, l) [MAXG], the tile's rescale [MAXG], this token's rotated key [head_dim] F16.
template <int MAXG>
__global__ void __launch_bounds__(kThreads, 1)
decode_attention_kernel(__half* __restrict__ out, __half* __restrict__ q, __half* __restrict__ k,
                        const __half* __restrict__ v, __half* __restrict__ k_cache, __half* __restrict__ v_cache,
                        int max_seq, int heads, int kv_heads, int head_dim, int head_blocks, int heads_per_block,
                        int lanes, const int* __restrict__ pos_ptr, const float* __restrict__ inv_freq, float scale) {
    constexpr int U = unroll<MAXG>();
    const int split = gridDim.x, x = blockIdx.x;
    const int b = blockIdx.z, kvh = blockIdx.y / head_blocks, hb = blockIdx.y % head_blocks;
    const int group = heads / kv_heads;
    const int h0 = kvh * group + hb * heads_per_block;
    const int gcount = min(heads_per_block, group - hb * heads_per_block);
    const size_t kv_width = static_cast<size_t>(kv_heads) * head_dim;
    __half* out_rows = out + (static_cast<size_t>(b) * heads + h0) * head_dim;  // this block's query heads
    __half* q_rows = q + (static_cast<size_t>(b) * heads + h0) * head_dim;
    const int pos = *pos_ptr;
    if (pos < 0 || pos >= max_seq) {
        if (x == 0)
            for (int i = threadIdx.x; i < gcount * head_dim; i += blockDim.x) out_rows[i] = __float2half_rn(nan_f32());
        return;  // every block of the cluster returns here: no barrier is left waiting
    }

    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int rows_per_warp = 32 / lanes, row_in_warp = lane / lanes, d0 = (lane % lanes) * 8;
    const bool active = d0 < head_dim;
    const int step = kWarps * rows_per_warp, tile = U * step;  // key rows the block reads per load, per tile
    extern __shared__ float smem[];
    float* q_s = smem;
    float* p_s = q_s + MAXG * head_dim;
    float* red_s = p_s;
    float2* ml_s = reinterpret_cast<float2*>(p_s + max(MAXG * tile, 4 * MAXG * head_dim));
    float* rescale_s = reinterpret_cast<float*>(ml_s + MAXG);
    __half* knew_s = reinterpret_cast<__half*>(smem + knew_offset<MAXG>(head_dim, tile));

    // This block's run of keys; the one holding pos (its last row) rotates the new key.
    const int n = pos + 1, run = (n + split - 1) / split;
    const int begin = x * run, end = min(n, begin + run);
    const bool owner = begin <= pos && pos < end;
    const __half* k_new = k + b * kv_width + static_cast<size_t>(kvh) * head_dim;
    const __half* v_new = v + b * kv_width + static_cast<size_t>(kvh) * head_dim;
    const __half* k_base = k_cache + static_cast<size_t>(b) * max_seq * kv_width + static_cast<size_t>(kvh) * head_dim + d0;
    const __half* v_base = v_cache + static_cast<size_t>(b) * max_seq * kv_width + static_cast<size_t>(kvh) * head_dim + d0;
    if (threadIdx.x < MAXG) ml_s[threadIdx.x] = make_float2(-INFINITY, 0.0f);

    float acc[MAXG][8];
#pragma unroll
    for (int g = 0; g < MAXG; g++)
#pragma unroll
        for (int j = 0; j < 8; j++) acc[g][j] = 0.0f;

    for (int t0 = begin; t0 < end; t0 += tile) {
        const int rows = min(tile, end - t0);
        uint4 kr[U], vr[U];
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int r = u * step + warp * rows_per_warp + row_in_warp, t = t0 + r;
            const bool live = active && r < rows;
            kr[u] = live && t != pos ? __ldg(reinterpret_cast<const uint4*>(k_base + t * kv_width)) : make_uint4(0, 0, 0, 0);
            vr[u] = !live ? make_uint4(0, 0, 0, 0)
                          : __ldg(reinterpret_cast<const uint4*>(t == pos ? v_new + d0 : v_base + t * kv_width));
        }
        if (t0 == begin) {  // RoPE while the first rows are in flight
            const int half = head_dim / 2;
            const float position = static_cast<float>(pos);
            for (int i = threadIdx.x; i < MAXG * half; i += blockDim.x) {
                const int g = i / half, j = i % half;
                __half ra = __float2half_rn(0.0f), rb = ra;
                if (g < gcount) rope_pair(q_rows + g * head_dim, j, half, position, inv_freq, &ra, &rb);
                q_s[g * head_dim + j] = __half2float(ra);
                q_s[g * head_dim + j + half] = __half2float(rb);
            }
            if (owner)
                for (int j = threadIdx.x; j < half; j += blockDim.x)
                    rope_pair(k_new, j, half, position, inv_freq, &knew_s[j], &knew_s[j + half]);
            __syncthreads();
        }
        if (owner)
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int r = u * step + warp * rows_per_warp + row_in_warp;
                if (active && r < rows && t0 + r == pos) kr[u] = *reinterpret_cast<const uint4*>(knew_s + d0);
            }

        // Scores: each lane's 8 dimensions against every query head, summed over the row's lanes.
        float qf[MAXG][8];
#pragma unroll
        for (int g = 0; g < MAXG; g++)
#pragma unroll
            for (int j = 0; j < 8; j++) qf[g][j] = active ? q_s[g * head_dim + d0 + j] : 0.0f;
#pragma unroll
        for (int u = 0; u < U; u++) {
            if (u * step >= rows) break;  // block-uniform: the shuffles below see every lane
            float kf[8];
            unpack8(kr[u], kf);
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
            const int r = u * step + warp * rows_per_warp + row_in_warp;
            if (lane % lanes == 0 && r < rows)
#pragma unroll
                for (int g = 0; g < MAXG; g++) p_s[g * tile + r] = dot[g] * scale;
        }
        __syncthreads();

        // Online softmax, one warp per query head: the running max moves to cover this tile, and what was summed
        // under the old max is rescaled by exp(old - new) (0 on the first tile).
        for (int g = warp; g < gcount; g += kWarps) {
            const float2 ml = ml_s[g];
            float m = ml.x;
            for (int r = lane; r < rows; r += 32) m = fmaxf(m, p_s[g * tile + r]);
            for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
            float l = 0.0f;
            for (int r = lane; r < rows; r += 32) {
                const float e = expf(p_s[g * tile + r] - m);
                p_s[g * tile + r] = e;
                l += e;
            }
            for (int offset = 16; offset > 0; offset >>= 1) l += __shfl_xor_sync(0xffffffffu, l, offset);
            if (lane == 0) {
                const float alpha = expf(ml.x - m);
                rescale_s[g] = alpha;
                ml_s[g] = make_float2(m, fmaf(ml.y, alpha, l));
            }
        }
        __syncthreads();

        // P V: each lane sums its rows' 8 dimensions.
#pragma unroll
        for (int g = 0; g < MAXG; g++) {
            const float alpha = g < gcount ? rescale_s[g] : 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) acc[g][j] *= alpha;
        }
#pragma unroll
        for (int u = 0; u < U; u++) {
            const int r = u * step + warp * rows_per_warp + row_in_warp;
            if (r < rows) {
                float vf[8];
                unpack8(vr[u], vf);
#pragma unroll
                for (int g = 0; g < MAXG; g++) {
                    const float p = g < gcount ? p_s[g * tile + r] : 0.0f;
#pragma unroll
                    for (int j = 0; j < 8; j++) acc[g][j] = fmaf(p, vf[j], acc[g][j]);
                }
            }
        }
        __syncthreads();  // p_s and rescale_s are rewritten by the next tile
    }

    // The block's sums: the rows of a warp by shuffles, then the warps in a fixed order (warps 4-7 into red[0..3],
    // warps 0-3 added, then red[1..3] into red[0]), so that every run gives the same bits.
    for (int offset = lanes; offset < 32; offset <<= 1)
#pragma unroll
        for (int g = 0; g < MAXG; g++)
#pragma unroll
            for (int j = 0; j < 8; j++) acc[g][j] += __shfl_xor_sync(0xffffffffu, acc[g][j], offset);
    const int slice = MAXG * head_dim;
    for (int half_warps = 1; half_warps >= 0; half_warps--) {
        if (warp / 4 == half_warps && row_in_warp == 0 && active)
#pragma unroll
            for (int g = 0; g < MAXG; g++)
#pragma unroll
                for (int j = 0; j < 8; j++) {
                    float* cell = &red_s[(warp % 4) * slice + g * head_dim + d0 + j];
                    *cell = half_warps ? acc[g][j] : *cell + acc[g][j];
                }
        __syncthreads();
    }
    for (int i = threadIdx.x; i < slice; i += blockDim.x)
        red_s[i] = (red_s[i] + red_s[slice + i]) + (red_s[2 * slice + i] + red_s[3 * slice + i]);
    cluster_sync();  // every block's result is in place, and every block has read q and k

    // Merge: the column's blocks take slices of out; block x' of this column is cluster rank x' + split * hb.
    for (int i = x * blockDim.x + threadIdx.x; i < gcount * head_dim; i += split * blockDim.x) {
        const int g = i / head_dim;
        float m = -INFINITY;
        for (int r = 0; r < split; r++) m = fmaxf(m, peer(ml_s, r + split * hb)[g].x);
        float l = 0.0f, sum = 0.0f;
        for (int r = 0; r < split; r++) {
            const int rank = r + split * hb;
            const float2 ml = peer(ml_s, rank)[g];
            const float w = expf(ml.x - m);  // 0 for a block with no keys (max -inf)
            l = fmaf(ml.y, w, l);
            sum = fmaf(peer(red_s, rank)[i], w, sum);
        }
        out_rows[i] = __float2half_rn(sum / l);
    }
    // In place: the rotated q (block 0 of the column) and k, and the cache rows at pos (the owner in head group 0).
    if (x == 0)
        for (int i = threadIdx.x; i < gcount * head_dim; i += blockDim.x) q_rows[i] = __float2half_rn(q_s[i]);
    if (owner && hb == 0) {
        const size_t row = (static_cast<size_t>(b) * max_seq + pos) * kv_width + static_cast<size_t>(kvh) * head_dim;
        for (int d = 8 * threadIdx.x; d < head_dim; d += 8 * blockDim.x) {
            const uint4 key = *reinterpret_cast<const uint4*>(knew_s + d);
            *reinterpret_cast<uint4*>(k + b * kv_width + static_cast<size_t>(kvh) * head_dim + d) = key;
            *reinterpret_cast<uint4*>(k_cache + row + d) = key;
            *reinterpret_cast<uint4*>(v_cache + row + d) = *reinterpret_cast<const uint4*>(v_new + d);
        }
    }
    cluster_sync();  // the other blocks have read this one's shared memory
}

// How the keys and heads are cut: the same for every position.
struct DecodePlan {
    int head_blocks;      // head groups per kv head (its query heads split into groups of at most 8)
    int heads_per_block;
    int split;            // blocks per head group, each taking a run of keys
    bool clusters;        // launched as clusters of (split, head_blocks) blocks
    int lanes;            // lanes per key row
};

// Whether this device launches clusters and runs a build of the kernel for compute_90 or later (one for compute_80
// on a Hopper GPU has no cluster code). Cached per device: 1 no, 2 yes.
bool clusters_usable() {
    static int cache[64];
    int device = 0;
    if (cudaGetDevice(&device) != cudaSuccess || device < 0) return false;
    if (device < 64 && cache[device]) return cache[device] == 2;
    int launch = 0;
    cudaFuncAttributes attributes;
    const bool yes = cudaDeviceGetAttribute(&launch, cudaDevAttrClusterLaunch, device) == cudaSuccess && launch &&
                     cudaFuncGetAttributes(&attributes, decode_attention_kernel<1>) == cudaSuccess &&
                     attributes.ptxVersion >= 90;
    if (device < 64) cache[device] = yes ? 2 : 1;
    return yes;
}

DecodePlan make_plan(int heads, int kv_heads, int head_dim) {
    DecodePlan plan;
    const int group = heads / kv_heads;
    plan.head_blocks = (group + kMaxHeadsPerBlock - 1) / kMaxHeadsPerBlock;
    plan.heads_per_block = (group + plan.head_blocks - 1) / plan.head_blocks;
    plan.clusters = clusters_usable();
    plan.split = plan.clusters ? std::max(1, kMaxCluster / plan.head_blocks) : 1;
    plan.lanes = kMinLanes;
    while (plan.lanes * 8 < head_dim) plan.lanes *= 2;
    return plan;
}

int check_shape(int batch, int max_seq, int heads, int kv_heads, int head_dim, const char* caller) {
    QT_REQUIRE(batch >= 0 && max_seq > 0 && heads > 0 && kv_heads > 0,
               "%s: need batch >= 0, max_seq, heads, kv_heads > 0 (got %d, %d, %d, %d)", caller, batch, max_seq, heads,
               kv_heads);
    QT_REQUIRE(heads % kv_heads == 0, "%s: heads %d is not a multiple of kv_heads %d", caller, heads, kv_heads);
    QT_REQUIRE(head_dim > 0 && head_dim % 8 == 0, "%s: head_dim %d must be a positive multiple of 8", caller, head_dim);
    if (head_dim > 256) return fail(QT_ERR_UNSUPPORTED, "%s: head_dim %d (at most 256)", caller, head_dim);
    QT_REQUIRE(batch <= 65535 && kv_heads <= 65535 / kMaxCluster, "%s: batch %d or kv_heads %d too large for one launch",
               caller, batch, kv_heads);
    return QT_OK;
}

template <int MAXG>
int launch(const DecodePlan& plan, __half* out, __half* q, __half* k, const __half* v, __half* k_cache,
           __half* v_cache, int batch, int max_seq, int heads, int kv_heads, int head_dim, const int* pos,
           const float* inv_freq, cudaStream_t s) {
    const int tile = unroll<MAXG>() * kWarps * (32 / plan.lanes);
    const size_t smem = knew_offset<MAXG>(head_dim, tile) * sizeof(float) + head_dim * sizeof(__half);
    cudaLaunchConfig_t config = {};
    config.gridDim = dim3(plan.split, kv_heads * plan.head_blocks, batch);
    config.blockDim = dim3(kThreads);
    config.dynamicSmemBytes = smem;
    config.stream = s;
    cudaLaunchAttribute cluster;
    cluster.id = cudaLaunchAttributeClusterDimension;
    cluster.val.clusterDim.x = plan.split;
    cluster.val.clusterDim.y = plan.head_blocks;
    cluster.val.clusterDim.z = 1;
    config.attrs = &cluster;
    config.numAttrs = plan.clusters ? 1 : 0;
    const cudaError_t error = cudaLaunchKernelEx(&config, decode_attention_kernel<MAXG>, out, q, k, v, k_cache, v_cache,
                                                 max_seq, heads, kv_heads, head_dim, plan.head_blocks,
                                                 plan.heads_per_block, plan.lanes, pos, inv_freq,
                                                 1.0f / sqrtf(static_cast<float>(head_dim)));
    if (error != cudaSuccess) return fail_cuda(error, "decode_attention_kernel");
    return check_launch("decode_attention_kernel");
}

}  // namespace
}  // namespace qt

using namespace qt;

extern "C" {

int qt_decode_attention_scratch_bytes(int batch, int max_seq, int heads, int kv_heads, int head_dim, size_t* bytes) {
    QT_REQUIRE(bytes != nullptr, "qt_decode_attention_scratch_bytes: bytes is NULL");
    QT_TRY(check_shape(batch, max_seq, heads, kv_heads, head_dim, "qt_decode_attention_scratch_bytes"));
    *bytes = 0;  // the blocks merge through distributed shared memory
    return QT_OK;
}

int qt_decode_attention(void* out, void* q, void* k, const void* v, void* k_cache, void* v_cache, int batch,
                        int max_seq, int heads, int kv_heads, int head_dim, const int32_t* pos, const void* inv_freq,
                        void* scratch, size_t scratch_bytes, void* stream) {
    (void)scratch;
    (void)scratch_bytes;
    QT_TRY(check_shape(batch, max_seq, heads, kv_heads, head_dim, "qt_decode_attention"));
    if (batch == 0) return QT_OK;
    QT_REQUIRE(out && q && k && v && k_cache && v_cache && pos && inv_freq, "qt_decode_attention: NULL argument");
    QT_REQUIRE(aligned16(out) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(k_cache) &&
                   aligned16(v_cache),
               "qt_decode_attention: out, q, k, v and the caches must be 16-byte aligned");
    const DecodePlan plan = make_plan(heads, kv_heads, head_dim);
    if (plan.clusters ? plan.head_blocks > kMaxCluster : plan.head_blocks > 1)
        return fail(QT_ERR_UNSUPPORTED, "qt_decode_attention: %d query heads per kv head (at most %d%s)",
                    heads / kv_heads, plan.clusters ? kMaxCluster * kMaxHeadsPerBlock : kMaxHeadsPerBlock,
                    plan.clusters ? "" : " on a GPU without thread block clusters");
    cudaStream_t s = as_stream(stream);
    __half* o = static_cast<__half*>(out);
    __half* qh = static_cast<__half*>(q);
    __half* kh = static_cast<__half*>(k);
    const __half* vh = static_cast<const __half*>(v);
    __half* kc = static_cast<__half*>(k_cache);
    __half* vc = static_cast<__half*>(v_cache);
    const int* p = reinterpret_cast<const int*>(pos);
    const float* inv = static_cast<const float*>(inv_freq);
    if (plan.heads_per_block == 1) return launch<1>(plan, o, qh, kh, vh, kc, vc, batch, max_seq, heads, kv_heads, head_dim, p, inv, s);
    if (plan.heads_per_block == 2) return launch<2>(plan, o, qh, kh, vh, kc, vc, batch, max_seq, heads, kv_heads, head_dim, p, inv, s);
    if (plan.heads_per_block <= 4) return launch<4>(plan, o, qh, kh, vh, kc, vc, batch, max_seq, heads, kv_heads, head_dim, p, inv, s);
    return launch<8>(plan, o, qh, kh, vh, kc, vc, batch, max_seq, heads, kv_heads, head_dim, p, inv, s);
}

}  // extern "C"
