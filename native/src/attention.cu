// Causal grouped-query attention over a KV cache, in FP32: a flash-style kernel (online softmax, K/V tiles
// in shared memory, scores never written to device memory).
//
// Work split. The query heads that share one kv head (a "group" of heads / kv_heads) and the seq_len
// positions form, per (batch, kv head), a list of seq_len * group "packed rows": row i is position
// start_pos + i / group of query head kv_head * group + i % group. One block takes BQ consecutive packed rows
// of one (batch, kv head), so each K/V tile it loads serves every head of the group. When there are too few
// blocks to fill the GPU (decoding: one position), the keys of each block are also split into ranges
// ("splits") whose partial results a second kernel merges.
//
// Everything stays FP32 (FFMA, not tensor cores): the activations are FP32 and the reference is FP32.
// Scores are kept in the log2 domain (scaled by log2(e)/sqrt(head_dim)) so the softmax uses exp2f.
#include <cmath>

#include "internal.h"

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

// Tile loads are async copies (cp.async, sm_80+): the bytes go from global to shared memory without passing
// through registers, so every thread keeps all its loads in flight, and V's arrive while the scores are computed.
// (Against plain loads on an H100: decode 1213 vs 794 GB/s, prefill 25.2 vs 24.7 TFLOP/s; native/README.md.)
// A source that is not valid reads nothing and writes zeros (src-size 0).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "qtool's attention kernel uses cp.async: build for compute capability 8.0 or newer (QTOOL_CUDA_ARCH)"
#endif

__device__ __forceinline__ void copy16(float* shared_dst, const float* global_src, bool valid) {
    const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(global_src), "r"(valid ? 16 : 0));
}

// Closes a group of async copies; wait_copies<N> returns once all but the N most recent groups have landed
// (in this thread: a __syncthreads must follow before other threads' copies are read).
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void wait_copies() {
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// Copies this call's keys and values into the caches at positions [start_pos, start_pos + seq_len).
__global__ void store_kv_kernel(float* __restrict__ k_cache, float* __restrict__ v_cache, const float4* __restrict__ k,
                                const float4* __restrict__ v, int batch, int seq_len, int start_pos, int max_seq,
                                int row_width4) {
    const size_t total = static_cast<size_t>(batch) * seq_len * row_width4;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / row_width4;  // b * seq_len + s
        const int c = static_cast<int>(i % row_width4);
        const int b = static_cast<int>(row / seq_len), s = static_cast<int>(row % seq_len);
        const size_t dst = (static_cast<size_t>(b) * max_seq + start_pos + s) * row_width4 + c;
        reinterpret_cast<float4*>(k_cache)[dst] = k[i];
        reinterpret_cast<float4*>(v_cache)[dst] = v[i];
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

}  // namespace
}  // namespace qt

using namespace qt;

namespace {
int check_attention_shape(int batch, int seq_len, int start_pos, int heads, int kv_heads, int head_dim,
                          const char* caller) {
    QT_REQUIRE(batch >= 0 && seq_len >= 0 && start_pos >= 0, "%s: negative size", caller);
    QT_REQUIRE(heads > 0 && kv_heads > 0 && heads % kv_heads == 0,
               "%s: heads (%d) must be a positive multiple of kv_heads (%d)", caller, heads, kv_heads);
    QT_REQUIRE(head_dim > 0 && head_dim % 4 == 0, "%s: head_dim %d must be a positive multiple of 4", caller, head_dim);
    if (head_dim > 256) return fail(QT_ERR_UNSUPPORTED, "%s: head_dim %d > 256 is not supported", caller, head_dim);
    return QT_OK;
}
}  // namespace

extern "C" {

int qt_attention_scratch_bytes(int batch, int seq_len, int start_pos, int heads, int kv_heads, int head_dim,
                               size_t* bytes) {
    QT_REQUIRE(bytes != nullptr, "qt_attention_scratch_bytes: bytes is NULL");
    *bytes = 0;
    QT_TRY(check_attention_shape(batch, seq_len, start_pos, heads, kv_heads, head_dim, "qt_attention_scratch_bytes"));
    if (batch == 0 || seq_len == 0) return QT_OK;
    *bytes = make_plan(batch, seq_len, start_pos, heads, kv_heads, head_dim).scratch_bytes;
    return QT_OK;
}

int qt_attention(void* out, const void* q, const void* k, const void* v, void* k_cache, void* v_cache, int batch,
                 int seq_len, int start_pos, int max_seq, int heads, int kv_heads, int head_dim, void* scratch,
                 size_t scratch_bytes, void* stream) {
    QT_TRY(check_attention_shape(batch, seq_len, start_pos, heads, kv_heads, head_dim, "qt_attention"));
    if (batch == 0 || seq_len == 0) return QT_OK;
    QT_REQUIRE(start_pos + static_cast<long long>(seq_len) <= max_seq,
               "qt_attention: positions up to %d do not fit the cache's max_seq %d", start_pos + seq_len, max_seq);
    QT_REQUIRE(out && q && k && v && k_cache && v_cache, "qt_attention: NULL tensor");
    QT_REQUIRE(aligned16(out) && aligned16(q) && aligned16(k) && aligned16(v) && aligned16(k_cache) &&
                   aligned16(v_cache),
               "qt_attention: tensors must be 16-byte aligned");
    QT_REQUIRE(static_cast<long long>(batch) * kv_heads <= 65535, "qt_attention: batch * kv_heads > 65535");
    cudaStream_t s = as_stream(stream);

    const int row_width4 = kv_heads * head_dim / 4;
    const size_t kv_elements4 = static_cast<size_t>(batch) * seq_len * row_width4;
    store_kv_kernel<<<blocks_for(kv_elements4, 256), 256, 0, s>>>(
        static_cast<float*>(k_cache), static_cast<float*>(v_cache), static_cast<const float4*>(k),
        static_cast<const float4*>(v), batch, seq_len, start_pos, max_seq, row_width4);
    QT_TRY(check_launch("store_kv_kernel"));

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
    p.group = heads / kv_heads;
    p.rows_per_group = seq_len * p.group;
    p.row_blocks = plan.row_blocks;
    p.splits = plan.splits;
    p.scale_log2 = static_cast<float>(1.4426950408889634 / std::sqrt(static_cast<double>(head_dim)));
    if (plan.splits > 1) {
        p.partial_o = static_cast<float*>(scratch);
        p.partial_ml = p.partial_o + static_cast<size_t>(plan.splits) * batch * kv_heads * p.rows_per_group * head_dim;
    }

    const int batch_kv = batch * kv_heads;
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
