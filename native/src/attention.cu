// Causal grouped-query attention over a KV cache: flash-style kernels (online softmax, K/V tiles in shared memory,
// scores never written to device memory). Two of them:
//  - FP32 (F32 tensors, the fp32 path and the CPU-reference path): FFMA on CUDA cores, below;
//  - F16/BF16 (the fp16 path): tensor cores (mma.sync m16n8k16, 16-bit operands, FP32 accumulation and FP32 online
//    softmax), further down in namespace tc.
//
// Work split. The query heads that share one kv head (a "group" of heads / kv_heads) and the seq_len
// positions form, per (batch, kv head), a list of seq_len * group "packed rows": row i is position
// start_pos + i / group of query head kv_head * group + i % group. One block takes BQ consecutive packed rows
// of one (batch, kv head), so each K/V tile it loads serves every head of the group. When there are too few
// blocks to fill the GPU (decoding: one position), the keys of each block are also split into ranges
// ("splits") whose partial results a second kernel merges.
//
// The FP32 kernel stays FP32 (FFMA, not tensor cores): its inputs are FP32 and the reference is FP32.
// Scores are kept in the log2 domain (scaled by log2(e)/sqrt(head_dim)) so the softmax uses exp2f.
#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "internal.h"
#include "tensor_ops.h"

namespace qt {
namespace {

constexpr int kThreads = 128;  // 8 row groups (ty) x 16 column lanes (tx)
constexpr int kTY = 8;
constexpr int kTX = 16;

template <int D_PAD_, int RQ_, int BK_>
struct Tile {
    static constexpr int D_PAD = D_PAD_;       // head_dim rounded up; padded dims hold zeros
    static constexpr int RQ = RQ_;             // query rows per thread
    static constexpr int BK = BK_;             // keys per tile
    static constexpr int BQ = kTY * RQ;        // query rows per block
    static constexpr int SC = BK / kTX;        // score columns per thread: keys tx + 16 * j
    static constexpr int OC = D_PAD / (4 * kTX);  // float4 output chunks per thread and row: dims 4 * tx + 64 * c
    static constexpr int QK_STRIDE = D_PAD + 4;   // +4 floats: a quarter-warp's 16-byte reads of 8 rows hit 8 bank groups
    static constexpr int V_STRIDE = D_PAD;        // V is read along rows: no padding needed
    static constexpr int P_STRIDE = BK + 4;
    static constexpr int Q_FLOATS = BQ * QK_STRIDE;
    static constexpr int K_FLOATS = BK * QK_STRIDE;  // also holds P once the scores are computed
    static constexpr int V_FLOATS = BK * V_STRIDE;
    static constexpr size_t SMEM_BYTES = sizeof(float) * (Q_FLOATS + K_FLOATS + V_FLOATS);
    static_assert(BQ * P_STRIDE <= K_FLOATS, "P must fit where K was");
    static_assert(BK % kTX == 0 && D_PAD % (4 * kTX) == 0, "tile shape");
};

struct Params {
    const float* q;
    const float* k_cache;
    const float* v_cache;
    float* out;
    float* partial_o;   // [splits, batch * kv_heads, rows_per_group, head_dim], used when splits > 1
    float* partial_ml;  // [splits, batch * kv_heads, rows_per_group, 2]: running max (log2 domain), sum
    int seq_len, start_pos, max_seq, heads, kv_heads, head_dim, group;
    int rows_per_group, row_blocks, splits;
    float scale_log2;   // log2(e) / sqrt(head_dim)
};

// acc + a . b as four chained FMAs: written as a sum of products, it would cost an extra multiply and add, since
// without fast math the compiler may not reassociate.
__device__ __forceinline__ float fma4(float4 a, float4 b, float acc) {
    acc = fmaf(a.x, b.x, acc);
    acc = fmaf(a.y, b.y, acc);
    acc = fmaf(a.z, b.z, acc);
    return fmaf(a.w, b.w, acc);
}

// Copies this call's keys and values into the caches at positions [start_pos, start_pos + seq_len), 16 bytes at a
// time (any element type: a row is row_width16 16-byte units).
__global__ void store_kv_kernel(uint4* __restrict__ k_cache, uint4* __restrict__ v_cache, const uint4* __restrict__ k,
                                const uint4* __restrict__ v, int batch, int seq_len, int start_pos, int max_seq,
                                int row_width16) {
    const size_t total = static_cast<size_t>(batch) * seq_len * row_width16;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / row_width16;  // b * seq_len + s
        const int c = static_cast<int>(i % row_width16);
        const int b = static_cast<int>(row / seq_len), s = static_cast<int>(row % seq_len);
        const size_t dst = (static_cast<size_t>(b) * max_seq + start_pos + s) * row_width16 + c;
        k_cache[dst] = k[i];
        v_cache[dst] = v[i];
    }
}

template <class T>
__global__ void __launch_bounds__(kThreads)
attention_kernel(const Params p) {
    extern __shared__ float4 smem4[];
    float* smem = reinterpret_cast<float*>(smem4);
    float* q_tile = smem;                       // [BQ][QK_STRIDE]
    float* k_tile = q_tile + T::Q_FLOATS;       // [BK][QK_STRIDE], then P [BQ][P_STRIDE]
    float* v_tile = k_tile + T::K_FLOATS;       // [BK][V_STRIDE]
    float* p_tile = k_tile;

    const int tid = threadIdx.x;
    const int ty = tid / kTX, tx = tid % kTX;
    const int row_block = p.row_blocks - 1 - blockIdx.x;  // latest positions (most keys) first
    const int bkv = blockIdx.y;                            // b * kv_heads + kv_head
    const int b = bkv / p.kv_heads, kv_head = bkv % p.kv_heads;
    const int split = blockIdx.z;
    const int row0 = row_block * T::BQ;
    const int rows_here = min(T::BQ, p.rows_per_group - row0);
    const int kv_end = p.start_pos + (row0 + rows_here - 1) / p.group + 1;  // keys [0, kv_end) matter here
    const int tiles = (kv_end + T::BK - 1) / T::BK;
    const int tile_begin = static_cast<int>(static_cast<long long>(split) * tiles / p.splits);
    const int tile_end = static_cast<int>(static_cast<long long>(split + 1) * tiles / p.splits);
    const int d4_count = p.head_dim / 4;
    const size_t kv_row_width = static_cast<size_t>(p.kv_heads) * p.head_dim;
    const int kv_row_width32 = p.kv_heads * p.head_dim;  // offsets inside one tile fit an int

    // Q tile (one copy group); rows past the block's share and dims past head_dim are zeros.
#pragma unroll
    for (int idx = tid; idx < T::BQ * (T::D_PAD / 4); idx += kThreads) {
        const int r = idx / (T::D_PAD / 4), c4 = idx % (T::D_PAD / 4);
        const bool valid = r < rows_here && c4 < d4_count;
        const float* src = p.q;
        if (valid) {
            const int i = row0 + r, s = i / p.group, head = kv_head * p.group + i % p.group;
            src = p.q + (static_cast<size_t>(b * p.seq_len + s) * p.heads + head) * p.head_dim + c4 * 4;
        }
        copy16(q_tile + r * T::QK_STRIDE + c4 * 4, src, valid);
    }
    commit_copies();

    // Positions of this thread's rows (rows past rows_here compute harmless values that are never stored).
    int position[T::RQ];
#pragma unroll
    for (int i = 0; i < T::RQ; i++) position[i] = p.start_pos + (row0 + ty * T::RQ + i) / p.group;

    float4 o[T::RQ][T::OC];
    float row_max[T::RQ], row_sum[T::RQ];  // row_sum: this thread's columns only, reduced at the end
#pragma unroll
    for (int i = 0; i < T::RQ; i++) {
        row_max[i] = -INFINITY;
        row_sum[i] = 0.f;
#pragma unroll
        for (int c = 0; c < T::OC; c++) o[i][c] = make_float4(0.f, 0.f, 0.f, 0.f);
    }

    for (int tile = tile_begin; tile < tile_end; tile++) {
        const int key0 = tile * T::BK;
        // K, then V (two copy groups); keys at or past kv_end are zeros (their cache rows may hold anything, NaN too).
        const size_t tile_base = (static_cast<size_t>(b) * p.max_seq + key0) * kv_row_width +
                                 static_cast<size_t>(kv_head) * p.head_dim;
        const float* k_src = p.k_cache + tile_base;
        const float* v_src = p.v_cache + tile_base;
#pragma unroll
        for (int idx = tid; idx < T::BK * (T::D_PAD / 4); idx += kThreads) {
            const int kk = idx / (T::D_PAD / 4), c4 = idx % (T::D_PAD / 4);
            const bool valid = key0 + kk < kv_end && c4 < d4_count;
            copy16(k_tile + kk * T::QK_STRIDE + c4 * 4, valid ? k_src + kk * kv_row_width32 + c4 * 4 : p.k_cache, valid);
        }
        commit_copies();
#pragma unroll
        for (int idx = tid; idx < T::BK * (T::D_PAD / 4); idx += kThreads) {
            const int kk = idx / (T::D_PAD / 4), c4 = idx % (T::D_PAD / 4);
            const bool valid = key0 + kk < kv_end && c4 < d4_count;
            copy16(v_tile + kk * T::V_STRIDE + c4 * 4, valid ? v_src + kk * kv_row_width32 + c4 * 4 : p.v_cache, valid);
        }
        commit_copies();
        wait_copies<1>();  // Q and K are here; V may still be on its way
        __syncthreads();

        // Scores: s[i][j] = q[row ty*RQ+i] . k[key tx+16j], scaled into the log2 domain below.
        float s[T::RQ][T::SC];
#pragma unroll
        for (int i = 0; i < T::RQ; i++)
#pragma unroll
            for (int j = 0; j < T::SC; j++) s[i][j] = 0.f;
#pragma unroll 4
        for (int d4 = 0; d4 < T::D_PAD / 4; d4++) {
            float4 kf[T::SC];
#pragma unroll
            for (int j = 0; j < T::SC; j++)
                kf[j] = *reinterpret_cast<const float4*>(k_tile + (tx + kTX * j) * T::QK_STRIDE + d4 * 4);
#pragma unroll
            for (int i = 0; i < T::RQ; i++) {
                const float4 qf = *reinterpret_cast<const float4*>(q_tile + (ty * T::RQ + i) * T::QK_STRIDE + d4 * 4);
#pragma unroll
                for (int j = 0; j < T::SC; j++) s[i][j] = fma4(qf, kf[j], s[i][j]);
            }
        }

        // Causal mask, online softmax update, and the rescale of the accumulated output.
#pragma unroll
        for (int i = 0; i < T::RQ; i++) {
            float tile_max = -INFINITY;
#pragma unroll
            for (int j = 0; j < T::SC; j++) {
                s[i][j] = key0 + tx + kTX * j > position[i] ? -INFINITY : s[i][j] * p.scale_log2;
                tile_max = fmaxf(tile_max, s[i][j]);
            }
            // The 16 lanes holding one row are lanes 0-15 or 16-31 of a warp.
#pragma unroll
            for (int offset = kTX / 2; offset > 0; offset >>= 1)
                tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
            const float new_max = fmaxf(row_max[i], tile_max);
            const float base = new_max == -INFINITY ? 0.f : new_max;  // all masked so far: keep exp2 finite
            const float alpha = exp2f(row_max[i] - base);             // exp2(-inf) = 0 on the first tile
            row_max[i] = new_max;
            float sum = 0.f;
#pragma unroll
            for (int j = 0; j < T::SC; j++) {
                s[i][j] = exp2f(s[i][j] - base);
                sum += s[i][j];
            }
            row_sum[i] = row_sum[i] * alpha + sum;
#pragma unroll
            for (int c = 0; c < T::OC; c++) {
                o[i][c].x *= alpha; o[i][c].y *= alpha; o[i][c].z *= alpha; o[i][c].w *= alpha;
            }
        }
        __syncthreads();  // every thread is done reading K: P may overwrite it
#pragma unroll
        for (int i = 0; i < T::RQ; i++)
#pragma unroll
            for (int j = 0; j < T::SC; j++) p_tile[(ty * T::RQ + i) * T::P_STRIDE + tx + kTX * j] = s[i][j];
        wait_copies<0>();  // V is here
        __syncthreads();

        // o[i] += P[row i, :] V, four keys at a time: P as one float4 per row, then one V row per key.
#pragma unroll 2
        for (int k4 = 0; k4 < T::BK / 4; k4++) {
            float4 pf[T::RQ];
#pragma unroll
            for (int i = 0; i < T::RQ; i++)
                pf[i] = *reinterpret_cast<const float4*>(p_tile + (ty * T::RQ + i) * T::P_STRIDE + k4 * 4);
#pragma unroll
            for (int u = 0; u < 4; u++) {
                float4 vf[T::OC];
#pragma unroll
                for (int c = 0; c < T::OC; c++)
                    vf[c] = *reinterpret_cast<const float4*>(v_tile + (k4 * 4 + u) * T::V_STRIDE + 4 * tx + 64 * c);
#pragma unroll
                for (int i = 0; i < T::RQ; i++) {
                    const float pu = u == 0 ? pf[i].x : u == 1 ? pf[i].y : u == 2 ? pf[i].z : pf[i].w;
#pragma unroll
                    for (int c = 0; c < T::OC; c++) {
                        o[i][c].x += pu * vf[c].x;
                        o[i][c].y += pu * vf[c].y;
                        o[i][c].z += pu * vf[c].z;
                        o[i][c].w += pu * vf[c].w;
                    }
                }
            }
        }
        __syncthreads();  // before the next tile overwrites K, P and V
    }
    wait_copies<0>();  // a split with no tiles still issued the Q copies: let them land before the block exits

    // Finish: full row sums, then either the normalized output or this split's partial result.
#pragma unroll
    for (int i = 0; i < T::RQ; i++) {
        float sum = row_sum[i];
#pragma unroll
        for (int offset = kTX / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
        const int r = ty * T::RQ + i;
        if (r >= rows_here) continue;
        const int packed = row0 + r;
        if (p.splits == 1) {
            const float inv = 1.0f / sum;  // >= 1 term: key 0 is never masked
            const int s = packed / p.group, head = kv_head * p.group + packed % p.group;
            float* dst = p.out + (static_cast<size_t>(b * p.seq_len + s) * p.heads + head) * p.head_dim;
#pragma unroll
            for (int c = 0; c < T::OC; c++) {
                const int d = 4 * tx + 64 * c;
                if (d < p.head_dim)
                    *reinterpret_cast<float4*>(dst + d) =
                        make_float4(o[i][c].x * inv, o[i][c].y * inv, o[i][c].z * inv, o[i][c].w * inv);
            }
        } else {
            const size_t slot = (static_cast<size_t>(split) * gridDim.y + bkv) * p.rows_per_group + packed;
            float* dst = p.partial_o + slot * p.head_dim;
#pragma unroll
            for (int c = 0; c < T::OC; c++) {
                const int d = 4 * tx + 64 * c;
                if (d < p.head_dim) *reinterpret_cast<float4*>(dst + d) = o[i][c];
            }
            if (tx == 0) {
                p.partial_ml[slot * 2] = row_max[i];
                p.partial_ml[slot * 2 + 1] = sum;
            }
        }
    }
}

// Merges the splits' partial results: out = sum_z o_z 2^(m_z - M) / sum_z l_z 2^(m_z - M), M = max_z m_z.
// One block per (packed row, batch * kv head).
__global__ void merge_splits_kernel(const Params p) {
    const int packed = blockIdx.x, bkv = blockIdx.y;
    const int b = bkv / p.kv_heads, kv_head = bkv % p.kv_heads;
    const size_t stride = static_cast<size_t>(gridDim.y) * p.rows_per_group;  // slots per split
    const size_t slot0 = static_cast<size_t>(bkv) * p.rows_per_group + packed;
    float m = -INFINITY;
    for (int z = 0; z < p.splits; z++) m = fmaxf(m, p.partial_ml[(slot0 + z * stride) * 2]);
    float l = 0.f;
    for (int z = 0; z < p.splits; z++) {
        const size_t slot = slot0 + z * stride;
        l += p.partial_ml[slot * 2 + 1] * exp2f(p.partial_ml[slot * 2] - m);  // empty split: 0 * 0
    }
    const float inv = 1.0f / l;
    const int s = packed / p.group, head = kv_head * p.group + packed % p.group;
    float* dst = p.out + (static_cast<size_t>(b * p.seq_len + s) * p.heads + head) * p.head_dim;
    for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
        float acc = 0.f;
        for (int z = 0; z < p.splits; z++) {
            const size_t slot = slot0 + z * stride;
            acc += p.partial_o[slot * p.head_dim + d] * exp2f(p.partial_ml[slot * 2] - m);
        }
        dst[d] = acc * inv;
    }
}

// The tile shapes: by head_dim (64, 128, 256 after rounding up) and by how many packed rows there are.
// 64-key tiles: 32-key tiles for head_dim 128 (three blocks per multiprocessor instead of two) measured slower on
// an H100 (23.7 against 24.4 TFLOP/s at b1 s2048 h32; native/README.md).
using Tile64 = Tile<64, 8, 64>;
using Tile128 = Tile<128, 8, 64>;
using Tile256 = Tile<256, 4, 32>;
using Tile64Small = Tile<64, 2, 64>;
using Tile128Small = Tile<128, 2, 64>;
using Tile256Small = Tile<256, 2, 32>;

constexpr int kSmallRows = 16;  // up to this many packed rows (decoding), the 16-row tiles waste less

struct Plan {
    int d_pad, bq, bk;
    bool small;
    int row_blocks, splits;
    size_t scratch_bytes;
};

Plan make_plan(int batch, int seq_len, int start_pos, int heads, int kv_heads, int head_dim) {
    Plan plan{};
    const int rows_per_group = seq_len * (heads / kv_heads);
    plan.small = rows_per_group <= kSmallRows;
    plan.d_pad = head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256;
    if (plan.d_pad == 256) {
        plan.bq = plan.small ? Tile256Small::BQ : Tile256::BQ;
        plan.bk = plan.small ? Tile256Small::BK : Tile256::BK;
    } else if (plan.d_pad == 128) {
        plan.bq = plan.small ? Tile128Small::BQ : Tile128::BQ;
        plan.bk = plan.small ? Tile128Small::BK : Tile128::BK;
    } else {
        plan.bq = plan.small ? Tile64Small::BQ : Tile64::BQ;
        plan.bk = plan.small ? Tile64Small::BK : Tile64::BK;
    }
    plan.row_blocks = (rows_per_group + plan.bq - 1) / plan.bq;
    const long long blocks = static_cast<long long>(plan.row_blocks) * batch * kv_heads;
    const int tiles = (start_pos + seq_len + plan.bk - 1) / plan.bk;
    // Fewer blocks than multiprocessors (decoding, short prompts): split the keys until about four blocks per
    // multiprocessor keep loads in flight, down to one tile per split. A full wave of blocks is never split: the
    // partial results would cost more traffic than the idle multiprocessors.
    const long long multiprocessors = multiprocessor_count();
    plan.splits = 1;
    if (blocks < multiprocessors && tiles >= 2) {
        long long want = (4 * multiprocessors + blocks - 1) / blocks;
        plan.splits = static_cast<int>(std::min<long long>(std::min<long long>(want, tiles), 64));
    }
    plan.scratch_bytes = plan.splits == 1 ? 0
                         : sizeof(float) * static_cast<size_t>(plan.splits) * batch * kv_heads * rows_per_group *
                               (head_dim + 2);
    return plan;
}

template <class T>
int launch(const Params& p, int batch_kv, cudaStream_t stream) {
    static bool attribute_set[64];  // per device: the opt-in to more than 48 KB of shared memory
    int device = 0;
    QT_CUDA_TRY(cudaGetDevice(&device));
    if (device < 0 || device >= 64) return fail(QT_ERR_UNSUPPORTED, "qt_attention: device %d", device);
    if (!attribute_set[device]) {
        QT_CUDA_TRY(cudaFuncSetAttribute(attention_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(T::SMEM_BYTES)));
        attribute_set[device] = true;
    }
    dim3 grid(p.row_blocks, batch_kv, p.splits);
    attention_kernel<T><<<grid, kThreads, T::SMEM_BYTES, stream>>>(p);
    return check_launch("attention_kernel");
}


// ---- F16/BF16: tensor cores ---------------------------------------------------------------------------------------
//
// Same work split as above (packed rows of one (batch, kv head), key splits for decoding), with NW warps per block,
// each warp owning MT m-tiles of 16 packed rows: BQ = 16 * MT * NW rows (prefill: 4 warps x 1 m-tile; decoding: one
// warp), 64-key tiles (32 with two m-tiles). Per tile, a warp computes S = Q K^T (16 x 64) with mma.sync m16n8k16 (Q
// fragments stay in registers for the whole block; K fragments come from shared memory through ldmatrix), the
// online softmax in FP32 on the accumulator registers, then O += P V with P re-packed from the accumulators into
// 16-bit A fragments (the C layout of two m16n8 tiles is the A layout of one m16n8k16) and V fragments through
// ldmatrix.trans. K/V tiles are double-buffered: cp.async fills the next tile during this one.
// Causality: a warp skips tiles that start past its last row's position and masks only tiles that reach past its
// first row's position; a block loads no tile past its last row's position.
namespace tc {

constexpr int kBK = 64;  // keys per tile of the decoding (one-warp) shape, which alone splits keys

template <typename T, int D_, int NW_, int MT_ = 1>
struct Shape {
    static constexpr int D = D_;                     // head_dim rounded up to 64 or 128; padded dims hold zeros
    static constexpr int NW = NW_;                   // warps per block
    static constexpr int MT = MT_;                   // 16-row m-tiles per warp
    static constexpr int BK = MT == 1 ? 64 : 32;     // keys per tile (two m-tiles: 32, or the scores spill)
    static constexpr int THREADS = 32 * NW;
    static constexpr int BQ = 16 * MT * NW;          // packed rows per block
    static constexpr int STRIDE = D + 8;             // elements per shared row: +16 bytes, so the 8 rows of an
                                                     // ldmatrix 8x8 read fall into 8 different bank groups
    static constexpr int Q_ELEMS = BQ * STRIDE;
    static constexpr int KV_ELEMS = BK * STRIDE;     // one K or V tile
    static constexpr size_t SMEM_BYTES = sizeof(T) * (Q_ELEMS + 4 * KV_ELEMS);  // Q, K x2, V x2
};

struct Params {
    const void* q;
    const void* k_cache;
    const void* v_cache;
    void* out;
    float* partial_o;   // [splits, batch * kv_heads, rows_per_group, head_dim], used when splits > 1
    float* partial_ml;  // [splits, batch * kv_heads, rows_per_group, 2]: running max (log2 domain), sum
    int seq_len, start_pos, max_seq, heads, kv_heads, head_dim, group;
    int rows_per_group, row_blocks, splits;
    float scale_log2;
};

template <typename T> struct Ops;
template <> struct Ops<__half> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 h = __floats2half2_rn(lo, hi);  // lo in the low 16 bits: the lower column of a fragment pair
        return *reinterpret_cast<uint32_t*>(&h);
    }
    // c += a b: a 16x16 (row-major fragments), b 16x8 (column-major), c 16x8 FP32.
    static __device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
        mma_f16(c, a, b0, b1);
    }
    static __device__ __forceinline__ __half from(float v) { return __float2half_rn(v); }
};
template <> struct Ops<__nv_bfloat16> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 h = __floats2bfloat162_rn(lo, hi);
        return *reinterpret_cast<uint32_t*>(&h);
    }
    static __device__ __forceinline__ void mma(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
        asm(  // not volatile: a pure register operation the compiler may schedule
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    static __device__ __forceinline__ __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};

template <typename T, class S>
__global__ void __launch_bounds__(S::THREADS)
attention_kernel(const Params p) {
    constexpr int D = S::D, STRIDE = S::STRIDE, CPR = D / 8;  // CPR: 16-byte chunks per padded row
    constexpr int MT = S::MT, WR = 16 * MT, BK = S::BK;       // m-tiles and rows per warp, keys per tile
    extern __shared__ float4 smem4[];
    T* q_s = reinterpret_cast<T*>(smem4);  // [BQ][STRIDE]
    T* k_s = q_s + S::Q_ELEMS;             // [2][BK][STRIDE]
    T* v_s = k_s + 2 * S::KV_ELEMS;        // [2][BK][STRIDE]

    const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
    const int row_block = p.row_blocks - 1 - blockIdx.x;  // latest positions (most keys) first
    const int bkv = blockIdx.y;                            // b * kv_heads + kv_head
    const int b = bkv / p.kv_heads, kv_head = bkv % p.kv_heads;
    const int split = blockIdx.z;
    const int row0 = row_block * S::BQ;
    const int rows_here = min(S::BQ, p.rows_per_group - row0);
    const int kv_end = p.start_pos + (row0 + rows_here - 1) / p.group + 1;  // keys [0, kv_end) matter here
    const int tiles = (kv_end + BK - 1) / BK;
    const int tile_begin = static_cast<int>(static_cast<long long>(split) * tiles / p.splits);
    const int tile_end = static_cast<int>(static_cast<long long>(split + 1) * tiles / p.splits);
    const int chunks = p.head_dim / 8;  // 16-byte chunks of a row that hold data
    const int kv_row = p.kv_heads * p.head_dim;
    const T* q_g = static_cast<const T*>(p.q);
    const T* k_g = static_cast<const T*>(p.k_cache);
    const T* v_g = static_cast<const T*>(p.v_cache);

    // Q tile (one copy group); rows past the block's share and dims past head_dim are zeros.
    for (int idx = tid; idx < S::BQ * CPR; idx += S::THREADS) {
        const int r = idx / CPR, c = idx % CPR;
        const bool valid = r < rows_here && c < chunks;
        const T* src = q_g;
        if (valid) {
            const int i = row0 + r, s = i / p.group, head = kv_head * p.group + i % p.group;
            src = q_g + (static_cast<size_t>(b * p.seq_len + s) * p.heads + head) * p.head_dim + c * 8;
        }
        copy16(q_s + r * STRIDE + c * 8, src, valid);
    }
    commit_copies();

    // K and V of one tile into buffer `buf`; keys at or past kv_end are zeros (their cache rows may hold anything).
    auto load_tile = [&](int tile, int buf) {
        const int key0 = tile * BK;
        const size_t base = (static_cast<size_t>(b) * p.max_seq + key0) * kv_row + static_cast<size_t>(kv_head) * p.head_dim;
        T* kd = k_s + buf * S::KV_ELEMS;
        T* vd = v_s + buf * S::KV_ELEMS;
        for (int idx = tid; idx < BK * CPR; idx += S::THREADS) {
            const int kk = idx / CPR, c = idx % CPR;
            const bool valid = key0 + kk < kv_end && c < chunks;
            const size_t off = base + static_cast<size_t>(kk) * kv_row + c * 8;
            copy16(kd + kk * STRIDE + c * 8, valid ? k_g + off : k_g, valid);
            copy16(vd + kk * STRIDE + c * 8, valid ? v_g + off : v_g, valid);
        }
    };

    // This warp's rows: WR packed rows from wrow0, as MT m-tiles of 16; in m-tile mt, lane holds rows lane / 4 and
    // lane / 4 + 8 (the accumulator layout). Positions grow with the packed index.
    const int wrow0 = row0 + warp * WR;
    const int last_row = row0 + rows_here - 1;  // the block's last valid packed row
    int pos_lo[MT], pos_hi[MT], mt_min_pos[MT], mt_max_pos[MT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        const int r_lo = wrow0 + mt * 16 + lane / 4;
        pos_lo[mt] = p.start_pos + r_lo / p.group;
        pos_hi[mt] = p.start_pos + (r_lo + 8) / p.group;
        const int first = wrow0 + mt * 16;
        mt_min_pos[mt] = p.start_pos + first / p.group;
        mt_max_pos[mt] = first <= last_row ? p.start_pos + min(first + 15, last_row) / p.group : -1;  // -1: no rows
    }
    const int d_steps = (p.head_dim + 15) / 16;  // 16-wide steps over dims that hold data

    float o[MT][D / 8][4];
#pragma unroll
    for (int mt = 0; mt < MT; mt++)
#pragma unroll
        for (int j = 0; j < D / 8; j++) o[mt][j][0] = o[mt][j][1] = o[mt][j][2] = o[mt][j][3] = 0.f;
    float m_lo[MT], m_hi[MT], l_lo[MT], l_hi[MT];
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
        m_lo[mt] = m_hi[mt] = -INFINITY;
        l_lo[mt] = l_hi[mt] = 0.f;
    }
    // One m-tile: Q's A fragments stay in registers for the whole block. Two: they are re-read from shared memory
    // at each step (registers go to the second m-tile's scores and output instead).
    uint32_t qf[MT == 1 ? D / 16 : 1][4];

    if (tile_begin < tile_end) load_tile(tile_begin, 0);
    commit_copies();
    for (int t = tile_begin; t < tile_end; t++) {
        const int buf = (t - tile_begin) & 1;
        if (t + 1 < tile_end) load_tile(t + 1, buf ^ 1);
        commit_copies();
        wait_copies<1>();  // Q and this tile are here; the next tile may still be on its way
        __syncthreads();
        if constexpr (MT == 1) {
            if (t == tile_begin) {
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++)
                    ldsm_x4(qf[kk], q_s + (warp * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * STRIDE + kk * 16 + 8 * (lane / 16));
            }
        }
        const int key0 = t * BK;
        bool active[MT];  // warp-uniform: an m-tile whose every row precedes key0 has nothing to do in this tile
        bool any = false;
#pragma unroll
        for (int mt = 0; mt < MT; mt++) {
            active[mt] = key0 <= mt_max_pos[mt];
            any = any || active[mt];
        }
        if (any) {
            const T* kt = k_s + buf * S::KV_ELEMS;
            const T* vt = v_s + buf * S::KV_ELEMS;
            float s[MT][BK / 8][4];
#pragma unroll
            for (int mt = 0; mt < MT; mt++)
#pragma unroll
                for (int j = 0; j < BK / 8; j++) s[mt][j][0] = s[mt][j][1] = s[mt][j][2] = s[mt][j][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk++) {
                if (kk < d_steps) {
                    uint32_t af[MT][4];
                    if constexpr (MT > 1) {
#pragma unroll
                        for (int mt = 0; mt < MT; mt++)
                            if (active[mt])
                                ldsm_x4(af[mt], q_s + (warp * WR + mt * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * STRIDE +
                                                    kk * 16 + 8 * (lane / 16));
                    }
                    // Matrices: keys nn*16 + [0,8) / [8,16) (lane / 16) x dims kk*16 + [0,8) / [8,16) ((lane / 8) % 2):
                    // bf[i][0], [1]: key tile 2 nn; bf[i][2], [3]: key tile 2 nn + 1. A group's loads, then its products
                    // (groups of 4 with one m-tile, 2 with two, where registers are short).
                    constexpr int G = MT == 1 ? BK / 16 : 2;
#pragma unroll
                    for (int n0 = 0; n0 < BK / 16; n0 += G) {
                        uint32_t bf[G][4];
#pragma unroll
                        for (int i = 0; i < G; i++)
                            ldsm_x4(bf[i], kt + ((n0 + i) * 16 + (lane % 8) + 8 * (lane / 16)) * STRIDE + kk * 16 + 8 * ((lane / 8) % 2));
#pragma unroll
                        for (int mt = 0; mt < MT; mt++) {
                            if (!active[mt]) continue;
                            const uint32_t* a = MT == 1 ? qf[kk] : af[mt];
#pragma unroll
                            for (int i = 0; i < G; i++) {
                                Ops<T>::mma(s[mt][2 * (n0 + i)], a, bf[i][0], bf[i][1]);
                                Ops<T>::mma(s[mt][2 * (n0 + i) + 1], a, bf[i][2], bf[i][3]);
                            }
                        }
                    }
                }
            }
            uint32_t pa[MT][BK / 16][4];  // P as 16-bit A fragments, 16 keys per step
#pragma unroll
            for (int mt = 0; mt < MT; mt++) {
                if (!active[mt]) continue;
                // Causal mask, only where the tile reaches past the m-tile's first position.
                if (key0 + BK - 1 > mt_min_pos[mt]) {
#pragma unroll
                    for (int j = 0; j < BK / 8; j++) {
                        const int key = key0 + 8 * j + 2 * (lane % 4);
                        if (key > pos_lo[mt]) s[mt][j][0] = -INFINITY;
                        if (key + 1 > pos_lo[mt]) s[mt][j][1] = -INFINITY;
                        if (key > pos_hi[mt]) s[mt][j][2] = -INFINITY;
                        if (key + 1 > pos_hi[mt]) s[mt][j][3] = -INFINITY;
                    }
                }
                // Online softmax in the log2 domain; each row's 64 scores sit in the 4 lanes of a quad.
                float mx_lo = -INFINITY, mx_hi = -INFINITY;
#pragma unroll
                for (int j = 0; j < BK / 8; j++) {
                    mx_lo = fmaxf(mx_lo, fmaxf(s[mt][j][0], s[mt][j][1]));
                    mx_hi = fmaxf(mx_hi, fmaxf(s[mt][j][2], s[mt][j][3]));
                }
#pragma unroll
                for (int offset = 1; offset < 4; offset <<= 1) {
                    mx_lo = fmaxf(mx_lo, __shfl_xor_sync(0xffffffffu, mx_lo, offset));
                    mx_hi = fmaxf(mx_hi, __shfl_xor_sync(0xffffffffu, mx_hi, offset));
                }
                const float new_lo = fmaxf(m_lo[mt], mx_lo * p.scale_log2), new_hi = fmaxf(m_hi[mt], mx_hi * p.scale_log2);
                const float base_lo = new_lo == -INFINITY ? 0.f : new_lo;  // all masked so far: keep exp2 finite
                const float base_hi = new_hi == -INFINITY ? 0.f : new_hi;
                const float alpha_lo = exp2f(m_lo[mt] - base_lo), alpha_hi = exp2f(m_hi[mt] - base_hi);
                m_lo[mt] = new_lo;
                m_hi[mt] = new_hi;
                float sum_lo = 0.f, sum_hi = 0.f;
#pragma unroll
                for (int j = 0; j < BK / 8; j++) {
                    s[mt][j][0] = exp2f(fmaf(s[mt][j][0], p.scale_log2, -base_lo));
                    s[mt][j][1] = exp2f(fmaf(s[mt][j][1], p.scale_log2, -base_lo));
                    s[mt][j][2] = exp2f(fmaf(s[mt][j][2], p.scale_log2, -base_hi));
                    s[mt][j][3] = exp2f(fmaf(s[mt][j][3], p.scale_log2, -base_hi));
                    sum_lo += s[mt][j][0] + s[mt][j][1];
                    sum_hi += s[mt][j][2] + s[mt][j][3];
                }
                l_lo[mt] = l_lo[mt] * alpha_lo + sum_lo;
                l_hi[mt] = l_hi[mt] * alpha_hi + sum_hi;
#pragma unroll
                for (int j = 0; j < D / 8; j++) {
                    o[mt][j][0] *= alpha_lo;
                    o[mt][j][1] *= alpha_lo;
                    o[mt][j][2] *= alpha_hi;
                    o[mt][j][3] *= alpha_hi;
                }
                // The C layout of key tiles 2 kk and 2 kk + 1 is the A layout of keys [16 kk, 16 kk + 16).
#pragma unroll
                for (int kk = 0; kk < BK / 16; kk++) {
                    pa[mt][kk][0] = Ops<T>::pack(s[mt][2 * kk][0], s[mt][2 * kk][1]);
                    pa[mt][kk][1] = Ops<T>::pack(s[mt][2 * kk][2], s[mt][2 * kk][3]);
                    pa[mt][kk][2] = Ops<T>::pack(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
                    pa[mt][kk][3] = Ops<T>::pack(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
                }
            }
            // O += P V, 16 keys per step.
#pragma unroll
            for (int kk = 0; kk < BK / 16; kk++) {
                // Matrices (transposed): keys kk*16 + [0,8) / [8,16) ((lane / 8) % 2) x dims nd*16 + [0,8) / [8,16)
                // (lane / 16): bf[i][0], [1]: dim tile 2 (n0 + i); bf[i][2], [3]: dim tile 2 (n0 + i) + 1. A group's
                // loads, then its products.
                constexpr int GV = MT == 1 ? 4 : 2;
#pragma unroll
                for (int n0 = 0; n0 < D / 16; n0 += GV) {
                    uint32_t bf[GV][4];
#pragma unroll
                    for (int i = 0; i < GV; i++)
                        if (n0 + i < d_steps)
                            ldsm_x4_trans(bf[i], vt + (kk * 16 + (lane % 8) + 8 * ((lane / 8) % 2)) * STRIDE + (n0 + i) * 16 + 8 * (lane / 16));
#pragma unroll
                    for (int mt = 0; mt < MT; mt++) {
                        if (!active[mt]) continue;
#pragma unroll
                        for (int i = 0; i < GV; i++) {
                            if (n0 + i < d_steps) {
                                Ops<T>::mma(o[mt][2 * (n0 + i)], pa[mt][kk], bf[i][0], bf[i][1]);
                                Ops<T>::mma(o[mt][2 * (n0 + i) + 1], pa[mt][kk], bf[i][2], bf[i][3]);
                            }
                        }
                    }
                }
            }
        }
        __syncthreads();  // before the next round's copies overwrite this buffer
    }
    wait_copies<0>();  // a split with no tiles still issued the Q copies: let them land before the block exits

    // Finish: full row sums, then the normalized output, or this split's partial result.
#pragma unroll
    for (int mt = 0; mt < MT; mt++) {
#pragma unroll
        for (int offset = 1; offset < 4; offset <<= 1) {
            l_lo[mt] += __shfl_xor_sync(0xffffffffu, l_lo[mt], offset);
            l_hi[mt] += __shfl_xor_sync(0xffffffffu, l_hi[mt], offset);
        }
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const int r = wrow0 + mt * 16 + lane / 4 + 8 * h;
            if (r > last_row) continue;
            const float l = h == 0 ? l_lo[mt] : l_hi[mt], m = h == 0 ? m_lo[mt] : m_hi[mt];
            if (p.splits == 1) {
                const float inv = 1.0f / l;  // >= 1 term: key 0 is never masked
                const int s = r / p.group, head = kv_head * p.group + r % p.group;
                T* dst = static_cast<T*>(p.out) + (static_cast<size_t>(b * p.seq_len + s) * p.heads + head) * p.head_dim;
#pragma unroll
                for (int j = 0; j < D / 8; j++) {
                    const int d = 8 * j + 2 * (lane % 4);
                    if (d < p.head_dim)
                        *reinterpret_cast<uint32_t*>(dst + d) = Ops<T>::pack(o[mt][j][2 * h] * inv, o[mt][j][2 * h + 1] * inv);
                }
            } else {
                const size_t slot = (static_cast<size_t>(split) * gridDim.y + bkv) * p.rows_per_group + r;
                float* dst = p.partial_o + slot * p.head_dim;
#pragma unroll
                for (int j = 0; j < D / 8; j++) {
                    const int d = 8 * j + 2 * (lane % 4);
                    if (d < p.head_dim) *reinterpret_cast<float2*>(dst + d) = make_float2(o[mt][j][2 * h], o[mt][j][2 * h + 1]);
                }
                if (lane % 4 == 0) {
                    p.partial_ml[slot * 2] = m;
                    p.partial_ml[slot * 2 + 1] = l;
                }
            }
        }
    }
}

// As the FP32 merge, writing 16-bit output.
template <typename T>
__global__ void merge_splits_kernel(const Params p) {
    const int packed = blockIdx.x, bkv = blockIdx.y;
    const int b = bkv / p.kv_heads, kv_head = bkv % p.kv_heads;
    const size_t stride = static_cast<size_t>(gridDim.y) * p.rows_per_group;
    const size_t slot0 = static_cast<size_t>(bkv) * p.rows_per_group + packed;
    float m = -INFINITY;
    for (int z = 0; z < p.splits; z++) m = fmaxf(m, p.partial_ml[(slot0 + z * stride) * 2]);
    float l = 0.f;
    for (int z = 0; z < p.splits; z++) {
        const size_t slot = slot0 + z * stride;
        l += p.partial_ml[slot * 2 + 1] * exp2f(p.partial_ml[slot * 2] - m);
    }
    const float inv = 1.0f / l;
    const int s = packed / p.group, head = kv_head * p.group + packed % p.group;
    T* dst = static_cast<T*>(p.out) + (static_cast<size_t>(b * p.seq_len + s) * p.heads + head) * p.head_dim;
    for (int d = threadIdx.x; d < p.head_dim; d += blockDim.x) {
        float acc = 0.f;
        for (int z = 0; z < p.splits; z++) {
            const size_t slot = slot0 + z * stride;
            acc += p.partial_o[slot * p.head_dim + d] * exp2f(p.partial_ml[slot * 2] - m);
        }
        dst[d] = Ops<T>::from(acc * inv);
    }
}

struct Plan {
    int d_pad, warps, mtiles;
    int row_blocks, splits;
    size_t scratch_bytes;
};

// One 16-row m-tile per warp (64-key tiles, Q fragments in registers). Two (128-row blocks, 32-key tiles, Q re-read
// from shared memory; FA2's layout) measured slower on an H100: 91 against 122 TFLOP/s at b1 s2048 h32 d128, 136
// against 155 at b16 (native/README.md).
constexpr int kDefaultMTiles = 1;

// 16-row m-tiles per warp for prefill: QTOOL_ATTN_MTILES (1 or 2) overrides kDefaultMTiles, for measurements.
int prefill_mtiles() {
    static const int mtiles = [] {
        const char* e = getenv("QTOOL_ATTN_MTILES");
        const int v = e != nullptr ? atoi(e) : 0;
        return v == 1 || v == 2 ? v : kDefaultMTiles;
    }();
    return mtiles;
}

Plan make_plan(int batch, int seq_len, int start_pos, int heads, int kv_heads, int head_dim) {
    Plan plan{};
    const int rows_per_group = seq_len * (heads / kv_heads);
    plan.d_pad = head_dim <= 64 ? 64 : 128;
    // Decoding (a few packed rows): one warp of 16 rows. Prefill: four warps of 16 or 32 rows.
    plan.warps = rows_per_group <= 16 ? 1 : 4;
    plan.mtiles = rows_per_group <= 64 ? 1 : prefill_mtiles();
    const int bq = 16 * plan.warps * plan.mtiles;
    plan.row_blocks = (rows_per_group + bq - 1) / bq;
    const long long blocks = static_cast<long long>(plan.row_blocks) * batch * kv_heads;
    const int tiles = (start_pos + seq_len + kBK - 1) / kBK;
    const long long multiprocessors = multiprocessor_count();
    plan.splits = 1;
    if (blocks < multiprocessors && tiles >= 2) {
        long long want = (4 * multiprocessors + blocks - 1) / blocks;
        plan.splits = static_cast<int>(std::min<long long>(std::min<long long>(want, tiles), 64));
    }
    plan.scratch_bytes = plan.splits == 1 ? 0
                         : sizeof(float) * static_cast<size_t>(plan.splits) * batch * kv_heads * rows_per_group *
                               (head_dim + 2);
    return plan;
}

template <typename T, class S>
int launch(const Params& p, int batch_kv, cudaStream_t stream) {
    static bool attribute_set[64];
    int device = 0;
    QT_CUDA_TRY(cudaGetDevice(&device));
    if (device < 0 || device >= 64) return fail(QT_ERR_UNSUPPORTED, "qt_attention: device %d", device);
    if (!attribute_set[device]) {
        QT_CUDA_TRY(cudaFuncSetAttribute(attention_kernel<T, S>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(S::SMEM_BYTES)));
        attribute_set[device] = true;
    }
    dim3 grid(p.row_blocks, batch_kv, p.splits);
    attention_kernel<T, S><<<grid, S::THREADS, S::SMEM_BYTES, stream>>>(p);
    return check_launch("tc::attention_kernel");
}

template <typename T>
int run(const Plan& plan, const Params& p, int batch_kv, cudaStream_t s) {
    int status;
    if (plan.d_pad == 64) {
        status = plan.warps == 1    ? launch<T, Shape<T, 64, 1>>(p, batch_kv, s)
                 : plan.mtiles == 2 ? launch<T, Shape<T, 64, 4, 2>>(p, batch_kv, s)
                                    : launch<T, Shape<T, 64, 4>>(p, batch_kv, s);
    } else {
        status = plan.warps == 1    ? launch<T, Shape<T, 128, 1>>(p, batch_kv, s)
                 : plan.mtiles == 2 ? launch<T, Shape<T, 128, 4, 2>>(p, batch_kv, s)
                                    : launch<T, Shape<T, 128, 4>>(p, batch_kv, s);
    }
    QT_TRY(status);
    if (p.splits > 1) {
        merge_splits_kernel<T><<<dim3(p.rows_per_group, batch_kv), 64, 0, s>>>(p);
        QT_TRY(check_launch("tc::merge_splits_kernel"));
    }
    return QT_OK;
}

}  // namespace tc

}  // namespace
}  // namespace qt

using namespace qt;

namespace {
int check_attention_shape(int dtype, int batch, int seq_len, int start_pos, int heads, int kv_heads, int head_dim,
                          const char* caller) {
    QT_REQUIRE(is_float_dtype(dtype), "%s: dtype %s (need F32, F16 or BF16)", caller, dtype_name(dtype));
    QT_REQUIRE(batch >= 0 && seq_len >= 0 && start_pos >= 0, "%s: negative size", caller);
    QT_REQUIRE(heads > 0 && kv_heads > 0 && heads % kv_heads == 0,
               "%s: heads (%d) must be a positive multiple of kv_heads (%d)", caller, heads, kv_heads);
    if (dtype == QT_F32) {
        QT_REQUIRE(head_dim > 0 && head_dim % 4 == 0, "%s: head_dim %d must be a positive multiple of 4", caller, head_dim);
        if (head_dim > 256) return fail(QT_ERR_UNSUPPORTED, "%s: head_dim %d > 256 is not supported", caller, head_dim);
    } else {
        QT_REQUIRE(head_dim > 0 && head_dim % 8 == 0, "%s: head_dim %d must be a positive multiple of 8 for %s", caller,
                   head_dim, dtype_name(dtype));
        if (head_dim > 128)
            return fail(QT_ERR_UNSUPPORTED, "%s: head_dim %d > 128 is not supported for %s (use F32)", caller, head_dim,
                        dtype_name(dtype));
    }
    return QT_OK;
}
}  // namespace

extern "C" {

int qt_attention_scratch_bytes(int dtype, int batch, int seq_len, int start_pos, int heads, int kv_heads, int head_dim,
                               size_t* bytes) {
    QT_REQUIRE(bytes != nullptr, "qt_attention_scratch_bytes: bytes is NULL");
    *bytes = 0;
    QT_TRY(check_attention_shape(dtype, batch, seq_len, start_pos, heads, kv_heads, head_dim,
                                 "qt_attention_scratch_bytes"));
    if (batch == 0 || seq_len == 0) return QT_OK;
    *bytes = dtype == QT_F32 ? make_plan(batch, seq_len, start_pos, heads, kv_heads, head_dim).scratch_bytes
                             : tc::make_plan(batch, seq_len, start_pos, heads, kv_heads, head_dim).scratch_bytes;
    return QT_OK;
}

int qt_attention(void* out, const void* q, const void* k, const void* v, void* k_cache, void* v_cache, int dtype,
                 int batch, int seq_len, int start_pos, int max_seq, int heads, int kv_heads, int head_dim,
                 void* scratch, size_t scratch_bytes, void* stream) {
    QT_TRY(check_attention_shape(dtype, batch, seq_len, start_pos, heads, kv_heads, head_dim, "qt_attention"));
    if (batch == 0 || seq_len == 0) return QT_OK;
    QT_REQUIRE(start_pos + static_cast<long long>(seq_len) <= max_seq,
               "qt_attention: positions up to %d do not fit the cache's max_seq %d", start_pos + seq_len, max_seq);
    QT_REQUIRE(out && q && k && v && k_cache && v_cache, "qt_attention: NULL tensor");
    QT_REQUIRE(aligned16(out) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(k_cache) &&
                   aligned16(v_cache),
               "qt_attention: tensors must be 16-byte aligned");
    QT_REQUIRE(static_cast<long long>(batch) * kv_heads <= 65535, "qt_attention: batch * kv_heads > 65535");
    cudaStream_t s = as_stream(stream);

    const int row_width16 = static_cast<int>(kv_heads * head_dim * dtype_bytes(dtype) / 16);
    const size_t kv_units = static_cast<size_t>(batch) * seq_len * row_width16;
    store_kv_kernel<<<blocks_for(kv_units, 256), 256, 0, s>>>(
        static_cast<uint4*>(k_cache), static_cast<uint4*>(v_cache), static_cast<const uint4*>(k),
        static_cast<const uint4*>(v), batch, seq_len, start_pos, max_seq, row_width16);
    QT_TRY(check_launch("store_kv_kernel"));

    const int batch_kv = batch * kv_heads;
    const int group = heads / kv_heads;
    const float scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(head_dim)));
    if (dtype != QT_F32) {
        tc::Plan plan = tc::make_plan(batch, seq_len, start_pos, heads, kv_heads, head_dim);
        if (plan.splits > 1 && (scratch == nullptr || scratch_bytes < plan.scratch_bytes || !aligned16(scratch))) {
            plan.splits = 1;  // documented fallback: same result, less parallel
        }
        tc::Params p{};
        p.q = q;
        p.k_cache = k_cache;
        p.v_cache = v_cache;
        p.out = out;
        p.seq_len = seq_len;
        p.start_pos = start_pos;
        p.max_seq = max_seq;
        p.heads = heads;
        p.kv_heads = kv_heads;
        p.head_dim = head_dim;
        p.group = group;
        p.rows_per_group = seq_len * group;
        p.row_blocks = plan.row_blocks;
        p.splits = plan.splits;
        p.scale_log2 = scale_log2;
        if (plan.splits > 1) {
            p.partial_o = static_cast<float*>(scratch);
            p.partial_ml = p.partial_o + static_cast<size_t>(plan.splits) * batch_kv * p.rows_per_group * head_dim;
        }
        return dtype == QT_F16 ? tc::run<__half>(plan, p, batch_kv, s) : tc::run<__nv_bfloat16>(plan, p, batch_kv, s);
    }

    Plan plan = make_plan(batch, seq_len, start_pos, heads, kv_heads, head_dim);
    if (plan.splits > 1 && (scratch == nullptr || scratch_bytes < plan.scratch_bytes || !aligned16(scratch))) {
        plan.splits = 1;  // documented fallback: same result, less parallel
    }
    Params p{};
    p.q = static_cast<const float*>(q);
    p.k_cache = static_cast<const float*>(k_cache);
    p.v_cache = static_cast<const float*>(v_cache);
    p.out = static_cast<float*>(out);
    p.seq_len = seq_len;
    p.start_pos = start_pos;
    p.max_seq = max_seq;
    p.heads = heads;
    p.kv_heads = kv_heads;
    p.head_dim = head_dim;
    p.group = group;
    p.rows_per_group = seq_len * p.group;
    p.row_blocks = plan.row_blocks;
    p.splits = plan.splits;
    p.scale_log2 = scale_log2;
    if (plan.splits > 1) {
        p.partial_o = static_cast<float*>(scratch);
        p.partial_ml = p.partial_o + static_cast<size_t>(plan.splits) * batch * kv_heads * p.rows_per_group * head_dim;
    }

    int status;
    switch (plan.d_pad) {
        case 64: status = plan.small ? launch<Tile64Small>(p, batch_kv, s) : launch<Tile64>(p, batch_kv, s); break;
        case 128: status = plan.small ? launch<Tile128Small>(p, batch_kv, s) : launch<Tile128>(p, batch_kv, s); break;
        default: status = plan.small ? launch<Tile256Small>(p, batch_kv, s) : launch<Tile256>(p, batch_kv, s); break;
    }
    QT_TRY(status);
    if (plan.splits > 1) {
        merge_splits_kernel<<<dim3(p.rows_per_group, batch_kv), 64, 0, s>>>(p);
        QT_TRY(check_launch("merge_splits_kernel"));
    }
    return QT_OK;
}

}  // extern "C"
